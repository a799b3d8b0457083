"""The signed-callback walk-through under gunicorn, with REQUIRE_TRACKUNIT_IDENTITY on.

The Trackunit stand-in serves both the apptoken endpoint and the JWKS of the sandbox
signing key. The service runs as `gunicorn -c gunicorn.conf.py wsgi:app`, reading its
settings from the environment as in production, against the session's OpenBao.
"""

from __future__ import annotations

import uuid

import pytest
import requests

from sandbox.callback_signing import load_or_create
from sandbox.trackunit_standin import StandinState, start_in_thread
from tests.conftest import API_KEY, SCOPES
from tests.service_process import run_service

pytestmark = pytest.mark.e2e

CLIENT_ID = "e2e-client"
CLIENT_SECRET = "e2e-secret-do-not-log"


@pytest.fixture
def signing_key(tmp_path):
    return load_or_create(tmp_path / "sandbox")


@pytest.fixture
def standin(signing_key):
    state = StandinState(jwks=signing_key.jwks())
    state.register(CLIENT_ID, CLIENT_SECRET, set(SCOPES.split()))
    server = start_in_thread(state)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def service(base_env, standin, tmp_path):
    """Run gunicorn with the identity check on; yield its base URL and log path."""
    log_path = tmp_path / "service.log"
    env = {
        **base_env,
        "REQUIRE_TRACKUNIT_IDENTITY": "true",
        "TRACKUNIT_JWKS_URL": standin.jwks_url,
        "TRACKUNIT_TOKEN_URL": standin.token_url,
        "LOG_LEVEL": "DEBUG",
    }
    with run_service(env, workers=1, log_path=log_path) as process:
        yield process.base_url, log_path


def test_signed_callback_installs_under_gunicorn(service, signing_key, standin):
    url, log_path = service
    account = str(uuid.uuid4())
    body = {
        "type": "INSTALLED",
        "irisAppId": "@sandbox/iris-token-broker",
        "accountId": account,
        "clientId": CLIENT_ID,
        "clientSecret": CLIENT_SECRET,
    }
    identity = signing_key.sign_callback(body)

    unsigned = requests.post(f"{url}/appinstall", json=body, timeout=10)
    signed = requests.post(
        f"{url}/appinstall", json=body, headers={"Trackunit-Identity": identity}, timeout=10
    )
    repeated = requests.post(
        f"{url}/appinstall", json=body, headers={"Trackunit-Identity": identity}, timeout=10
    )
    token = requests.get(
        f"{url}/token/{account}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
    )
    logged = log_path.read_text()

    assert unsigned.status_code == 401
    assert unsigned.json()["reason"] == "missing_header"
    assert signed.status_code == 200
    assert signed.json()["status"] == "installed"
    assert repeated.json()["status"] == "unchanged"
    assert token.json()["access_token"].startswith("standin.")
    assert standin.state.jwks_request_count == 1
    assert f"account {account}: missing_header" in logged
    assert "carried claims: accountId, exp, iat, irisAppId, iss, nbf" in logged
    assert identity.split(".")[2] not in logged
    assert CLIENT_SECRET not in logged

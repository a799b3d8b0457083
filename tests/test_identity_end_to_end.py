"""The signed-callback walk-through under gunicorn, with REQUIRE_TRACKUNIT_IDENTITY on.

The Trackunit stand-in serves both the apptoken endpoint and the JWKS of the sandbox
signing key. The service runs as `gunicorn -c gunicorn.conf.py wsgi:app`, reading its
settings from the environment as in production, against the session's OpenBao.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from sandbox.callback_signing import load_or_create
from sandbox.trackunit_standin import StandinState, start_in_thread
from tests.conftest import API_KEY, SCOPES, free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
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
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        **base_env,
        "REQUIRE_TRACKUNIT_IDENTITY": "true",
        "TRACKUNIT_JWKS_URL": standin.jwks_url,
        "TRACKUNIT_TOKEN_URL": standin.token_url,
        "LOG_LEVEL": "DEBUG",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "1",
    }
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [GUNICORN, "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(url, process, log_path)
        yield url, log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _wait_until_healthy(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited:\n{log_path.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            # The socket accepts connections before the worker has booted.
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn did not become healthy:\n{log_path.read_text()[-3000:]}")


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

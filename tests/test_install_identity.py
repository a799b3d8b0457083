"""The install callback with REQUIRE_TRACKUNIT_IDENTITY on, through the Flask test client.

Vault is the session's OpenBao, the JWKS a loopback HTTP server with a real EC key, and
Trackunit's token endpoint requests-mock. Each rejection must leave Vault untouched.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid

import hvac
import pytest
import requests
from werkzeug.serving import make_server

from app import create_app
from broker.config import load_settings
from broker.credentials import CredentialStore
from broker.errors import VaultUnavailable
from broker.vault_auth import StaticTokenAuth
from sandbox import send_callback
from sandbox.callback_signing import load_or_create
from sandbox.trackunit_standin import StandinState, start_in_thread
from tests.conftest import SCOPES, TOKEN_URL, free_port
from tests.identity_support import (
    APP_ID,
    JwksServer,
    claims_for,
    ec_pair,
    rsa_pair,
    unsigned_token,
)

FAILURE_TIMEOUT = 0.5


@pytest.fixture(scope="module")
def signing_key():
    return ec_pair("callback-key")


@pytest.fixture
def jwks(signing_key):
    server = JwksServer([signing_key.public_jwk()])
    yield server
    server.stop()


@pytest.fixture
def identity_env(base_env, jwks) -> dict[str, str]:
    """base_env with the identity check on, against the loopback JWKS."""
    return {
        **base_env,
        "REQUIRE_TRACKUNIT_IDENTITY": "true",
        "TRACKUNIT_JWKS_URL": jwks.url,
    }


@pytest.fixture
def identity_client(make_app, identity_env):
    return make_app(load_settings(identity_env)).test_client()


@pytest.fixture
def account() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def vault_entry(openbao, kv_prefix):
    """Return a function that reads an account's latest KV data and version, or None."""
    vault = openbao.client()

    def read(account_id: str) -> tuple[dict, int] | None:
        try:
            response = vault.secrets.kv.v2.read_secret_version(
                path=f"{kv_prefix}/{account_id}",
                mount_point="secret",
                raise_on_deleted_version=True,
            )
        except hvac.exceptions.InvalidPath:
            return None
        return response["data"]["data"], response["data"]["metadata"]["version"]

    return read


@pytest.fixture
def token_endpoint(trackunit):
    """Trackunit's token endpoint, returning a fresh token for every request."""
    counter = iter(range(1, 1000))
    return trackunit.register_uri(
        "POST",
        TOKEN_URL,
        json=lambda request, context: {
            "token_type": "Bearer",
            "expires_in": 3600,
            "access_token": f"access-{next(counter)}",
            "scope": SCOPES,
        },
    )


def callback_body(account_id: str, client_id: str = "client-1", secret: str = "secret-1") -> dict:
    return {
        "type": "INSTALLED",
        "irisAppId": APP_ID,
        "accountId": account_id,
        "clientId": client_id,
        "clientSecret": secret,
    }


def post_callback(client, body: dict, token: str | None):
    headers = {"Trackunit-Identity": token} if token is not None else {}
    return client.post("/appinstall", json=body, headers=headers)


# Accepted callbacks ------------------------------------------------------------------------


def test_signed_callback_installs(identity_client, signing_key, account, vault_entry):
    claims = claims_for(account)

    response = post_callback(identity_client, callback_body(account), signing_key.sign(claims))

    assert response.status_code == 200
    assert response.get_json()["status"] == "installed"
    data, version = vault_entry(account)
    assert version == 1
    assert data["clientId"] == "client-1"
    assert data["deliveryIssuedAt"] == claims["iat"]


def test_identity_off_accepts_unsigned_callback(client, account, vault_entry):
    response = post_callback(client, callback_body(account), None)

    assert response.status_code == 200
    assert vault_entry(account)[1] == 1


def test_identity_off_warns_at_start(make_app, settings, caplog):
    caplog.set_level(logging.WARNING, logger="broker")

    make_app(settings)

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("REQUIRE_TRACKUNIT_IDENTITY is off" in message for message in warnings)


def test_identity_on_does_not_warn_at_start(make_app, identity_env, caplog):
    caplog.set_level(logging.WARNING, logger="broker")

    make_app(load_settings(identity_env))

    assert not [r for r in caplog.records if "REQUIRE_TRACKUNIT_IDENTITY" in r.getMessage()]


# Rejected callbacks ------------------------------------------------------------------------

_NOW = int(time.time())


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        pytest.param(lambda key, account: None, "missing_header", id="missing header"),
        pytest.param(lambda key, account: "garbage", "malformed_token", id="garbage"),
        pytest.param(
            lambda key, account: key.sign(claims_for(account), headers={}),
            "unknown_key",
            id="no kid",
        ),
        pytest.param(
            lambda key, account: key.sign(claims_for(account), headers={"kid": "other"}),
            "unknown_key",
            id="unknown kid",
        ),
        pytest.param(
            lambda key, account: rsa_pair(key.kid).sign(claims_for(account)),
            "algorithm_not_allowed",
            id="RSA signature under the EC kid",
        ),
        pytest.param(
            lambda key, account: ec_pair(key.kid).sign(claims_for(account)),
            "bad_signature",
            id="wrong key",
        ),
        pytest.param(
            lambda key, account: unsigned_token(claims_for(account), key.kid),
            "algorithm_not_allowed",
            id="alg none",
        ),
        pytest.param(
            lambda key, account: key.sign(claims_for(account, issued_at=_NOW - 7200)),
            "expired",
            id="expired",
        ),
        pytest.param(
            lambda key, account: key.sign(claims_for(account, nbf=_NOW + 3600)),
            "not_yet_valid",
            id="nbf in the future",
        ),
        pytest.param(
            lambda key, account: key.sign(claims_for(str(uuid.uuid4()))),
            "claim_mismatch",
            id="token for another account",
        ),
    ],
)
def test_rejected_callback_writes_nothing(
    identity_client, signing_key, account, vault_entry, make_token, reason
):
    token = make_token(signing_key, account)

    response = post_callback(identity_client, callback_body(account), token)

    assert response.status_code == 401
    assert response.get_json()["error"] == "identity_rejected"
    assert response.get_json()["reason"] == reason
    assert vault_entry(account) is None


def test_rejected_callback_keeps_stored_credentials(
    identity_client, signing_key, account, vault_entry
):
    post_callback(identity_client, callback_body(account), signing_key.sign(claims_for(account)))
    forged = ec_pair(signing_key.kid).sign(claims_for(account))

    response = post_callback(identity_client, callback_body(account, "evil", "evil"), forged)

    assert response.status_code == 401
    data, version = vault_entry(account)
    assert version == 1
    assert data["clientId"] == "client-1"


def test_rejection_logs_one_line(identity_client, account, caplog):
    caplog.set_level(logging.INFO, logger="broker")

    post_callback(identity_client, callback_body(account), "garbage")

    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1
    assert account in lines[0]
    assert "malformed_token" in lines[0]


def test_unsigned_uninstall_event_rejected(identity_client, account):
    body = {"type": "UNINSTALLED", "irisAppId": APP_ID, "accountId": account}

    response = post_callback(identity_client, body, None)

    assert response.status_code == 401


def test_unreachable_jwks_answers_503_quickly(
    make_app, identity_env, signing_key, account, vault_entry
):
    env = {
        **identity_env,
        "TRACKUNIT_JWKS_URL": f"http://127.0.0.1:{free_port()}/jwks",
        "TRACKUNIT_JWKS_TIMEOUT": str(FAILURE_TIMEOUT),
    }
    client = make_app(load_settings(env)).test_client()
    started = time.monotonic()

    response = post_callback(client, callback_body(account), signing_key.sign(claims_for(account)))

    assert time.monotonic() - started < 2 * FAILURE_TIMEOUT
    assert response.status_code == 503
    assert response.get_json()["error"] == "identity_keys_unavailable"
    assert response.headers["Retry-After"] == "30"
    assert vault_entry(account) is None


# Replays and ordering ----------------------------------------------------------------------


def test_repeated_delivery_has_one_effect(
    identity_client, signing_key, account, vault_entry, auth_header, token_endpoint
):
    token = signing_key.sign(claims_for(account))
    post_callback(identity_client, callback_body(account), token)
    identity_client.get(f"/token/{account}", headers=auth_header)

    response = post_callback(identity_client, callback_body(account), token)
    identity_client.get(f"/token/{account}", headers=auth_header)

    assert response.status_code == 200
    assert response.get_json()["status"] == "unchanged"
    assert vault_entry(account)[1] == 1
    assert token_endpoint.call_count == 1


def test_older_delivery_after_newer_ignored(identity_client, signing_key, account, vault_entry):
    now = int(time.time())
    newer = signing_key.sign(claims_for(account, issued_at=now))
    older = signing_key.sign(claims_for(account, issued_at=now - 60))
    post_callback(identity_client, callback_body(account, "client-new", "secret-new"), newer)
    body = callback_body(account, "client-old", "secret-old")

    response = post_callback(identity_client, body, older)

    assert response.status_code == 200
    assert response.get_json()["status"] == "ignored_stale"
    data, version = vault_entry(account)
    assert version == 1
    assert data["clientId"] == "client-new"


def test_newer_delivery_replaces_and_evicts(
    identity_client, signing_key, account, vault_entry, auth_header, token_endpoint
):
    now = int(time.time())
    older = signing_key.sign(claims_for(account, issued_at=now - 60))
    newer = signing_key.sign(claims_for(account, issued_at=now))
    post_callback(identity_client, callback_body(account, "client-old", "secret-old"), older)
    identity_client.get(f"/token/{account}", headers=auth_header)
    body = callback_body(account, "client-new", "secret-new")

    response = post_callback(identity_client, body, newer)
    identity_client.get(f"/token/{account}", headers=auth_header)

    assert response.get_json()["status"] == "installed"
    data, version = vault_entry(account)
    assert version == 2
    assert data["clientId"] == "client-new"
    assert token_endpoint.call_count == 2


def test_same_iat_with_new_credentials_applied(identity_client, signing_key, account, vault_entry):
    token = signing_key.sign(claims_for(account))
    post_callback(identity_client, callback_body(account, "client-1", "secret-1"), token)

    response = post_callback(identity_client, callback_body(account, "client-1", "secret-2"), token)

    assert response.get_json()["status"] == "installed"
    assert vault_entry(account)[0]["clientSecret"] == "secret-2"


def test_unverified_entry_is_overwritten(
    make_app, settings, identity_client, signing_key, account, vault_entry
):
    post_callback(make_app(settings).test_client(), callback_body(account, "client-0"), None)
    token = signing_key.sign(claims_for(account))

    response = post_callback(identity_client, callback_body(account), token)

    assert response.get_json()["status"] == "installed"
    assert vault_entry(account)[1] == 2


@pytest.fixture
def store(openbao, kv_prefix) -> CredentialStore:
    client = hvac.Client(url=openbao.addr, token="", timeout=5)
    return CredentialStore(
        client, StaticTokenAuth(openbao.root_token), mount="secret", prefix=kv_prefix
    )


def test_concurrent_newer_write_wins_check_and_set(store, account, vault_entry):
    """A newer delivery lands between the read and the write of an older one."""
    original_read = store._read_latest
    raced = threading.Event()

    def read_then_lose_race(account_id):
        result = original_read(account_id)
        if not raced.is_set():
            raced.set()
            store.save_delivery(
                account_id,
                client_id="client-new",
                client_secret="s",
                iris_app_id=None,
                issued_at=200,
            )
        return result

    store._read_latest = read_then_lose_race
    outcome = store.save_delivery(
        account, client_id="client-old", client_secret="s", iris_app_id=None, issued_at=100
    )

    assert raced.is_set()
    assert outcome.status == "ignored_stale"
    data, version = vault_entry(account)
    assert data["clientId"] == "client-new"
    assert version == 1


def test_repeated_check_and_set_conflict_raises(store, account, vault_entry):
    """Another writer changes the entry after each of our reads, so both writes conflict."""
    original_read = store._read_latest

    def read_then_lose_race(account_id):
        result = original_read(account_id)
        store.save(account_id, client_id="client-other", client_secret="s", iris_app_id=None)
        return result

    store._read_latest = read_then_lose_race

    with pytest.raises(VaultUnavailable, match="Retry the callback"):
        store.save_delivery(
            account, client_id="client-mine", client_secret="s", iris_app_id=None, issued_at=300
        )
    assert vault_entry(account)[0]["clientId"] == "client-other"


def test_delivery_after_destroyed_version_installs(store, openbao, kv_prefix, account, vault_entry):
    store.save_delivery(account, client_id="c", client_secret="s", iris_app_id=None, issued_at=100)
    openbao.client().secrets.kv.v2.destroy_secret_versions(
        path=f"{kv_prefix}/{account}", versions=[1], mount_point="secret"
    )

    outcome = store.save_delivery(
        account, client_id="c2", client_secret="s", iris_app_id=None, issued_at=50
    )

    assert outcome.status == "installed"
    assert vault_entry(account)[1] == 2


# Sandbox walk-through ----------------------------------------------------------------------


@pytest.fixture
def sandbox_key_dir(tmp_path):
    return tmp_path / "sandbox"


@pytest.fixture
def standin(sandbox_key_dir):
    state = StandinState(jwks=load_or_create(sandbox_key_dir).jwks())
    state.register("sandbox-client", "sandbox-secret", set(SCOPES.split()))
    server = start_in_thread(state)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def service_url(base_env, standin):
    """The service on a loopback HTTP server, verifying callbacks with the stand-in's JWKS."""
    env = {
        **base_env,
        "REQUIRE_TRACKUNIT_IDENTITY": "true",
        "TRACKUNIT_JWKS_URL": standin.jwks_url,
        "TRACKUNIT_TOKEN_URL": standin.token_url,
    }
    session = requests.Session()
    app = create_app(load_settings(env), http_session=session)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)
    session.close()


def test_sandbox_signed_callback_then_token(
    service_url, sandbox_key_dir, account, auth_header, capsys
):
    code = send_callback.main(
        [
            "--service", service_url,
            "--account", account,
            "--client-id", "sandbox-client",
            "--client-secret", "sandbox-secret",
            "--signing-key-dir", str(sandbox_key_dir),
        ]
    )
    reply = requests.get(f"{service_url}/token/{account}", headers=auth_header, timeout=10)

    assert code == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["status"] == "installed"
    assert reply.status_code == 200
    assert reply.json()["access_token"].startswith("standin.")


def test_sandbox_unsigned_callback_rejected(service_url, sandbox_key_dir, account, capsys):
    code = send_callback.main(
        [
            "--service", service_url,
            "--account", account,
            "--client-id", "sandbox-client",
            "--client-secret", "sandbox-secret",
            "--unsigned",
        ]
    )

    assert code == 1
    assert capsys.readouterr().out.startswith("HTTP 401")


def test_sandbox_key_file_is_private(sandbox_key_dir):
    load_or_create(sandbox_key_dir)

    mode = (sandbox_key_dir / "callback-signing-key.pem").stat().st_mode & 0o777

    assert mode == 0o600


def uninstall_body(account_id: str) -> dict:
    return {"type": "UNINSTALLED", "irisAppId": APP_ID, "accountId": account_id}


def test_late_uninstall_keeps_newer_install(identity_client, signing_key, account, vault_entry):
    now = int(time.time())
    uninstall = signing_key.sign(claims_for(account, issued_at=now - 60))
    install = signing_key.sign(claims_for(account, issued_at=now))
    post_callback(identity_client, callback_body(account, "client-new", "secret-new"), install)

    response = post_callback(identity_client, uninstall_body(account), uninstall)

    assert response.get_json()["status"] == "ignored_stale"
    assert vault_entry(account)[0]["clientId"] == "client-new"


def test_newer_uninstall_deletes_install(identity_client, signing_key, account, vault_entry):
    now = int(time.time())
    install = signing_key.sign(claims_for(account, issued_at=now - 60))
    uninstall = signing_key.sign(claims_for(account, issued_at=now))
    post_callback(identity_client, callback_body(account), install)

    response = post_callback(identity_client, uninstall_body(account), uninstall)

    assert response.get_json()["status"] == "uninstalled"

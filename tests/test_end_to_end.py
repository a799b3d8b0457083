"""The README walk-through as a test: a raft-backed OpenBao, the stand-in and gunicorn."""

import subprocess

import pytest
import requests

from sandbox.callback_signing import load_or_create
from sandbox.trackunit_standin import StandinState, start_in_thread
from tests.conftest import API_KEY, SCOPES, free_port
from tests.service_process import run_service
from tests.test_appinstall import ACCOUNT, DOCUMENTED_MESSAGE
from vault.local_server import prepare, start_server

pytestmark = pytest.mark.e2e


@pytest.fixture
def signing_key(tmp_path):
    """The sandbox key that signs callbacks, as `sandbox/send_callback.py` uses it."""
    return load_or_create(tmp_path / "sandbox")


@pytest.fixture
def standin(signing_key):
    """The stand-in token endpoint and JWKS, knowing the documented client."""
    state = StandinState(jwks=signing_key.jwks())
    state.register(DOCUMENTED_MESSAGE["clientId"], DOCUMENTED_MESSAGE["clientSecret"], set(SCOPES.split()))
    server = start_in_thread(state)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def local_vault(tmp_path):
    """Start the raft-backed local OpenBao as `scripts/run-local` does; yield a restart function."""
    data_dir = tmp_path / "openbao"
    port = free_port()
    addr = f"http://127.0.0.1:{port}"
    state = {"process": None, "token": None}

    def start():
        state["process"] = start_server(data_dir, port)
        state["token"] = prepare(addr, data_dir)

    def stop():
        process = state["process"]
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def restart():
        stop()
        start()

    try:
        start()
        yield addr, state, restart
    finally:
        stop()


def service_env(addr, token, standin):
    return {
        "VAULT_ADDR": addr,
        "VAULT_TOKEN": token,
        "INTERNAL_API_KEYS": API_KEY,
        "TRACKUNIT_SCOPES": SCOPES,
        "TRACKUNIT_TOKEN_URL": standin.token_url,
        "TRACKUNIT_JWKS_URL": standin.jwks_url,
    }


def test_walkthrough_survives_restart(local_vault, standin, signing_key, tmp_path):
    addr, vault_state, restart_vault = local_vault
    headers = {"Authorization": f"Bearer {API_KEY}"}
    env = service_env(addr, vault_state["token"], standin)
    identity = {"Trackunit-Identity": signing_key.sign_callback(DOCUMENTED_MESSAGE)}

    with run_service(env, workers=1, log_path=tmp_path / "first.log") as service:
        url = service.base_url
        installed = requests.post(
            f"{url}/appinstall", json=DOCUMENTED_MESSAGE, headers=identity, timeout=10
        )
        first = requests.get(f"{url}/token/{ACCOUNT}", headers=headers, timeout=10)
        second = requests.get(f"{url}/token/{ACCOUNT}", headers=headers, timeout=10)

    assert installed.status_code == 200
    assert first.json()["access_token"].startswith("standin.")
    assert second.json()["access_token"] == first.json()["access_token"]
    assert standin.state.request_count == 1

    restart_vault()
    env = service_env(addr, vault_state["token"], standin)
    with run_service(env, workers=1, log_path=tmp_path / "second.log") as service:
        url = service.base_url
        after_restart = requests.get(f"{url}/token/{ACCOUNT}", headers=headers, timeout=10)

    assert after_restart.status_code == 200
    assert standin.state.request_count == 2


def test_service_log_has_no_secret(openbao, base_env, standin, tmp_path):
    log_path = tmp_path / "service.log"
    env = {
        **base_env,
        "TRACKUNIT_TOKEN_URL": standin.token_url,
        "TRACKUNIT_JWKS_URL": standin.jwks_url,
        "LOG_LEVEL": "DEBUG",
    }

    with run_service(env, workers=1, log_path=log_path) as service:
        url = service.base_url
        requests.post(f"{url}/appinstall", json=DOCUMENTED_MESSAGE, timeout=10)
        token = requests.get(
            f"{url}/token/{ACCOUNT}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
        ).json()["access_token"]
    logged = log_path.read_text()

    assert "Stored credentials" in logged
    assert DOCUMENTED_MESSAGE["clientSecret"] not in logged
    assert token not in logged
    assert openbao.root_token not in logged


def test_bad_setting_stops_start_up_with_its_name(tmp_path):
    env = {"VAULT_ADDR": "http://127.0.0.1:1", "VAULT_TOKEN": "x", "TRACKUNIT_SCOPES": SCOPES}

    with pytest.raises(RuntimeError) as raised:
        with run_service(env, workers=1, log_path=tmp_path / "bad.log"):
            pass

    assert "INTERNAL_API_KEYS is missing" in str(raised.value)

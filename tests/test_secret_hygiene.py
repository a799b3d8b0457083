"""No secret reaches any log line or error body, with every logger at DEBUG and real HTTP."""

import logging

import pytest

from sandbox.trackunit_standin import StandinState, start_in_thread
from tests.conftest import API_KEY, with_settings
from tests.test_appinstall import ACCOUNT, DOCUMENTED_MESSAGE

SECRET = DOCUMENTED_MESSAGE["clientSecret"]


@pytest.fixture
def standin():
    """The stand-in token endpoint on loopback, knowing the documented client."""
    state = StandinState()
    state.register(DOCUMENTED_MESSAGE["clientId"], SECRET, {"asset.view", "account.asset.manage"})
    server = start_in_thread(state)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def everything_at_debug():
    """Set the root logger and the HTTP and Vault libraries' loggers to DEBUG, then restore them."""
    names = ["", "urllib3", "requests", "hvac", "werkzeug", "broker", "broker.app"]
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def test_install_and_fetch_log_no_secret(
    everything_at_debug, caplog, capfd, standin, settings, openbao, auth_header
):
    from app import create_app

    app = create_app(with_settings(settings, trackunit_token_url=standin.token_url))
    client = app.test_client()
    caplog.set_level(logging.DEBUG)

    client.post("/appinstall", json=DOCUMENTED_MESSAGE)
    token = client.get(f"/token/{ACCOUNT}", headers=auth_header).json["access_token"]
    client.get(f"/token/{ACCOUNT}?refresh=true", headers=auth_header)
    captured = caplog.text + "".join(capfd.readouterr())

    assert "Fetched a token" in captured
    assert SECRET not in captured
    assert token not in captured
    assert openbao.root_token not in captured
    assert API_KEY not in captured


def test_rejected_secret_stays_out_of_logs_and_body(
    everything_at_debug, caplog, standin, settings, auth_header
):
    from app import create_app

    app = create_app(with_settings(settings, trackunit_token_url=standin.token_url))
    client = app.test_client()
    wrong_secret = "this-secret-is-wrong-and-must-not-leak"
    client.post("/appinstall", json={**DOCUMENTED_MESSAGE, "clientSecret": wrong_secret})
    caplog.set_level(logging.DEBUG)

    response = client.get(f"/token/{ACCOUNT}", headers=auth_header)

    assert response.json["oauth_error"] == "invalid_client"
    assert wrong_secret not in response.get_data(as_text=True)
    assert wrong_secret not in caplog.text


def test_denied_vault_token_stays_out_of_logs(everything_at_debug, caplog, make_app, settings):
    bad_token = "hvs.this-token-does-not-exist-0123"
    client = make_app(with_settings(settings, vault_token=bad_token)).test_client()
    caplog.set_level(logging.DEBUG)

    response = client.post("/appinstall", json=DOCUMENTED_MESSAGE)

    assert response.status_code == 503
    assert bad_token not in caplog.text
    assert bad_token not in response.get_data(as_text=True)

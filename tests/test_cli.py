"""Operator commands (`flask --app wsgi accounts ...`) against the session's OpenBao.

`verify` talks to the loopback stand-in of Trackunit's token endpoint.
"""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import with_settings
from sandbox.trackunit_standin import StandinState, start_in_thread

CLIENT_SECRET = "cli-secret-value-0123456789"


@pytest.fixture(scope="module")
def standin():
    """A stand-in token endpoint on loopback. Tests register the clients they need."""
    state = StandinState(expires_in=1800)
    server = start_in_thread(state)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def cli_app(make_app, settings, standin):
    return make_app(with_settings(settings, trackunit_token_url=standin.token_url))


@pytest.fixture
def run(cli_app):
    runner = cli_app.test_cli_runner()

    def invoke(*args: str):
        return runner.invoke(args=["accounts", *args])

    return invoke


def _install(app, account_id: str, client_id: str = "client-abcdef-1234") -> None:
    response = app.test_client().post(
        "/appinstall",
        json={
            "type": "INSTALLED",
            "accountId": account_id,
            "clientId": client_id,
            "clientSecret": CLIENT_SECRET,
            "irisAppId": "app-7",
        },
    )
    assert response.status_code == 200


def _uninstall(app, account_id: str) -> None:
    app.test_client().post("/appinstall", json={"type": "UNINSTALLED", "accountId": account_id})


def test_list_shows_installed_accounts(cli_app, run):
    installed, removed = str(uuid.uuid4()), str(uuid.uuid4())
    _install(cli_app, installed)
    _install(cli_app, removed)
    _uninstall(cli_app, removed)

    result = run("list")

    assert result.exit_code == 0
    assert f"{installed}\tinstalled\tv1\t" in result.stdout
    assert removed not in result.stdout


def test_list_all_shows_uninstalled(cli_app, run):
    removed = str(uuid.uuid4())
    _install(cli_app, removed)
    _uninstall(cli_app, removed)

    result = run("list", "--all")

    assert f"{removed}\tuninstalled\tv1\t" in result.stdout


def test_list_reports_progress_on_stderr(cli_app, run):
    for _ in range(5):
        _install(cli_app, str(uuid.uuid4()))

    result = run("list", "--progress-every", "2")

    assert "Checked 2 of 5 accounts" in result.stderr
    assert "Checked 4 of 5 accounts" in result.stderr
    assert "5 account(s) listed of 5 in Vault" in result.stderr
    assert "Checked" not in result.stdout


def test_list_of_empty_prefix(run):
    result = run("list")

    assert result.exit_code == 0
    assert result.stdout == ""


def test_show_prints_history_without_secret(cli_app, run):
    account_id = str(uuid.uuid4())
    _install(cli_app, account_id, "client-first-1111")
    _install(cli_app, account_id, "client-second-2222")
    _uninstall(cli_app, account_id)

    result = run("show", account_id)

    assert result.exit_code == 0
    assert "state:           uninstalled" in result.stdout
    assert "current version: 2" in result.stdout
    assert "clientId *************1111" in result.stdout
    assert "irisAppId app-7" in result.stdout
    assert "v2, created" in result.stdout
    assert ", deleted " in result.stdout
    assert CLIENT_SECRET not in result.output
    assert "client-first" not in result.output


def test_show_unknown_account_fails(run):
    result = run("show", str(uuid.uuid4()))

    assert result.exit_code == 1
    assert "has no entry in Vault" in result.stderr


def test_show_rejects_invalid_account_id(run):
    result = run("show", "../etc")

    assert result.exit_code == 2
    assert "is not an account id" in result.stderr


def test_verify_prints_scope_and_expiry(cli_app, run, standin, settings):
    account_id = str(uuid.uuid4())
    _install(cli_app, account_id)
    standin.state.register("client-abcdef-1234", CLIENT_SECRET, set(settings.trackunit_scopes))

    result = run("verify", account_id)

    assert result.exit_code == 0, result.output
    assert "scope 'account.asset.manage asset.view', expires in 1800 s" in result.stdout
    assert "standin." not in result.output


def test_verify_reports_rejected_credentials(cli_app, run):
    account_id = str(uuid.uuid4())
    _install(cli_app, account_id, "client-never-registered")

    result = run("verify", account_id)

    assert result.exit_code == 1
    assert "invalid_client" in result.stderr
    assert CLIENT_SECRET not in result.output


def test_verify_uninstalled_account_fails(cli_app, run):
    account_id = str(uuid.uuid4())
    _install(cli_app, account_id)
    _uninstall(cli_app, account_id)

    result = run("verify", account_id)

    assert result.exit_code == 1
    assert "is not installed" in result.stderr


def test_uninstall_then_undelete_restores(cli_app, run, auth_header):
    account_id = str(uuid.uuid4())
    _install(cli_app, account_id)

    removed = run("uninstall", account_id)
    listed_after_removal = run("list").stdout
    restored = run("undelete", account_id)

    assert removed.exit_code == 0
    assert "Deleted version 1" in removed.stdout
    assert account_id not in listed_after_removal
    assert restored.exit_code == 0
    assert "Restored version(s) 1" in restored.stdout
    assert account_id in run("list").stdout


def test_uninstall_twice_fails_second_time(cli_app, run):
    account_id = str(uuid.uuid4())
    _install(cli_app, account_id)
    run("uninstall", account_id)

    result = run("uninstall", account_id)

    assert result.exit_code == 1
    assert "no live credentials" in result.stderr


def test_undelete_older_version(cli_app, run, openbao, settings):
    account_id = str(uuid.uuid4())
    _install(cli_app, account_id)
    _install(cli_app, account_id)
    openbao.client().secrets.kv.v2.delete_secret_versions(
        path=f"{settings.vault_kv_prefix}/{account_id}", versions=[1], mount_point="secret"
    )

    result = run("undelete", account_id, "--version", "1")

    assert result.exit_code == 0
    assert "Restored version(s) 1" in result.stdout


def test_undelete_live_account_fails(cli_app, run):
    account_id = str(uuid.uuid4())
    _install(cli_app, account_id)

    result = run("undelete", account_id)

    assert result.exit_code == 1
    assert "no deleted version to restore" in result.stderr


def test_vault_down_is_one_line_error(make_app, settings, standin):
    from tests.conftest import free_port

    down = with_settings(settings, vault_addr=f"http://127.0.0.1:{free_port()}", vault_timeout=1.0)
    runner = make_app(down).test_cli_runner()

    result = runner.invoke(args=["accounts", "list"])

    assert result.exit_code == 1
    assert "Vault list failed: connection failed" in result.stderr

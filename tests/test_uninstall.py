"""Uninstall callbacks against the session's OpenBao, with requests-mock as Trackunit."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import TOKEN_URL, with_settings


def _install(client, account_id: str, secret: str = "secret-1") -> None:
    response = client.post(
        "/appinstall",
        json={
            "type": "INSTALLED",
            "accountId": account_id,
            "clientId": f"client-{account_id[:8]}",
            "clientSecret": secret,
        },
    )
    assert response.status_code == 200, response.get_json()


def _uninstall(client, account_id: str):
    return client.post("/appinstall", json={"type": "UNINSTALLED", "accountId": account_id})


@pytest.fixture
def account_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def token_endpoint(trackunit):
    """Issue a new numbered token for every token request, and record the requests."""
    calls = []

    def issue(request, context):
        calls.append(request)
        return {"access_token": f"token-{len(calls)}", "token_type": "Bearer", "expires_in": 3600}

    trackunit.register_uri("POST", TOKEN_URL, json=issue)
    return calls


def test_uninstall_answers_uninstalled(client, account_id):
    _install(client, account_id)

    response = _uninstall(client, account_id)

    assert response.status_code == 200
    assert response.get_json() == {"status": "uninstalled", "accountId": account_id, "version": 1}


def test_token_after_uninstall_is_not_installed(client, auth_header, account_id, token_endpoint):
    _install(client, account_id)
    assert client.get(f"/token/{account_id}", headers=auth_header).status_code == 200

    _uninstall(client, account_id)
    response = client.get(f"/token/{account_id}", headers=auth_header)

    assert response.status_code == 404
    assert response.get_json()["error"] == "not_installed"
    assert len(token_endpoint) == 1


def test_uninstall_soft_deletes_latest_version(client, openbao, settings, account_id):
    _install(client, account_id, "secret-1")
    _install(client, account_id, "secret-2")

    _uninstall(client, account_id)

    metadata = openbao.client().secrets.kv.v2.read_secret_metadata(
        path=f"{settings.vault_kv_prefix}/{account_id}", mount_point="secret"
    )["data"]
    assert metadata["current_version"] == 2
    assert metadata["versions"]["2"]["deletion_time"] != ""
    assert metadata["versions"]["2"]["destroyed"] is False
    assert metadata["versions"]["1"]["deletion_time"] == ""


def test_uninstall_unknown_account_is_idempotent(client, account_id):
    response = _uninstall(client, account_id)

    assert response.status_code == 200
    assert response.get_json() == {"status": "not_installed", "accountId": account_id}


def test_uninstall_twice_deletes_once(client, openbao, settings, account_id):
    _install(client, account_id, "secret-1")
    _install(client, account_id, "secret-2")

    _uninstall(client, account_id)
    second = _uninstall(client, account_id)

    assert second.get_json()["status"] == "not_installed"
    metadata = openbao.client().secrets.kv.v2.read_secret_metadata(
        path=f"{settings.vault_kv_prefix}/{account_id}", mount_point="secret"
    )["data"]
    assert metadata["versions"]["1"]["deletion_time"] == ""


def test_reinstall_after_uninstall_serves_token(client, auth_header, account_id, token_endpoint):
    _install(client, account_id, "secret-1")
    _uninstall(client, account_id)

    _install(client, account_id, "secret-2")
    response = client.get(f"/token/{account_id}", headers=auth_header)

    assert response.status_code == 200
    assert "client_secret=secret-2" in token_endpoint[-1].text


def test_destroyed_latest_version_is_not_installed(
    client, openbao, settings, auth_header, account_id, token_endpoint
):
    _install(client, account_id)
    openbao.client().secrets.kv.v2.destroy_secret_versions(
        path=f"{settings.vault_kv_prefix}/{account_id}", versions=[1], mount_point="secret"
    )

    response = client.get(f"/token/{account_id}", headers=auth_header)

    assert response.status_code == 404
    assert response.get_json()["error"] == "not_installed"


def test_deleted_latest_version_is_not_installed(
    client, openbao, settings, auth_header, account_id, token_endpoint
):
    _install(client, account_id)
    openbao.client().secrets.kv.v2.delete_latest_version_of_secret(
        path=f"{settings.vault_kv_prefix}/{account_id}", mount_point="secret"
    )

    response = client.get(f"/token/{account_id}", headers=auth_header)

    assert response.status_code == 404


def test_uninstall_needs_no_credentials(client, account_id):
    _install(client, account_id)

    response = client.post(
        "/appinstall", json={"type": "UNINSTALLED", "accountId": account_id, "clientId": 7}
    )

    assert response.status_code == 200


def test_uninstall_with_invalid_account_id_is_rejected(client):
    response = client.post("/appinstall", json={"type": "UNINSTALLED", "accountId": "../x"})

    assert response.status_code == 400
    assert response.get_json()["field"] == "accountId"


def test_unknown_type_is_acknowledged_and_changes_nothing(
    client, openbao, settings, auth_header, account_id, token_endpoint
):
    _install(client, account_id)

    response = client.post(
        "/appinstall", json={"type": "SUSPENDED", "accountId": account_id}
    )

    assert response.status_code == 202
    assert response.get_json() == {"status": "ignored", "type": "SUSPENDED", "accountId": account_id}
    metadata = openbao.client().secrets.kv.v2.read_secret_metadata(
        path=f"{settings.vault_kv_prefix}/{account_id}", mount_point="secret"
    )["data"]
    assert metadata["current_version"] == 1
    assert metadata["versions"]["1"]["deletion_time"] == ""
    assert client.get(f"/token/{account_id}", headers=auth_header).status_code == 200


def test_unknown_type_is_logged(client, account_id, caplog):
    caplog.set_level("INFO", logger="broker.app")

    client.post("/appinstall", json={"type": "SUSPENDED", "accountId": account_id})

    assert any("SUSPENDED" in record.getMessage() for record in caplog.records)


def test_uninstall_for_other_app_is_forbidden(make_app, settings, account_id):
    client = make_app(with_settings(settings, iris_app_id="app-1")).test_client()

    response = client.post(
        "/appinstall", json={"type": "UNINSTALLED", "accountId": account_id, "irisAppId": "app-2"}
    )

    assert response.status_code == 403

"""POST /appinstall: the documented message lands in the real OpenBao, bad input writes nothing."""

import io
import json

import hvac.exceptions
import pytest

from tests.conftest import TOKEN_URL, with_settings

ACCOUNT = "6b5cb246-7945-4bb6-bec5-2a1413ffd1b3"
DOCUMENTED_MESSAGE = {
    "type": "INSTALLED",
    "irisAppId": "@organization/appname",
    "accountId": ACCOUNT,
    "clientId": "0oa10o3h43eulvWtz358",
    "clientSecret": "wZtQppu1huik4cYBAhYXnZS29pSudTBne2SE6WEM5C5",
}


def read_account(openbao, settings, account_id=ACCOUNT):
    """Return the latest KV v2 version of the account, read with the root token."""
    return openbao.client().secrets.kv.v2.read_secret_version(
        path=f"{settings.vault_kv_prefix}/{account_id}",
        mount_point="secret",
        raise_on_deleted_version=True,
    )["data"]


def account_exists(openbao, settings, account_id=ACCOUNT):
    try:
        read_account(openbao, settings, account_id)
    except hvac.exceptions.InvalidPath:
        return False
    return True


def token_reply(access_token="tok-1", expires_in=3600):
    return {
        "token_type": "Bearer",
        "expires_in": expires_in,
        "access_token": access_token,
        "scope": "account.asset.manage asset.view",
    }


def test_documented_message_stored(client, openbao, settings):
    response = client.post("/appinstall", json=DOCUMENTED_MESSAGE)

    stored = read_account(openbao, settings)
    assert response.status_code == 200
    assert stored["data"]["clientId"] == DOCUMENTED_MESSAGE["clientId"]
    assert stored["data"]["clientSecret"] == DOCUMENTED_MESSAGE["clientSecret"]
    assert stored["data"]["irisAppId"] == "@organization/appname"
    assert stored["data"]["installedAt"].endswith("Z")


def test_reply_reports_version_without_secret(client):
    response = client.post("/appinstall", json=DOCUMENTED_MESSAGE)

    assert response.json == {"status": "installed", "accountId": ACCOUNT, "version": 1}
    assert DOCUMENTED_MESSAGE["clientSecret"] not in response.get_data(as_text=True)


def test_uppercase_account_id_stored_canonical(client, openbao, settings):
    message = {**DOCUMENTED_MESSAGE, "accountId": ACCOUNT.upper()}

    response = client.post("/appinstall", json=message)

    assert response.status_code == 200
    assert account_exists(openbao, settings, ACCOUNT)


def test_reinstall_replaces_credentials_and_keeps_old_version(client, openbao, settings):
    client.post("/appinstall", json=DOCUMENTED_MESSAGE)

    client.post("/appinstall", json={**DOCUMENTED_MESSAGE, "clientSecret": "second-secret"})

    stored = read_account(openbao, settings)
    assert stored["data"]["clientSecret"] == "second-secret"
    assert stored["metadata"]["version"] == 2


def test_reinstall_drops_cached_token(client, trackunit, auth_header):
    trackunit.register_uri(
        "POST", TOKEN_URL, [{"json": token_reply("old-token")}, {"json": token_reply("new-token")}]
    )
    client.post("/appinstall", json=DOCUMENTED_MESSAGE)
    client.get(f"/token/{ACCOUNT}", headers=auth_header)

    client.post("/appinstall", json={**DOCUMENTED_MESSAGE, "clientSecret": "second-secret"})
    response = client.get(f"/token/{ACCOUNT}", headers=auth_header)

    assert response.json["access_token"] == "new-token"
    assert "client_secret=second-secret" in trackunit.last_request.text


def test_other_app_rejected_when_app_id_set(make_app, settings, openbao):
    client = make_app(with_settings(settings, iris_app_id="@organization/appname")).test_client()

    response = client.post("/appinstall", json={**DOCUMENTED_MESSAGE, "irisAppId": "@other/app"})

    assert response.status_code == 403
    assert response.json["field"] == "irisAppId"
    assert not account_exists(openbao, settings)


def test_matching_app_accepted_when_app_id_set(make_app, settings):
    client = make_app(with_settings(settings, iris_app_id="@organization/appname")).test_client()

    response = client.post("/appinstall", json=DOCUMENTED_MESSAGE)

    assert response.status_code == 200


def test_unknown_type_acknowledged_without_write(client, openbao, settings):
    response = client.post("/appinstall", json={**DOCUMENTED_MESSAGE, "type": "SOMETHING_NEW"})

    assert response.status_code == 202
    assert not account_exists(openbao, settings)


def test_configured_path_serves_callback(make_app, settings):
    client = make_app(with_settings(settings, appinstall_path="/trackunit/callback")).test_client()

    response = client.post("/trackunit/callback", json=DOCUMENTED_MESSAGE)

    assert response.status_code == 200


def without(field):
    return {key: value for key, value in DOCUMENTED_MESSAGE.items() if key != field}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (without("type"), "type"),
        (without("accountId"), "accountId"),
        (without("clientId"), "clientId"),
        (without("clientSecret"), "clientSecret"),
        ({**DOCUMENTED_MESSAGE, "clientId": ""}, "clientId"),
        ({**DOCUMENTED_MESSAGE, "clientSecret": "   "}, "clientSecret"),
        ({**DOCUMENTED_MESSAGE, "clientSecret": 12345}, "clientSecret"),
        ({**DOCUMENTED_MESSAGE, "clientId": ["a"]}, "clientId"),
        ({**DOCUMENTED_MESSAGE, "type": None}, "type"),
        ({**DOCUMENTED_MESSAGE, "irisAppId": {"a": 1}}, "irisAppId"),
        ({**DOCUMENTED_MESSAGE, "accountId": 42}, "accountId"),
        ({**DOCUMENTED_MESSAGE, "accountId": "../x"}, "accountId"),
        ({**DOCUMENTED_MESSAGE, "accountId": "a/b"}, "accountId"),
        ({**DOCUMENTED_MESSAGE, "accountId": "%2e%2e"}, "accountId"),
        ({**DOCUMENTED_MESSAGE, "accountId": "6b5cb2467945-4bb6-bec5-2a1413ffd1b3x"}, "accountId"),
        ({**DOCUMENTED_MESSAGE, "accountId": "{6b5cb246-7945-4bb6-bec5-2a1413ffd1b}"}, "accountId"),
        ({**DOCUMENTED_MESSAGE, "clientId": "x" * 300}, "clientId"),
        ({**DOCUMENTED_MESSAGE, "clientId": "abc\ndef"}, "clientId"),
        (None, "body"),
        ([], "body"),
        ("INSTALLED", "body"),
    ],
    ids=[
        "type missing",
        "account id missing",
        "client id missing",
        "client secret missing",
        "client id empty",
        "client secret blank",
        "client secret a number",
        "client id an array",
        "type null",
        "app id an object",
        "account id a number",
        "account id climbs a folder",
        "account id with slash",
        "account id percent encoded dots",
        "account id malformed uuid",
        "account id in braces",
        "client id too long",
        "client id with newline",
        "body null",
        "body an array",
        "body a string",
    ],
)
def test_bad_body_rejected_and_nothing_written(client, openbao, settings, body, field):
    response = client.post("/appinstall", data=json.dumps(body), content_type="application/json")

    assert response.status_code == 400
    assert response.json["error"] == "invalid_request"
    assert response.json["field"] == field
    assert not account_exists(openbao, settings)


def test_bad_body_keeps_stored_credentials(client, openbao, settings):
    client.post("/appinstall", json=DOCUMENTED_MESSAGE)

    client.post("/appinstall", json={**DOCUMENTED_MESSAGE, "clientSecret": ""})

    stored = read_account(openbao, settings)
    assert stored["data"]["clientSecret"] == DOCUMENTED_MESSAGE["clientSecret"]
    assert stored["metadata"]["version"] == 1


def test_error_never_echoes_secret(client):
    message = {**DOCUMENTED_MESSAGE, "accountId": "not-a-uuid"}

    response = client.post("/appinstall", json=message)

    assert DOCUMENTED_MESSAGE["clientSecret"] not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("data", "field"),
    [(b"", "body"), (b"   ", "body"), (b"{not json", "body"), (b"\xff\xfe", "body")],
    ids=["empty", "only spaces", "broken json", "not utf-8"],
)
def test_unparsable_body_rejected(client, data, field):
    response = client.post("/appinstall", data=data, content_type="application/json")

    assert response.status_code == 400
    assert response.json["field"] == field


def test_json_as_text_plain_rejected_as_json(client, openbao, settings):
    response = client.post(
        "/appinstall", data=json.dumps(DOCUMENTED_MESSAGE), content_type="text/plain"
    )

    assert response.status_code == 415
    assert response.json["field"] == "Content-Type"
    assert not account_exists(openbao, settings)


def test_form_body_rejected_as_json(client):
    response = client.post("/appinstall", data={"type": "INSTALLED"})

    assert response.status_code == 415
    assert response.is_json


def test_two_megabyte_body_rejected(client, openbao, settings):
    padding = "x" * (2 * 1024 * 1024)
    body = json.dumps({**DOCUMENTED_MESSAGE, "padding": padding})

    response = client.post("/appinstall", data=body, content_type="application/json")

    assert response.status_code == 413
    assert response.json["error"] == "payload_too_large"
    assert not account_exists(openbao, settings)


def test_get_on_callback_is_json_405(client):
    response = client.get("/appinstall")

    assert response.status_code == 405
    assert response.is_json


def test_unknown_path_is_json_404(client):
    response = client.get("/nothing-here")

    assert response.status_code == 404
    assert response.json["error"] == "not_found"


def test_vault_unreachable_gives_503(make_app, settings):
    client = make_app(with_settings(settings, vault_addr="http://127.0.0.1:9", vault_timeout=1)).test_client()

    response = client.post("/appinstall", json=DOCUMENTED_MESSAGE)

    assert response.status_code == 503
    assert response.json["error"] == "vault_unavailable"


def test_vault_denying_gives_503(make_app, settings, openbao):
    limited = openbao.client().auth.token.create(policies=["default"], ttl="5m")["auth"]["client_token"]
    client = make_app(with_settings(settings, vault_token=limited)).test_client()

    response = client.post("/appinstall", json=DOCUMENTED_MESSAGE)

    assert response.status_code == 503
    assert limited not in response.get_data(as_text=True)
    assert not account_exists(openbao, settings)


def test_chunked_body_over_limit_rejected(client, openbao, settings):
    body = json.dumps({**DOCUMENTED_MESSAGE, "padding": " " * 20000}).encode()

    response = client.post(
        "/appinstall",
        input_stream=io.BytesIO(body),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        # gunicorn decodes chunked bodies and marks the stream as ending with the body.
        environ_overrides={"wsgi.input_terminated": True},
    )

    assert response.status_code == 413
    assert not account_exists(openbao, settings)


def test_chunked_body_within_limit_accepted(client):
    body = json.dumps(DOCUMENTED_MESSAGE).encode()

    response = client.post(
        "/appinstall",
        input_stream=io.BytesIO(body),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        # gunicorn decodes chunked bodies and marks the stream as ending with the body.
        environ_overrides={"wsgi.input_terminated": True},
    )

    assert response.status_code == 200

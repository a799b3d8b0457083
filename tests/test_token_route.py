"""GET /token/<accountId>: caching by the fake clock, upstream errors, and caller auth."""

import pytest
import requests

from tests.conftest import API_KEY, TOKEN_URL, with_settings
from tests.test_appinstall import ACCOUNT, DOCUMENTED_MESSAGE, token_reply

OTHER_ACCOUNT = "0f8fad5b-d9cb-469f-a165-70867728950e"


@pytest.fixture
def installed(client):
    """Install the documented account through the real callback route."""
    response = client.post("/appinstall", json=DOCUMENTED_MESSAGE)
    assert response.status_code == 200


def get_token(client, auth_header, account=ACCOUNT, query=""):
    return client.get(f"/token/{account}{query}", headers=auth_header)


def test_token_reply_has_documented_fields(client, trackunit, auth_header, installed):
    trackunit.register_uri("POST", TOKEN_URL, json=token_reply("tok-1"))

    response = get_token(client, auth_header)

    assert response.status_code == 200
    assert response.json == {
        "access_token": "tok-1",
        "token_type": "Bearer",
        "expires_in": 3600,
        "scope": "account.asset.manage asset.view",
    }
    assert response.headers["Cache-Control"] == "no-store"


def test_token_request_follows_oauth_form(client, trackunit, auth_header, installed):
    trackunit.register_uri("POST", TOKEN_URL, json=token_reply())

    get_token(client, auth_header)

    sent = trackunit.last_request
    assert sent.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert sent.text.split("&") == [
        "grant_type=client_credentials",
        f"client_id={DOCUMENTED_MESSAGE['clientId']}",
        f"client_secret={DOCUMENTED_MESSAGE['clientSecret']}",
        "scope=account.asset.manage+asset.view",
    ]


def test_token_reused_until_margin(client, trackunit, auth_header, installed, clock):
    trackunit.register_uri("POST", TOKEN_URL, json=token_reply())
    get_token(client, auth_header)

    clock.advance(3600 - 60 - 1)
    response = get_token(client, auth_header)

    assert trackunit.call_count == 1
    assert response.json["expires_in"] == 61


def test_token_fetched_again_at_margin(client, trackunit, auth_header, installed, clock):
    trackunit.register_uri(
        "POST", TOKEN_URL, [{"json": token_reply("first")}, {"json": token_reply("second")}]
    )
    get_token(client, auth_header)

    clock.advance(3600 - 60)
    response = get_token(client, auth_header)

    assert trackunit.call_count == 2
    assert response.json["access_token"] == "second"
    assert response.json["expires_in"] == 3600


def test_refresh_flag_fetches_new_token(client, trackunit, auth_header, installed):
    trackunit.register_uri(
        "POST", TOKEN_URL, [{"json": token_reply("first")}, {"json": token_reply("second")}]
    )
    get_token(client, auth_header)

    response = get_token(client, auth_header, query="?refresh=true")

    assert response.json["access_token"] == "second"


def test_refresh_flag_invalid_value(client, auth_header, installed):
    response = get_token(client, auth_header, query="?refresh=maybe")

    assert response.status_code == 400
    assert response.json["field"] == "refresh"


@pytest.mark.parametrize(
    ("expires_in", "cached_for"),
    [(3600, 3540), (1200, 1140), ("3599", 3539), (None, 240)],
    ids=["an hour", "twenty minutes", "a numeric string", "missing uses default"],
)
def test_lifetime_read_from_expires_in(
    make_app, settings, trackunit, auth_header, clock, expires_in, cached_for
):
    # Without refresh-ahead, the margin alone decides when the next fetch happens.
    client = make_app(with_settings(settings, token_refresh_ahead_fraction=0)).test_client()
    client.post("/appinstall", json=DOCUMENTED_MESSAGE)
    reply = token_reply()
    reply.pop("expires_in")
    if expires_in is not None:
        reply["expires_in"] = expires_in
    trackunit.register_uri("POST", TOKEN_URL, json=reply)
    get_token(client, auth_header)

    clock.advance(cached_for - 1)
    get_token(client, auth_header)
    calls_before_margin = trackunit.call_count
    clock.advance(1)
    get_token(client, auth_header)

    assert calls_before_margin == 1
    assert trackunit.call_count == 2


@pytest.mark.parametrize(
    "expires_in", ["abc", -5, 0, True, [3600], "nan"], ids=["letters", "negative", "zero", "boolean", "array", "nan"]
)
def test_bad_expires_in_is_502_and_not_cached(
    client, trackunit, auth_header, installed, expires_in
):
    trackunit.register_uri("POST", TOKEN_URL, json={**token_reply(), "expires_in": expires_in})

    first = get_token(client, auth_header)
    get_token(client, auth_header)

    assert first.status_code == 502
    assert first.json["error"] == "upstream_error"
    assert trackunit.call_count == 2


def test_huge_expires_in_capped(client, trackunit, auth_header, installed, clock, settings):
    trackunit.register_uri("POST", TOKEN_URL, json=token_reply(expires_in=10**12))

    response = get_token(client, auth_header)
    clock.advance(settings.token_max_lifetime - settings.token_expiry_margin)
    get_token(client, auth_header)

    assert response.json["expires_in"] == settings.token_max_lifetime
    assert trackunit.call_count == 2


def test_short_lived_token_served_but_not_cached(client, trackunit, auth_header, installed):
    trackunit.register_uri("POST", TOKEN_URL, json=token_reply(expires_in=30))

    response = get_token(client, auth_header)
    get_token(client, auth_header)

    assert response.json["expires_in"] == 30
    assert trackunit.call_count == 2


def test_expires_in_never_negative(client, trackunit, auth_header, installed, clock, make_app, settings):
    trackunit.register_uri("POST", TOKEN_URL, json=token_reply(expires_in=100))
    client = make_app(with_settings(settings, token_expiry_margin=0)).test_client()
    get_token(client, auth_header)

    clock.advance(99.5)
    response = get_token(client, auth_header)

    assert response.json["expires_in"] == 0


def test_account_not_installed_is_404(client, trackunit, auth_header):
    response = get_token(client, auth_header, account=OTHER_ACCOUNT)

    assert response.status_code == 404
    assert response.json["error"] == "not_installed"
    assert trackunit.call_count == 0


@pytest.mark.parametrize(
    "account", ["not-a-uuid", "..%2F..%2Fsys", "a/b", "%2e%2e"], ids=["word", "encoded climb", "slash", "dots"]
)
def test_bad_account_in_path_is_400(client, auth_header, account):
    response = get_token(client, auth_header, account=account)

    assert response.status_code == 400
    assert response.json["field"] == "accountId"


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", f"Basic {API_KEY}", "Bearer wrong-key-0123456789abcdef", f"Bearer {API_KEY}x"],
    ids=["absent", "empty", "scheme only", "blank key", "basic scheme", "wrong key", "key with suffix"],
)
def test_caller_without_valid_key_is_401(client, trackunit, installed, header):
    headers = {} if header is None else {"Authorization": header}

    response = client.get(f"/token/{ACCOUNT}", headers=headers)

    assert response.status_code == 401
    assert response.json["error"] == "unauthorized"
    assert trackunit.call_count == 0


def test_second_rotated_key_accepted(make_app, settings, trackunit, installed):
    keys = (b"old-key-0123456789abcdef", settings.internal_api_keys[0])
    client = make_app(with_settings(settings, internal_api_keys=keys)).test_client()
    trackunit.register_uri("POST", TOKEN_URL, json=token_reply())

    response = client.get(f"/token/{ACCOUNT}", headers={"Authorization": "Bearer old-key-0123456789abcdef"})

    assert response.status_code == 200


UPSTREAM_FAILURES = [
    ({"status_code": 401, "json": {"error": "invalid_client", "error_description": "bad secret"}}, 502, "upstream_rejected", 1),
    ({"status_code": 400, "json": {"error": "invalid_scope", "error_description": "nope"}}, 502, "upstream_rejected", 1),
    ({"status_code": 400, "json": {"error": "unsupported_grant_type"}}, 502, "upstream_rejected", 1),
    ({"status_code": 429, "headers": {"Retry-After": "1"}}, 503, "upstream_rate_limited", 3),
    ({"status_code": 500, "text": "<html><body>Oops</body></html>", "headers": {"Content-Type": "text/html"}}, 502, "upstream_error", 3),
    ({"status_code": 200, "text": "<html>login page</html>", "headers": {"Content-Type": "text/html"}}, 502, "upstream_error", 1),
    ({"status_code": 404, "text": "not here"}, 502, "upstream_error", 1),
    ({"exc": requests.exceptions.ConnectTimeout}, 504, "upstream_timeout", 1),
    ({"exc": requests.exceptions.ReadTimeout}, 504, "upstream_timeout", 1),
    ({"exc": requests.exceptions.ConnectionError}, 502, "upstream_error", 3),
]


@pytest.mark.parametrize(
    ("upstream", "status", "code", "calls"),
    UPSTREAM_FAILURES,
    ids=[
        "401 invalid_client",
        "400 invalid_scope",
        "400 unsupported_grant_type",
        "429 with retry-after",
        "500 with html",
        "200 with html",
        "404 plain text",
        "connect timeout",
        "read timeout",
        "connection refused",
    ],
)
def test_upstream_failure_is_clean_json(
    client, trackunit, auth_header, installed, upstream, status, code, calls
):
    trackunit.register_uri("POST", TOKEN_URL, **upstream)

    response = get_token(client, auth_header)

    assert response.status_code == status
    assert response.json["error"] == code
    assert "Traceback" not in response.get_data(as_text=True)
    assert trackunit.call_count == calls


def test_oauth_error_code_reported(client, trackunit, auth_header, installed):
    trackunit.register_uri("POST", TOKEN_URL, status_code=401, json={"error": "invalid_client"})

    response = get_token(client, auth_header)

    assert response.json["oauth_error"] == "invalid_client"


def test_rate_limit_honours_retry_after(client, trackunit, auth_header, installed, sleeps):
    trackunit.register_uri(
        "POST",
        TOKEN_URL,
        [{"status_code": 429, "headers": {"Retry-After": "2"}}, {"json": token_reply()}],
    )

    response = get_token(client, auth_header)

    assert response.status_code == 200
    assert sleeps == [2.0]


def test_long_retry_after_answered_503_at_once(client, trackunit, auth_header, installed, sleeps):
    trackunit.register_uri("POST", TOKEN_URL, status_code=429, headers={"Retry-After": "120"})

    response = get_token(client, auth_header)

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "120"
    assert trackunit.call_count == 1
    assert sleeps == []


def test_server_errors_back_off_exponentially(client, trackunit, auth_header, installed, sleeps):
    trackunit.register_uri(
        "POST",
        TOKEN_URL,
        [{"status_code": 503}, {"status_code": 502}, {"json": token_reply()}],
    )

    response = get_token(client, auth_header)

    assert response.status_code == 200
    assert sleeps == [0.25, 0.5]


def test_failed_fetch_not_cached(client, trackunit, auth_header, installed):
    trackunit.register_uri(
        "POST", TOKEN_URL, [{"status_code": 404, "text": "not here"}, {"json": token_reply()}]
    )
    get_token(client, auth_header)

    response = get_token(client, auth_header)

    assert response.status_code == 200


def test_vault_down_on_miss_is_503(make_app, settings, auth_header, trackunit):
    client = make_app(with_settings(settings, vault_addr="http://127.0.0.1:9", vault_timeout=1)).test_client()

    response = client.get(f"/token/{ACCOUNT}", headers=auth_header)

    assert response.status_code == 503
    assert response.json["error"] == "vault_unavailable"
    assert trackunit.call_count == 0


def test_healthz_ok(client):
    assert client.get("/healthz").json == {"status": "ok"}


def test_readyz_ready_with_vault(client):
    response = client.get("/readyz")

    assert response.status_code == 200


def test_readyz_names_unreachable_vault(make_app, settings):
    client = make_app(with_settings(settings, vault_addr="http://127.0.0.1:9", vault_timeout=1)).test_client()

    response = client.get("/readyz")

    assert response.status_code == 503
    assert "unreachable" in response.json["reason"]


def test_readyz_names_rejected_token(make_app, settings):
    client = make_app(with_settings(settings, vault_token="not-a-valid-token")).test_client()

    response = client.get("/readyz")

    assert response.status_code == 503
    assert "403" in response.json["reason"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?scopes=asset.view", "scopes"),
        ("?refresh=1&refresh=0", "refresh"),
        ("?refresh", "refresh"),
        ("?refresh=", "refresh"),
    ],
    ids=["misspelt scope", "refresh twice", "bare refresh", "empty refresh"],
)
def test_bad_query_parameter_is_400(client, trackunit, auth_header, installed, query, field):
    response = get_token(client, auth_header, query=query)

    assert response.status_code == 400
    assert response.json["field"] == field
    assert trackunit.call_count == 0


def test_first_invalid_client_sets_retry_after(client, trackunit, auth_header, installed, settings):
    trackunit.register_uri("POST", TOKEN_URL, status_code=401, json={"error": "invalid_client"})

    response = get_token(client, auth_header)

    assert response.status_code == 502
    assert response.headers["Retry-After"] == str(int(settings.token_invalid_client_backoff))

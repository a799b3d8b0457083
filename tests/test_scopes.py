"""Scopes per request: `?scope=`, optional scopes, and learning what an account refused."""

from __future__ import annotations

import pytest

from broker.config import ConfigError, load_settings
from broker.errors import InvalidRequest
from broker.scopes import ScopePolicy
from tests.token_helpers import FakeTokenEndpoint, ManualExecutor, install, new_account, token

REQUIRED = {"account.asset.manage", "asset.view"}
OPTIONAL = "asset.history fleet.view"


@pytest.fixture
def scope_env(base_env):
    return {**base_env, "TRACKUNIT_OPTIONAL_SCOPES": OPTIONAL}


@pytest.fixture
def endpoint(trackunit) -> FakeTokenEndpoint:
    fake = FakeTokenEndpoint()
    fake.attach(trackunit)
    return fake


@pytest.fixture
def client(make_app, scope_env):
    return make_app(load_settings(scope_env), executor=ManualExecutor()).test_client()


def test_optional_scopes_setting_sorted(scope_env):
    settings = load_settings({**scope_env, "TRACKUNIT_OPTIONAL_SCOPES": "fleet.view, asset.history fleet.view"})

    assert settings.trackunit_optional_scopes == ("asset.history", "fleet.view")


def test_optional_scopes_setting_rejects_overlap(scope_env):
    with pytest.raises(ConfigError, match="TRACKUNIT_OPTIONAL_SCOPES repeats asset.view"):
        load_settings({**scope_env, "TRACKUNIT_OPTIONAL_SCOPES": "asset.view fleet.view"})


def test_optional_scopes_setting_rejects_bad_name(scope_env):
    with pytest.raises(ConfigError, match="TRACKUNIT_OPTIONAL_SCOPES contains an invalid scope"):
        load_settings({**scope_env, "TRACKUNIT_OPTIONAL_SCOPES": "fleet/view"})


@pytest.mark.parametrize(
    "raw",
    [
        "asset.view account.asset.manage",
        "account.asset.manage asset.view",
        "  asset.view   account.asset.manage  ",
        "asset.view account.asset.manage asset.view",
        "asset.view\taccount.asset.manage",
    ],
    ids=["odd order", "sorted", "repeated spaces", "duplicate", "tab"],
)
def test_parse_request_canonical_form(raw):
    policy = ScopePolicy(("account.asset.manage", "asset.view"), ("fleet.view",))

    assert policy.parse_request(raw) == ("account.asset.manage", "asset.view")


def test_parse_request_absent_means_all_granted():
    policy = ScopePolicy(("asset.view",), ("fleet.view",))

    assert policy.parse_request(None) is None


def test_narrow_and_wide_tokens_cached_apart(client, endpoint):
    account = new_account()
    endpoint.register("client-a", "secret-0123456789", REQUIRED | {"asset.history", "fleet.view"})
    install(client, account, "client-a")

    wide = token(client, account)
    narrow = token(client, account, scope="asset.view")
    wide_again = token(client, account)
    narrow_again = token(client, account, scope="asset.view")

    assert wide.status_code == 200
    assert narrow.status_code == 200
    assert wide.json["scope"] == "account.asset.manage asset.history asset.view fleet.view"
    assert narrow.json["scope"] == "asset.view"
    assert wide.json["access_token"] != narrow.json["access_token"]
    assert wide_again.json["access_token"] == wide.json["access_token"]
    assert narrow_again.json["access_token"] == narrow.json["access_token"]
    assert len(endpoint.calls) == 2


def test_equivalent_scope_strings_share_entry(client, endpoint):
    account = new_account()
    endpoint.register("client-a", "secret-0123456789", REQUIRED)
    install(client, account, "client-a")
    spellings = [
        "asset.view account.asset.manage",
        "account.asset.manage   asset.view",
        " asset.view asset.view account.asset.manage ",
    ]

    replies = [token(client, account, scope=raw) for raw in spellings]

    assert [reply.status_code for reply in replies] == [200, 200, 200]
    assert len({reply.json["access_token"] for reply in replies}) == 1
    assert len(endpoint.calls) == 1
    assert endpoint.calls[0].scopes == ("account.asset.manage", "asset.view")


def test_unknown_scope_is_400_naming_it(client, endpoint):
    account = new_account()

    reply = token(client, account, scope="asset.view asset.delete")

    assert reply.status_code == 400
    assert reply.json["field"] == "scope"
    assert "'asset.delete'" in reply.json["message"]
    assert endpoint.calls == []


@pytest.mark.parametrize("raw", ["", "   "], ids=["empty", "blank"])
def test_empty_scope_is_400(client, raw):
    reply = token(client, new_account(), scope=raw)

    assert reply.status_code == 400
    assert reply.json["field"] == "scope"


def test_scope_sent_twice_is_400(client):
    reply = client.get(
        f"/token/{new_account()}?scope=asset.view&scope=fleet.view",
        headers={"Authorization": "Bearer test-internal-key-0123456789abcdef"},
    )

    assert reply.status_code == 400
    assert reply.json["field"] == "scope"


def test_refused_optional_scope_bounded_calls(client, endpoint):
    account = new_account()
    endpoint.register("client-a", "secret-0123456789", REQUIRED | {"fleet.view"})
    install(client, account, "client-a")

    wide = [token(client, account) for _ in range(100)]
    refused = [token(client, account, scope="asset.view asset.history") for _ in range(100)]
    required = token(client, account, scope="account.asset.manage asset.view")

    assert {reply.status_code for reply in wide} == {200}
    assert wide[0].json["scope"] == "account.asset.manage asset.view fleet.view"
    assert {reply.status_code for reply in refused} == {403}
    assert refused[0].json["error"] == "scope_not_granted"
    assert refused[0].json["scope"] == "asset.history"
    assert required.status_code == 200
    # Full set, required only, one probe per optional scope. The probe with
    # fleet.view already is the wide token and the required-only token is cached.
    assert len(endpoint.calls) == 4


def test_single_optional_refused_two_calls(make_app, scope_env, endpoint):
    settings = load_settings({**scope_env, "TRACKUNIT_OPTIONAL_SCOPES": "fleet.view"})
    client = make_app(settings, executor=ManualExecutor()).test_client()
    account = new_account()
    endpoint.register("client-a", "secret-0123456789", REQUIRED)
    install(client, account, "client-a")

    first = token(client, account)
    denied = token(client, account, scope="fleet.view")

    assert first.status_code == 200
    assert first.json["scope"] == "account.asset.manage asset.view"
    assert denied.status_code == 403
    assert denied.json["scope"] == "fleet.view"
    assert [call.scopes for call in endpoint.calls] == [
        ("account.asset.manage", "asset.view", "fleet.view"),
        ("account.asset.manage", "asset.view"),
    ]


def test_narrow_request_learns_refusal(client, endpoint):
    account = new_account()
    endpoint.register("client-a", "secret-0123456789", REQUIRED | {"fleet.view"})
    install(client, account, "client-a")

    first = token(client, account, scope="asset.history")
    second = token(client, account, scope="asset.history")

    assert first.status_code == 403
    assert second.status_code == 403
    assert first.json["scope"] == "asset.history"
    assert len(endpoint.calls) == 2


def test_reinstall_clears_learned_refusal(client, endpoint):
    account = new_account()
    endpoint.register("client-a", "secret-0123456789", REQUIRED | {"fleet.view"})
    endpoint.register("client-b", "secret-0123456789", REQUIRED | {"fleet.view", "asset.history"})
    install(client, account, "client-a")
    assert token(client, account, scope="asset.history").status_code == 403

    install(client, account, "client-b")
    reply = token(client, account, scope="asset.history")

    assert reply.status_code == 200
    assert reply.json["scope"] == "asset.history"


def test_refused_required_scope_is_502(client, endpoint):
    account = new_account()
    endpoint.register("client-a", "secret-0123456789", {"asset.view"})
    install(client, account, "client-a")

    reply = token(client, account)

    assert reply.status_code == 502
    assert reply.json["error"] == "upstream_rejected"
    assert reply.json["oauth_error"] == "invalid_scope"


def test_reply_scope_is_granted_scope(client, trackunit):
    account = new_account()
    install(client, account, "client-a")
    trackunit.register_uri(
        "POST",
        "https://auth.trackunit.test/apptoken",
        json={"access_token": "narrowed", "token_type": "Bearer", "expires_in": 3600, "scope": "asset.view"},
    )

    reply = token(client, account, scope="asset.view account.asset.manage")

    assert reply.json["scope"] == "asset.view"


def test_reply_scope_defaults_to_requested(client, trackunit):
    account = new_account()
    install(client, account, "client-a")
    trackunit.register_uri(
        "POST",
        "https://auth.trackunit.test/apptoken",
        json={"access_token": "no-scope", "token_type": "Bearer", "expires_in": 3600},
    )

    reply = token(client, account, scope="asset.view")

    assert reply.json["scope"] == "asset.view"


def test_parse_request_error_is_invalid_request():
    policy = ScopePolicy(("asset.view",))

    with pytest.raises(InvalidRequest):
        policy.parse_request("fleet.view")

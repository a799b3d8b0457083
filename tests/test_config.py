"""Start-up settings: defaults, and a message naming the variable for every bad value."""

import pytest

from broker.config import ConfigError, load_settings

VALID = {
    "VAULT_ADDR": "http://127.0.0.1:8200",
    "VAULT_TOKEN": "not-a-real-token",
    "INTERNAL_API_KEYS": "a" * 32,
    "TRACKUNIT_SCOPES": "asset.view account.asset.manage",
}


def test_defaults_fill_optional_settings():
    settings = load_settings(VALID)

    assert settings.vault_kv_mount == "secret"
    assert settings.vault_kv_prefix == "iris-token-broker/accounts"
    assert settings.trackunit_token_url == "https://auth.trackunit.com/apptoken"
    assert settings.appinstall_path == "/appinstall"
    assert settings.token_expiry_margin == 60


def test_scopes_sorted_and_deduplicated():
    settings = load_settings({**VALID, "TRACKUNIT_SCOPES": " asset.view,  account.asset.manage asset.view "})

    assert settings.trackunit_scopes == ("account.asset.manage", "asset.view")


def test_api_keys_split_on_commas():
    settings = load_settings({**VALID, "INTERNAL_API_KEYS": f"{'a' * 20}, {'b' * 20}"})

    assert settings.internal_api_keys == (b"a" * 20, b"b" * 20)


def test_settings_repr_hides_secrets():
    settings = load_settings(VALID)

    assert "not-a-real-token" not in repr(settings)
    assert "a" * 32 not in repr(settings)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"VAULT_ADDR": ""}, "VAULT_ADDR"),
        ({"VAULT_ADDR": "127.0.0.1:8200"}, "VAULT_ADDR"),
        ({"VAULT_TOKEN": ""}, "VAULT_TOKEN"),
        ({"INTERNAL_API_KEYS": ""}, "INTERNAL_API_KEYS"),
        ({"INTERNAL_API_KEYS": "short"}, "INTERNAL_API_KEYS"),
        ({"TRACKUNIT_SCOPES": ""}, "TRACKUNIT_SCOPES"),
        ({"TRACKUNIT_SCOPES": "asset.view bad/scope"}, "TRACKUNIT_SCOPES"),
        ({"TRACKUNIT_TOKEN_URL": "ftp://example.invalid/x"}, "TRACKUNIT_TOKEN_URL"),
        ({"TOKEN_EXPIRY_MARGIN": "ten"}, "TOKEN_EXPIRY_MARGIN"),
        ({"TOKEN_EXPIRY_MARGIN": "-1"}, "TOKEN_EXPIRY_MARGIN"),
        ({"TOKEN_CACHE_SIZE": "0"}, "TOKEN_CACHE_SIZE"),
        ({"VAULT_TIMEOUT": "fast"}, "VAULT_TIMEOUT"),
        ({"VAULT_KV_PREFIX": "../escape"}, "VAULT_KV_PREFIX"),
        ({"VAULT_KV_MOUNT": "a//b"}, "VAULT_KV_MOUNT"),
        ({"APPINSTALL_PATH": "appinstall"}, "APPINSTALL_PATH"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"VAULT_AUTH_METHOD": "ldap"}, "VAULT_AUTH_METHOD"),
        ({"VAULT_AUTH_METHOD": "kubernetes"}, "VAULT_K8S_ROLE"),
        ({"TOKEN_DEFAULT_LIFETIME": "30"}, "TOKEN_DEFAULT_LIFETIME"),
    ],
    ids=[
        "vault address missing",
        "vault address without scheme",
        "vault token missing",
        "api keys missing",
        "api key too short",
        "scopes missing",
        "scope with a slash",
        "token url not http",
        "margin not a number",
        "margin negative",
        "cache size zero",
        "vault timeout not a number",
        "kv prefix climbs out",
        "kv mount with empty segment",
        "callback path not absolute",
        "log format unknown",
        "auth method unknown",
        "kubernetes auth without role",
        "default lifetime within margin",
    ],
)
def test_bad_setting_named_in_error(changes, named):
    with pytest.raises(ConfigError) as raised:
        load_settings({**VALID, **changes})

    assert named in str(raised.value)


def test_bad_api_key_not_echoed():
    secret_like = "short key"

    with pytest.raises(ConfigError) as raised:
        load_settings({**VALID, "INTERNAL_API_KEYS": f"{'a' * 20},{secret_like}"})

    assert secret_like not in str(raised.value)

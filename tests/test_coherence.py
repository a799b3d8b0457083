"""Coherence between processes: two apps on one OpenBao and one fake clock.

App `a` handles the install callbacks, app `b` stands for another worker or pod with
its own cache. TOKEN_COHERENCE_SECONDS is 30 (the default).
"""

from __future__ import annotations

import pytest

from broker.config import ConfigError, load_settings
from tests.token_helpers import FakeTokenEndpoint, ManualExecutor, install, new_account, token

BOUND = 30.0
REQUIRED = {"account.asset.manage", "asset.view"}


@pytest.fixture
def endpoint(trackunit) -> FakeTokenEndpoint:
    fake = FakeTokenEndpoint()
    fake.register("client-old", "secret-0123456789", REQUIRED)
    fake.register("client-new", "secret-0123456789", REQUIRED | {"fleet.view"})
    fake.attach(trackunit)
    return fake


@pytest.fixture
def env(base_env):
    return {**base_env, "TRACKUNIT_OPTIONAL_SCOPES": "fleet.view"}


@pytest.fixture
def app_a(make_app, env):
    return make_app(load_settings(env), executor=ManualExecutor())


@pytest.fixture
def app_b(make_app, env):
    return make_app(load_settings(env), executor=ManualExecutor())


@pytest.fixture
def metadata_reads(app_b, monkeypatch) -> list[str]:
    """Account ids of every KV metadata read app_b makes; the reads still reach Vault."""
    store = app_b.extensions["broker"].store
    real = store.current_version
    reads: list[str] = []

    def counting(account_id: str):
        reads.append(account_id)
        return real(account_id)

    monkeypatch.setattr(store, "current_version", counting)
    return reads


@pytest.fixture
def warm(app_a, app_b, endpoint):
    """An account installed through `a` with client-old, with a token cached in `b`."""
    account = new_account()
    install(app_a.test_client(), account, "client-old")
    reply = token(app_b.test_client(), account)
    assert reply.status_code == 200
    return account, reply.json["access_token"]


def test_reinstall_elsewhere_within_bound(app_a, app_b, clock, warm):
    account, old = warm
    install(app_a.test_client(), account, "client-new")

    clock.advance(BOUND - 1)
    inside = token(app_b.test_client(), account)
    clock.advance(1)
    after = token(app_b.test_client(), account)

    assert inside.json["access_token"] == old
    assert after.status_code == 200
    assert after.json["access_token"].startswith("token-client-new-")


def test_one_metadata_read_per_bound(app_b, clock, warm, metadata_reads):
    account, _ = warm
    client = app_b.test_client()

    for _ in range(100):
        clock.advance(1)
        assert token(client, account).status_code == 200

    assert len(metadata_reads) == 3


def test_uninstall_elsewhere_within_bound(app_b, openbao, settings, clock, warm):
    account, _ = warm
    openbao.client().secrets.kv.v2.delete_latest_version_of_secret(
        path=f"{settings.vault_kv_prefix}/{account}", mount_point="secret"
    )

    clock.advance(BOUND)
    reply = token(app_b.test_client(), account)

    assert reply.status_code == 404
    assert reply.json["error"] == "not_installed"


def test_metadata_deleted_elsewhere_within_bound(app_b, openbao, settings, clock, warm):
    account, _ = warm
    openbao.client().secrets.kv.v2.delete_metadata_and_all_versions(
        path=f"{settings.vault_kv_prefix}/{account}", mount_point="secret"
    )

    clock.advance(BOUND)
    reply = token(app_b.test_client(), account)

    assert reply.status_code == 404


def test_unchanged_version_keeps_token(app_b, clock, warm, metadata_reads):
    account, old = warm

    clock.advance(BOUND)
    reply = token(app_b.test_client(), account)

    assert reply.json["access_token"] == old
    assert metadata_reads == [account]


def test_learned_refusal_bounded(app_a, app_b, endpoint, clock):
    account = new_account()
    install(app_a.test_client(), account, "client-old")
    client_b = app_b.test_client()
    assert token(client_b, account, scope="fleet.view").status_code == 403

    install(app_a.test_client(), account, "client-new")
    clock.advance(BOUND - 1)
    inside = token(client_b, account, scope="fleet.view")
    clock.advance(1)
    after = token(client_b, account, scope="fleet.view")

    assert inside.status_code == 403
    assert after.status_code == 200
    assert after.json["scope"] == "fleet.view"


def test_install_here_evicts_at_once(app_a, endpoint):
    account = new_account()
    client = app_a.test_client()
    install(client, account, "client-old")
    old = token(client, account).json["access_token"]

    install(client, account, "client-new")
    reply = token(client, account)

    assert reply.json["access_token"] != old
    assert reply.json["access_token"].startswith("token-client-new-")


def test_refresh_adopts_new_version(app_a, make_app, env, endpoint, clock):
    """A refresh-ahead that reads a newer version drops the other entries of the account."""
    executor = ManualExecutor()
    app_b = make_app(load_settings({**env, "TOKEN_COHERENCE_SECONDS": "3600"}), executor=executor)
    client_b = app_b.test_client()
    account = new_account()
    install(app_a.test_client(), account, "client-old")
    token(client_b, account)
    narrow = token(client_b, account, scope="asset.view").json["access_token"]
    install(app_a.test_client(), account, "client-new")

    clock.now = 4186.0
    token(client_b, account)
    executor.run_all()
    reply = token(client_b, account, scope="asset.view")

    assert reply.json["access_token"] != narrow
    assert reply.json["access_token"].startswith("token-client-new-")


@pytest.mark.parametrize("raw", ["0", "abc", "4000"])
def test_coherence_setting_validated(base_env, raw):
    with pytest.raises(ConfigError, match="TOKEN_COHERENCE_SECONDS"):
        load_settings({**base_env, "TOKEN_COHERENCE_SECONDS": raw})

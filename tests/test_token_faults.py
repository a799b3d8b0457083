"""Faults on the token path: Vault down or sealed, token endpoint failing, rejected
credentials, and the `min_ttl` and `refresh` parameters.

Timeline with the defaults: a token of 3600 s fetched at t=1000 is fresh until 4540
and expires at 4600.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from pathlib import Path

import hvac
import pytest
import requests

from broker.config import load_settings
from tests.conftest import OpenBao, free_port, stop_openbao
from tests.token_helpers import FakeTokenEndpoint, ManualExecutor, install, new_account, token
from vault.local_server import bao_binary, wait_until_listening

FRESH_UNTIL = 4540.0
EXPIRES_AT = 4600.0
REQUIRED = {"account.asset.manage", "asset.view"}


@pytest.fixture
def endpoint(trackunit) -> FakeTokenEndpoint:
    fake = FakeTokenEndpoint()
    fake.register("client-a", "secret-0123456789", REQUIRED)
    fake.attach(trackunit)
    return fake


@pytest.fixture
def client(make_app, settings):
    return make_app(settings, executor=ManualExecutor()).test_client()


@pytest.fixture
def account(client, endpoint) -> str:
    account_id = new_account()
    install(client, account_id, "client-a")
    assert token(client, account_id).status_code == 200
    return account_id


class SealableBao(OpenBao):
    """A private OpenBao dev server with a known unseal key, so tests can seal and unseal it."""

    def __init__(self, addr, root_token, process, unseal_key):
        super().__init__(addr, root_token, process)
        self.unseal_key = unseal_key

    def seal(self) -> None:
        self.client().sys.seal()

    def unseal(self) -> None:
        self.client().sys.submit_unseal_key(self.unseal_key)


def start_sealable_bao(output: Path) -> SealableBao:
    """Start an OpenBao dev server on loopback, logging to `output`, and wait until it is ready."""
    port = free_port()
    root_token = secrets.token_urlsafe(24)
    with open(output, "wb") as sink:
        process = subprocess.Popen(
            [
                bao_binary(),
                "server",
                "-dev",
                f"-dev-listen-address=127.0.0.1:{port}",
                f"-dev-root-token-id={root_token}",
                "-dev-no-store-token",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")},
        )
    addr = f"http://127.0.0.1:{port}"
    bao = SealableBao(addr, root_token, process, unseal_key="")

    try:
        wait_until_listening(addr, process)
        deadline = time.monotonic() + 30
        while not bao.unseal_key and time.monotonic() < deadline:
            match = re.search(r"Unseal Key: (\S+)", output.read_text(errors="replace"))
            if match is None:
                time.sleep(0.05)
            else:
                bao.unseal_key = match.group(1)
        if not bao.unseal_key:
            raise RuntimeError("the OpenBao dev server printed no unseal key")

        while time.monotonic() < deadline:
            try:
                bao.client().secrets.kv.v2.read_configuration(mount_point="secret")
                return bao
            except (hvac.exceptions.VaultError, requests.RequestException):
                time.sleep(0.05)
        raise RuntimeError("the OpenBao dev server did not become ready")
    except BaseException:
        stop_openbao(bao)
        raise


@pytest.fixture
def private_bao(tmp_path: Path):
    """An OpenBao dev server of this test's own, so the test may stop or seal it."""
    bao = start_sealable_bao(tmp_path / "bao.out")
    yield bao
    if bao.process.poll() is None:
        stop_openbao(bao)


@pytest.fixture
def private_executor() -> ManualExecutor:
    return ManualExecutor()


@pytest.fixture
def private_settings(base_env, private_bao):
    env = {
        **base_env,
        "VAULT_ADDR": private_bao.addr,
        "VAULT_TOKEN": private_bao.root_token,
        "VAULT_TIMEOUT": "1",
    }
    return load_settings(env)


@pytest.fixture
def private_client(make_app, private_settings, private_executor):
    return make_app(private_settings, executor=private_executor).test_client()


# Token endpoint failing


def test_endpoint_down_serves_valid_token(client, endpoint, clock, account, caplog):
    old = token(client, account).json["access_token"]
    endpoint.failure = 500
    clock.now = FRESH_UNTIL + 10

    reply = token(client, account)

    assert reply.status_code == 200
    assert reply.json["access_token"] == old
    assert reply.json["expires_in"] == 50
    assert f"Serving the cached token of account {account} with 50 s left" in caplog.text


def test_endpoint_down_never_serves_expired(client, endpoint, clock, account):
    endpoint.failure = 500
    clock.now = EXPIRES_AT

    reply = token(client, account)

    assert reply.status_code == 502
    assert reply.json["error"] == "upstream_error"


def test_endpoint_down_retried_not_per_request(client, endpoint, clock, settings, account):
    endpoint.failure = 503
    clock.now = FRESH_UNTIL + 1
    token(client, account)
    calls_after_first = len(endpoint.calls)

    replies = [token(client, account) for _ in range(20)]

    assert {reply.status_code for reply in replies} == {200}
    assert len(endpoint.calls) == calls_after_first
    clock.advance(settings.token_refresh_retry_seconds)
    token(client, account)
    assert len(endpoint.calls) > calls_after_first


def test_endpoint_back_recovers(client, endpoint, clock, account):
    old = token(client, account).json["access_token"]
    endpoint.failure = 500
    clock.now = FRESH_UNTIL + 1
    token(client, account)

    endpoint.failure = None
    clock.advance(10)
    reply = token(client, account)

    assert reply.status_code == 200
    assert reply.json["access_token"] != old
    assert reply.json["expires_in"] == 3600


# Vault down or sealed


def test_vault_down_serves_cached_misses_503(private_client, private_bao, endpoint, clock):
    account = new_account()
    install(private_client, account, "client-a")
    old = token(private_client, account).json["access_token"]
    stop_openbao(private_bao)

    cached = token(private_client, account)
    clock.advance(60)
    past_bound = token(private_client, account)
    miss = token(private_client, new_account())

    assert cached.json["access_token"] == old
    assert past_bound.status_code == 200
    assert past_bound.json["access_token"] == old
    assert miss.status_code == 503
    assert miss.json["error"] == "vault_unavailable"


def test_vault_down_past_fresh_serves_until_expiry(private_client, private_bao, endpoint, clock):
    account = new_account()
    install(private_client, account, "client-a")
    old = token(private_client, account).json["access_token"]
    stop_openbao(private_bao)

    clock.now = FRESH_UNTIL + 30
    stale = token(private_client, account)
    clock.now = EXPIRES_AT
    expired = token(private_client, account)

    assert stale.status_code == 200
    assert stale.json["access_token"] == old
    assert stale.json["expires_in"] == 30
    assert expired.status_code == 503


def test_vault_sealed_then_recovers(private_client, private_bao, endpoint, clock, caplog):
    account = new_account()
    install(private_client, account, "client-a")
    old = token(private_client, account).json["access_token"]
    private_bao.seal()

    clock.advance(60)
    during = token(private_client, account)
    miss_during = token(private_client, new_account())
    private_bao.unseal()
    clock.advance(10)
    after_miss = token(private_client, new_account())
    after = token(private_client, account)

    assert during.json["access_token"] == old
    assert miss_during.status_code == 503
    assert f"Could not check account {account} in Vault" in caplog.text
    assert after_miss.status_code == 404
    assert after.json["access_token"] == old


def test_checks_resume_after_vault_returns(
    private_client, private_bao, private_settings, private_executor, endpoint, clock
):
    account = new_account()
    install(private_client, account, "client-a")
    old = token(private_client, account).json["access_token"]
    private_bao.seal()
    clock.advance(60)
    token(private_client, account)

    private_bao.unseal()
    endpoint.register("client-b", "secret-0123456789", REQUIRED)
    private_bao.client().secrets.kv.v2.create_or_update_secret(
        path=f"{private_settings.vault_kv_prefix}/{account}",
        secret={"clientId": "client-b", "clientSecret": "secret-0123456789"},
        mount_point="secret",
    )
    clock.advance(private_settings.token_refresh_retry_seconds)
    token(private_client, account)
    private_executor.run_all()
    reply = token(private_client, account)

    assert reply.json["access_token"] != old
    assert reply.json["access_token"].startswith("token-client-b-")


# Rejected credentials


def test_invalid_client_fails_fast(client, endpoint, clock, settings):
    account = new_account()
    install(client, account, "client-unknown")

    first = token(client, account)
    repeated = [token(client, account) for _ in range(20)]
    calls_during = len(endpoint.calls)
    clock.advance(settings.token_invalid_client_backoff)
    later = token(client, account)

    assert first.status_code == 502
    assert first.json["oauth_error"] == "invalid_client"
    assert {reply.status_code for reply in repeated} == {502}
    assert repeated[0].json["error"] == "upstream_rejected"
    assert repeated[0].json["oauth_error"] == "invalid_client"
    assert int(repeated[0].headers["Retry-After"]) == 60
    assert calls_during == 1
    assert later.status_code == 502
    assert len(endpoint.calls) == 2


def test_reinstall_clears_fail_fast(client, endpoint):
    account = new_account()
    install(client, account, "client-unknown")
    assert token(client, account).status_code == 502

    install(client, account, "client-a")
    reply = token(client, account)

    assert reply.status_code == 200


def test_fail_fast_backoff_zero_disables(make_app, base_env, endpoint):
    settings = load_settings({**base_env, "TOKEN_INVALID_CLIENT_BACKOFF": "0"})
    client = make_app(settings, executor=ManualExecutor()).test_client()
    account = new_account()
    install(client, account, "client-unknown")

    token(client, account)
    token(client, account)

    assert len(endpoint.calls) == 2


def test_rejection_message_has_no_secret(client, endpoint):
    account = new_account()
    install(client, account, "client-unknown", client_secret="very-secret-value-42")

    replies = [token(client, account) for _ in range(2)]

    assert all("very-secret-value-42" not in reply.get_data(as_text=True) for reply in replies)


# min_ttl and refresh


def test_min_ttl_served_from_cache(client, endpoint, clock, account):
    clock.advance(500)

    reply = token(client, account, min_ttl=3000)

    assert reply.status_code == 200
    assert reply.json["expires_in"] == 3100
    assert len(endpoint.calls) == 1


def test_min_ttl_fetches_longer_token(client, endpoint, clock, account):
    old = token(client, account).json["access_token"]
    clock.advance(1000)

    reply = token(client, account, min_ttl=3000)
    again = token(client, account)

    assert reply.status_code == 200
    assert reply.json["access_token"] != old
    assert reply.json["expires_in"] == 3600
    assert again.json["access_token"] == reply.json["access_token"]
    assert len(endpoint.calls) == 2


def test_min_ttl_beyond_lifetime_is_400(client, endpoint, account):
    replies = [token(client, account, min_ttl=7200) for _ in range(5)]

    assert {reply.status_code for reply in replies} == {400}
    assert replies[0].json["field"] == "min_ttl"
    assert "last 3600 s" in replies[0].json["message"]
    assert len(endpoint.calls) == 1


def test_min_ttl_on_miss_beyond_lifetime(client, endpoint):
    account = new_account()
    install(client, account, "client-a")

    reply = token(client, account, min_ttl=7200)

    assert reply.status_code == 400
    assert reply.json["field"] == "min_ttl"


@pytest.mark.parametrize(
    "raw",
    ["-1", "1.5", "abc", "", "86401", "9" * 40, "１２"],
    ids=["negative", "fraction", "word", "empty", "above max", "huge", "non-ascii digits"],
)
def test_min_ttl_invalid_is_400(client, raw):
    reply = token(client, new_account(), min_ttl=raw)

    assert reply.status_code == 400
    assert reply.json["field"] == "min_ttl"


def test_refresh_true_fetches_new(client, endpoint, account):
    old = token(client, account).json["access_token"]

    reply = token(client, account, refresh="true")

    assert reply.json["access_token"] != old
    assert len(endpoint.calls) == 2


def test_refresh_true_endpoint_down_no_fallback(client, endpoint, account):
    endpoint.failure = 500

    reply = token(client, account, refresh="true")

    assert reply.status_code == 502

"""Refresh-ahead: one background refresh near the end of a token's life, callers never wait.

With the defaults a token of 3600 s fetched at t=1000 is fresh until 4540 (60 s margin)
and enters refresh-ahead at 4540 - 0.1 * 3540 = 4186.
"""

from __future__ import annotations

import threading

import pytest

from broker.config import ConfigError, load_settings
from tests.conftest import TOKEN_URL
from tests.token_helpers import FakeTokenEndpoint, ManualExecutor, install, new_account, token

REFRESH_AT = 4186.0
FRESH_UNTIL = 4540.0


@pytest.fixture
def endpoint(trackunit) -> FakeTokenEndpoint:
    fake = FakeTokenEndpoint()
    fake.register("client-a", "secret-0123456789", {"account.asset.manage", "asset.view"})
    fake.attach(trackunit)
    return fake


@pytest.fixture
def executor() -> ManualExecutor:
    return ManualExecutor()


@pytest.fixture
def client(make_app, settings, executor):
    return make_app(settings, executor=executor).test_client()


@pytest.fixture
def account(client, endpoint) -> str:
    account_id = new_account()
    install(client, account_id, "client-a")
    assert token(client, account_id).status_code == 200
    return account_id


def test_no_refresh_before_window(client, endpoint, executor, clock, account):
    clock.now = REFRESH_AT - 1

    reply = token(client, account)

    assert reply.status_code == 200
    assert executor.tasks == []
    assert len(endpoint.calls) == 1


def test_window_starts_one_refresh(client, endpoint, executor, clock, account):
    old = token(client, account).json["access_token"]
    clock.now = REFRESH_AT

    during = [token(client, account) for _ in range(5)]

    assert {reply.json["access_token"] for reply in during} == {old}
    assert len(executor.tasks) == 1
    assert len(endpoint.calls) == 1


def test_refresh_replaces_token(client, endpoint, executor, clock, account):
    old = token(client, account).json["access_token"]
    clock.now = REFRESH_AT
    token(client, account)

    executor.run_all()
    after = token(client, account)

    assert len(endpoint.calls) == 2
    assert after.json["access_token"] != old
    assert after.json["expires_in"] == 3600


def test_callers_never_wait_when_warm(client, endpoint, executor, clock, account):
    # Walk through three token lifetimes in 100 s steps, running refreshes in between.
    for _ in range(3 * 36):
        clock.advance(100)
        before = len(endpoint.calls)

        reply = token(client, account)

        assert reply.status_code == 200
        assert len(endpoint.calls) == before, f"a caller waited on a fetch at t={clock.now}"
        executor.run_all()


def test_failed_refresh_retried_later(client, endpoint, executor, clock, settings, account):
    old = token(client, account).json["access_token"]
    clock.now = REFRESH_AT
    endpoint.failure = 503
    token(client, account)
    executor.run_all()

    clock.advance(settings.token_refresh_retry_seconds - 1)
    within = [token(client, account) for _ in range(10)]
    queued_within = len(executor.tasks)
    clock.advance(1)
    token(client, account)

    assert {reply.json["access_token"] for reply in within} == {old}
    assert queued_within == 0
    assert len(executor.tasks) == 1


def test_failed_refresh_is_logged(client, endpoint, executor, clock, account, caplog):
    clock.now = REFRESH_AT
    endpoint.failure = 500
    token(client, account)

    executor.run_all()

    assert "Refreshing the token of account %s ahead of expiry failed" % account in caplog.text


def test_fraction_zero_disables(make_app, base_env, endpoint, executor, clock):
    settings = load_settings({**base_env, "TOKEN_REFRESH_AHEAD_FRACTION": "0"})
    client = make_app(settings, executor=executor).test_client()
    account = new_account()
    install(client, account, "client-a")
    token(client, account)

    clock.now = FRESH_UNTIL - 1
    token(client, account)
    queued = len(executor.tasks)
    clock.now = FRESH_UNTIL
    reply = token(client, account)

    assert queued == 0
    assert reply.status_code == 200
    assert len(endpoint.calls) == 2


def test_real_thread_pool_refreshes(make_app, settings, endpoint, clock):
    app = make_app(settings, executor=None)
    client = app.test_client()
    account = new_account()
    install(client, account, "client-a")
    old = token(client, account).json["access_token"]
    clock.now = REFRESH_AT

    served = token(client, account).json["access_token"]
    app.extensions["broker"].tokens.close()
    after = token(client, account).json["access_token"]

    assert served == old
    assert after != old
    assert len(endpoint.calls) == 2


@pytest.mark.parametrize("raw", ["1.5", "-0.1", "often"])
def test_fraction_setting_validated(base_env, raw):
    with pytest.raises(ConfigError, match="TOKEN_REFRESH_AHEAD_FRACTION"):
        load_settings({**base_env, "TOKEN_REFRESH_AHEAD_FRACTION": raw})


@pytest.fixture
def blocking_endpoint(trackunit):
    """An endpoint whose calls from number `block_from` (0-based) on wait for `release`."""
    fake = FakeTokenEndpoint()
    fake.register("client-a", "secret-0123456789", {"account.asset.manage", "asset.view"})
    fake.block_from = 1
    fake.entered = threading.Event()
    fake.release = threading.Event()

    def answer(request, context):
        if len(fake.calls) >= fake.block_from:
            fake.entered.set()
            fake.release.wait(10)
        return fake._answer(request, context)

    trackunit.register_uri("POST", TOKEN_URL, json=answer)
    yield fake
    fake.release.set()


def test_callers_served_while_refresh_blocks(make_app, settings, blocking_endpoint, clock):
    app = make_app(settings, executor=None)
    client = app.test_client()
    account = new_account()
    install(client, account, "client-a")
    old = token(client, account).json["access_token"]
    clock.now = REFRESH_AT

    first = token(client, account)
    assert blocking_endpoint.entered.wait(5)
    during = [token(client, account) for _ in range(20)]
    blocking_endpoint.release.set()
    app.extensions["broker"].tokens.close()
    after = token(client, account)

    assert first.json["access_token"] == old
    assert {reply.json["access_token"] for reply in during} == {old}
    assert after.json["access_token"] != old
    assert len(blocking_endpoint.calls) == 2


def test_cold_misses_share_one_fetch(make_app, settings, blocking_endpoint):
    app = make_app(settings, executor=ManualExecutor())
    client = app.test_client()
    account = new_account()
    install(client, account, "client-a")
    blocking_endpoint.block_from = 0
    results: list = []

    def request_token():
        results.append(token(app.test_client(), account))

    leader = threading.Thread(target=request_token)
    leader.start()
    assert blocking_endpoint.entered.wait(5)
    followers = [threading.Thread(target=request_token) for _ in range(9)]
    for thread in followers:
        thread.start()
    blocking_endpoint.release.set()
    for thread in [leader, *followers]:
        thread.join(10)

    assert [reply.status_code for reply in results] == [200] * 10
    assert len({reply.json["access_token"] for reply in results}) == 1
    assert len(blocking_endpoint.calls) == 1

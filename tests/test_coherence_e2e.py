"""Coherence across real processes: gunicorn workers and service instances on one OpenBao.

The token endpoint is the loopback stand-in from sandbox/trackunit_standin.py, and
TOKEN_COHERENCE_SECONDS is 1, so each scenario waits about a second of real time,
polling rather than sleeping a fixed amount.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import API_KEY, SCOPES
from sandbox.trackunit_standin import StandinState, start_in_thread
from tests.service_process import run_service
from tests.token_helpers import new_account

pytestmark = pytest.mark.e2e

BOUND = 1.0
# Allowed time past the bound: the Vault read and process scheduling.
SLACK = 0.5
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def standin():
    state = StandinState()
    for name in ("client-old", "client-new"):
        state.register(name, f"{name}-secret-0123456789", set(SCOPES.split()))
    server = start_in_thread(state)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def service_env(base_env, standin):
    return {
        **base_env,
        "TRACKUNIT_TOKEN_URL": standin.token_url,
        "TOKEN_COHERENCE_SECONDS": str(BOUND),
        "LOG_LEVEL": "INFO",
    }


def install(service, account_id: str, client_id: str) -> None:
    reply = requests.post(
        service.url("/appinstall"),
        json={
            "type": "INSTALLED",
            "accountId": account_id,
            "clientId": client_id,
            "clientSecret": f"{client_id}-secret-0123456789",
        },
        timeout=10,
    )
    assert reply.status_code == 200, reply.text


def fetch(service, account_id: str) -> requests.Response:
    """GET the account's token on a new connection, so any worker may handle it."""
    return requests.get(service.url(f"/token/{account_id}"), headers=AUTH, timeout=10)


def tokens_of_all_workers(service, account_id: str, workers: int) -> set[str]:
    """Request tokens in concurrent bursts until `workers` distinct ones show that every
    worker responded; return them. A single client tends to reach the same worker, so
    the bursts make the workers race for the connections.
    """
    seen: set[str] = set()
    with ThreadPoolExecutor(max_workers=16) as pool:
        for _ in range(30):
            replies = list(pool.map(lambda _: fetch(service, account_id), range(32)))
            assert {reply.status_code for reply in replies} == {200}
            seen.update(reply.json()["access_token"] for reply in replies)
            if len(seen) >= workers:
                return seen
    pytest.fail(f"only {len(seen)} of {workers} workers answered in 30 bursts")


def seconds_until(check, deadline: float) -> float:
    """Poll `check` every 50 ms until it returns True; return the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        if check():
            return time.monotonic() - started
        time.sleep(0.05)
    pytest.fail(f"the condition did not hold within {deadline:g} s")


def poll_until(moment: float, service, account_id: str) -> list[requests.Response]:
    """Request the account's token every 50 ms until time.monotonic() reaches `moment`."""
    replies = []
    while time.monotonic() < moment:
        replies.append(fetch(service, account_id))
        time.sleep(0.05)
    return replies


def test_two_workers_reinstall(service_env):
    account = new_account()
    with run_service(service_env, workers=2) as service:
        install(service, account, "client-old")
        old_tokens = tokens_of_all_workers(service, account, workers=2)

        install(service, account, "client-new")
        installed_at = time.monotonic()
        within_bound = poll_until(installed_at + BOUND + SLACK, service, account)
        new_tokens = tokens_of_all_workers(service, account, workers=2)

    assert {reply.status_code for reply in within_bound} == {200}
    assert not old_tokens & new_tokens


def test_two_instances_reinstall_and_uninstall(service_env, openbao):
    account = new_account()
    with run_service(service_env, workers=1) as first, run_service(service_env, workers=1) as second:
        install(first, account, "client-old")
        old = fetch(second, account).json()["access_token"]

        install(first, account, "client-new")
        reinstall_wait = seconds_until(
            lambda: fetch(second, account).json()["access_token"] != old, BOUND + 3
        )
        openbao.client().secrets.kv.v2.delete_latest_version_of_secret(
            path=f"{service_env['VAULT_KV_PREFIX']}/{account}", mount_point="secret"
        )
        uninstall_wait = seconds_until(lambda: fetch(second, account).status_code == 404, BOUND + 3)
        log = second.log_text()

    assert reinstall_wait <= BOUND + SLACK
    assert uninstall_wait <= BOUND + SLACK
    assert f"Account {account} changed from KV version 1 to 2" in log
    assert "secret-0123456789" not in log

"""The cold-path and stampede measurements, and seeding accounts through the install callback.

These fire a known number of requests with plain `requests` calls, because they count
and time individual requests rather than measure throughput, which is wrk's job.
"""

from __future__ import annotations

import secrets
import statistics
import threading
import time
import uuid
from dataclasses import dataclass

import hvac
import requests

SCOPES = "account.asset.manage asset.view"


@dataclass(frozen=True)
class Account:
    """A benchmark account and the OAuth client the stand-in registers for it."""

    account_id: str
    client_id: str
    client_secret: str


def make_accounts(count: int) -> list[Account]:
    """Return `count` accounts with random ids and secrets."""
    return [
        Account(
            account_id=str(uuid.uuid4()),
            client_id=f"bench-{index}-{secrets.token_hex(4)}",
            client_secret=secrets.token_urlsafe(32),
        )
        for index in range(count)
    ]


def seed(service_url: str, accounts: list[Account]) -> None:
    """Install each account by POSTing Trackunit's install callback to the service."""
    with requests.Session() as session:
        for account in accounts:
            response = session.post(
                f"{service_url}/appinstall",
                json={
                    "type": "INSTALLED",
                    "accountId": account.account_id,
                    "clientId": account.client_id,
                    "clientSecret": account.client_secret,
                },
                timeout=10,
            )
            if response.status_code != 200:
                raise RuntimeError(
                    f"Install callback for account {account.account_id} failed with "
                    f"HTTP {response.status_code}: {response.text[:200]}"
                )


@dataclass(frozen=True)
class ColdPathResult:
    """Median times in milliseconds over `accounts` first requests."""

    accounts: int
    cold_get_ms: float
    hot_get_ms: float
    vault_read_ms: float
    token_post_ms: float
    overhead_ms: float
    overhead_p90_ms: float


def measure_cold_path(
    service_url: str,
    api_key: str,
    vault: hvac.Client,
    vault_path_prefix: str,
    token_url: str,
    accounts: list[Account],
) -> ColdPathResult:
    """Time each account's first GET /token against its own Vault read plus token POST.

    A second GET /token right after the first, now a cache hit on the same connection
    and so the same worker, shows how much of the overhead any request costs.

    The direct Vault read and token POST use the same clients a worker uses (hvac and a
    keep-alive requests session). The order alternates per account, so whichever goes
    second does not always find Vault's cache warm.
    """
    cold, hot, reads, posts, overheads = [], [], [], [], []
    headers = {"Authorization": f"Bearer {api_key}"}
    with requests.Session() as service, requests.Session() as upstream:
        _warm_up(service, upstream, vault, service_url, token_url)
        for index, account in enumerate(accounts):
            if index % 2:
                read_ms, post_ms = _direct(vault, vault_path_prefix, upstream, token_url, account)
                get_ms = _timed_get(service, service_url, headers, account)
            else:
                get_ms = _timed_get(service, service_url, headers, account)
                read_ms, post_ms = _direct(vault, vault_path_prefix, upstream, token_url, account)
            cold.append(get_ms)
            hot.append(_timed_get(service, service_url, headers, account))
            reads.append(read_ms)
            posts.append(post_ms)
            overheads.append(get_ms - read_ms - post_ms)

    return ColdPathResult(
        accounts=len(accounts),
        cold_get_ms=statistics.median(cold),
        hot_get_ms=statistics.median(hot),
        vault_read_ms=statistics.median(reads),
        token_post_ms=statistics.median(posts),
        overhead_ms=statistics.median(overheads),
        overhead_p90_ms=statistics.quantiles(overheads, n=10)[-1] if len(overheads) > 1 else overheads[0],
    )


def _warm_up(
    service: requests.Session,
    upstream: requests.Session,
    vault: hvac.Client,
    service_url: str,
    token_url: str,
) -> None:
    """Open the keep-alive connections first, so no timed call pays for a TCP connect."""
    service.get(f"{service_url}/healthz", timeout=10)
    upstream.get(token_url.replace("/apptoken", "/stats"), timeout=10)
    vault.sys.read_health_status(method="GET")


def _timed_get(
    session: requests.Session, service_url: str, headers: dict[str, str], account: Account
) -> float:
    started = time.perf_counter()
    response = session.get(f"{service_url}/token/{account.account_id}", headers=headers, timeout=30)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"GET /token for account {account.account_id} failed with HTTP {response.status_code}")
    return elapsed


def _direct(
    vault: hvac.Client,
    vault_path_prefix: str,
    upstream: requests.Session,
    token_url: str,
    account: Account,
) -> tuple[float, float]:
    """Return the ms of one Vault read and one token POST for the account, timed apart."""
    started = time.perf_counter()
    vault.secrets.kv.v2.read_secret_version(
        path=f"{vault_path_prefix}/{account.account_id}",
        mount_point="secret",
        raise_on_deleted_version=True,
    )
    read_ms = (time.perf_counter() - started) * 1000

    started = time.perf_counter()
    response = upstream.post(
        token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": account.client_id,
            "client_secret": account.client_secret,
            "scope": SCOPES,
        },
        headers={"Accept": "application/json"},
        timeout=10,
    )
    post_ms = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return read_ms, post_ms


@dataclass(frozen=True)
class StampedeResult:
    """One stampede: `concurrency` simultaneous first requests for one account."""

    concurrency: int
    succeeded: int
    upstream_calls: int


def stampede(
    service_url: str, api_key: str, stats_url: str, account: Account, concurrency: int
) -> StampedeResult:
    """Fire `concurrency` GET /token for one cold account at once and count token POSTs.

    Each thread opens its own connection first and then waits at a barrier, so the
    requests leave together and gunicorn spreads the connections over its workers.
    """
    before = _token_requests(stats_url)
    barrier = threading.Barrier(concurrency)
    statuses: list[int] = []
    lock = threading.Lock()
    url = f"{service_url}/token/{account.account_id}"
    headers = {"Authorization": f"Bearer {api_key}"}

    def fire() -> None:
        with requests.Session() as session:
            session.get(f"{service_url}/healthz", timeout=10)
            barrier.wait(timeout=30)
            status = session.get(url, headers=headers, timeout=30).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=fire) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    return StampedeResult(
        concurrency=concurrency,
        succeeded=sum(1 for status in statuses if status == 200),
        upstream_calls=_token_requests(stats_url) - before,
    )


def _token_requests(stats_url: str) -> int:
    return int(requests.get(stats_url, timeout=10).json()["token_requests"])

"""Work the token cache does outside its lock: fetches, background refreshes, Vault checks.

TokenWorker runs a fetch or a KV version check for one key or account, applies the
result to the TokenTable under its lock, and wakes every thread waiting on that work.
Background work goes to an executor (a small thread pool in production, a manual or
synchronous one in tests). It is queued only after the lock is released, so a
synchronous executor cannot deadlock.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

from . import metrics
from .credentials import CredentialStore
from .errors import BrokerError
from .token_fetch import FetchOutcome, TokenFetcher
from .token_state import AccountFacts, CachedToken, CacheKey, Flight
from .token_table import TokenTable

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CheckStep:
    """A KV version check to run (leader) or to wait for."""

    flight: Flight
    leader: bool
    epoch: int


class TokenWorker:
    """Runs fetches and version checks and applies their results to the table."""

    def __init__(
        self,
        table: TokenTable,
        fetcher: TokenFetcher,
        store: CredentialStore,
        executor: Executor,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._table = table
        self._fetcher = fetcher
        self._store = store
        self._executor = executor
        self._clock = clock
        self._lock = table.lock
        self._retry = table.retry_seconds

    def close(self) -> None:
        """Stop the background workers after the work already queued."""
        self._executor.shutdown(wait=True)

    def run_fetch(
        self, key: CacheKey, flight: Flight, epoch: int, known: AccountFacts | None
    ) -> FetchOutcome:
        """Fetch for `key`, apply the outcome and wake the waiters.

        Errors of the fetch, even unexpected ones, go into the outcome and the flight.
        """
        try:
            outcome = self._fetcher.fetch(key[0], key[1], known)
        except Exception:
            log.exception("Token fetch for account %s failed unexpectedly", key[0])
            outcome = FetchOutcome(
                read_started=self._clock(),
                error=BrokerError("An unexpected error occurred while fetching the token"),
            )

        with self._lock:
            self._table.apply_fetch(key, epoch, outcome, self._clock())
            flight.token = outcome.token
            flight.error = outcome.error
            if self._table.flights.get(key) is flight:
                del self._table.flights[key]
        flight.done.set()
        return outcome

    def _refresh_in_background(
        self, key: CacheKey, flight: Flight, epoch: int, known: AccountFacts | None
    ) -> None:
        outcome = self.run_fetch(key, flight, epoch, known)
        metrics.record_refresh("ok" if outcome.error is None else outcome.error.code)
        if outcome.error is not None:
            log.warning(
                "Refreshing the token of account %s ahead of expiry failed (%s); "
                "trying again in %g s at the earliest",
                key[0],
                outcome.error.code,
                self._retry,
            )

    def start_refresh(
        self,
        key: CacheKey,
        entry: CachedToken,
        facts: AccountFacts,
        now: float,
        background: list[Callable[[], None]],
    ) -> None:
        """Queue one background refresh of `key` unless one runs or must wait. Lock held."""
        table = self._table
        if key in table.flights or now < entry.retry_at or now < facts.rejected_until:
            return
        flight = table.flights[key] = Flight()
        epoch = table.epoch(key[0])
        known = replace(facts)
        background.append(partial(self._refresh_in_background, key, flight, epoch, known))

    def check_step(self, account_id: str) -> CheckStep:
        """Join the account's version check in flight, or register one to lead. Lock held."""
        flight = self._table.checks.get(account_id)
        leader = flight is None
        if leader:
            flight = self._table.checks[account_id] = Flight()
        return CheckStep(flight, leader, self._table.epoch(account_id))

    def start_check(self, account_id: str, background: list[Callable[[], None]]) -> None:
        """Queue a background version check while Vault is failing. Lock held."""
        facts = self._table.accounts.get(account_id)
        if account_id in self._table.checks or facts is None:
            return
        if self._clock() < facts.revalidate_retry_at:
            return
        step = self.check_step(account_id)
        background.append(partial(self.check, account_id, step.flight, step.epoch))

    def check(self, account_id: str, flight: Flight, epoch: int) -> None:
        """Read the account's KV version and drop its entries if it changed.

        Errors of the read, even unexpected ones, are logged and put into the flight.
        """
        started = self._clock()
        version: int | None = None
        error: BrokerError | None = None
        try:
            version = self._store.current_version(account_id)
        except BrokerError as exc:
            error = exc
        except Exception:
            log.exception("Version check for account %s failed unexpectedly", account_id)
            error = BrokerError("An unexpected error occurred while checking the account")
        if error is not None:
            log.warning(
                "Could not check account %s in Vault (%s); serving its cached tokens while "
                "they are valid and checking again in %g s",
                account_id,
                error.code,
                self._retry,
            )

        with self._lock:
            self._table.apply_check(account_id, epoch, version, error, started, self._clock())
            if self._table.checks.get(account_id) is flight:
                del self._table.checks[account_id]
        flight.error = error
        flight.done.set()

    def submit(self, task: Callable[[], None]) -> None:
        """Queue background work. Call without the lock: a synchronous executor runs it here."""
        try:
            self._executor.submit(task)
        except RuntimeError:
            # The executor is shut down (the process is exiting): run it here, so the
            # flight it owns still completes and its waiters wake up.
            task()

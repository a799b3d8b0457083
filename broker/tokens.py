"""Per-process cache of access tokens with single-flight fetching, refresh-ahead and coherence.

Keys: an entry is keyed by (accountId, scope set), where the scope set is a canonical
tuple for `?scope=` requests and None for "every scope the account granted". A narrow
and a wide token of one account live side by side, each with its own expiry and fetch.

Expiry rules (all on the injected monotonic clock, measured from the moment the token
was requested, so network time shortens a lifetime rather than lengthening it):
- `fresh_until = expires_at - TOKEN_EXPIRY_MARGIN` ends normal serving.
- In the last TOKEN_REFRESH_AHEAD_FRACTION of the time before `fresh_until`, the first
  request to notice starts one background refresh while every caller keeps getting the
  cached token. A failed refresh is tried again after TOKEN_REFRESH_RETRY_SECONDS.
- Past `fresh_until` a caller fetches (or joins the fetch in flight). When that fails
  because Vault or the token endpoint is down, the old token is served while it is
  still valid, with its true `expires_in`. The cache drops an entry at `expires_at`, so
  an expired token is never served.

Coherence: other processes may store a new installation in Vault. Every entry remembers
the KV version it was minted from. The first request for an account more than
TOKEN_COHERENCE_SECONDS after the last Vault read of that account reads the metadata
again (other callers wait for that one read). A new version or a deleted account drops
the account's entries and everything learned about it. Every fetch reads the credentials
and so counts as such a read. If Vault fails, cached tokens keep being served and the
check is retried in the background every TOKEN_REFRESH_RETRY_SECONDS.

Concurrency: one lock guards the cache, the account facts and the tables of work in
flight. It is held only for dictionary work, never during a Vault or network call.
The hot path (a fresh hit) takes the lock once and does one cache lookup.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

from cachetools import LRUCache, TLRUCache

from .credentials import CredentialStore
from .errors import (
    BrokerError,
    InvalidRequest,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    VaultUnavailable,
)
from .scopes import ScopePolicy, ScopeSet
from .token_fetch import FetchOutcome, TokenFetcher, scope_not_granted
from .token_state import AccountFacts, CachedToken, CacheKey, Flight, TokenGrant, grant_of
from .trackunit import TokenClient

log = logging.getLogger(__name__)

# Re-exported for callers that imported them from here.
__all__ = ["CacheKey", "CachedToken", "TokenBroker", "TokenGrant"]


@dataclass(slots=True)
class _Fetch:
    """Decision: fetch a token (leader) or wait for the fetch in flight."""

    flight: Flight
    leader: bool
    epoch: int
    known: AccountFacts | None
    fallback: CachedToken | None


@dataclass(slots=True)
class _Check:
    """Decision: read the account's KV version now (leader) or wait for that read."""

    flight: Flight
    leader: bool
    epoch: int


class TokenBroker:
    """Serves access tokens per account and scope set from the cache, fetching on a miss."""

    def __init__(
        self,
        store: CredentialStore,
        client: TokenClient,
        *,
        scopes: ScopePolicy,
        expiry_margin: float,
        max_size: int,
        wait_timeout: float,
        refresh_ahead_fraction: float = 0.1,
        refresh_retry_seconds: float = 5.0,
        coherence_seconds: float = 30.0,
        invalid_client_backoff: float = 60.0,
        refresh_workers: int = 4,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.scopes = scopes
        self._store = store
        self._fetcher = TokenFetcher(
            store,
            client,
            scopes,
            expiry_margin=expiry_margin,
            refresh_ahead_fraction=refresh_ahead_fraction,
            clock=clock,
        )
        self._wait_timeout = wait_timeout
        self._retry = refresh_retry_seconds
        self._coherence = coherence_seconds
        self._backoff = invalid_client_backoff
        self._executor = executor or ThreadPoolExecutor(
            max_workers=refresh_workers, thread_name_prefix="token-refresh"
        )
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: TLRUCache[CacheKey, CachedToken] = TLRUCache(
            maxsize=max_size, ttu=_expiry_of, timer=clock
        )
        self._flights: dict[CacheKey, Flight] = {}
        self._checks: dict[str, Flight] = {}
        self._accounts: LRUCache[str, AccountFacts] = LRUCache(maxsize=max_size)
        # Counts evictions per account so a fetch or check that started before a
        # re-install does not cache a token minted from the replaced credentials.
        self._evictions: LRUCache[str, int] = LRUCache(maxsize=max_size)

    def get(
        self,
        account_id: str,
        scopes: ScopeSet | None = None,
        *,
        min_ttl: int = 0,
        force_refresh: bool = False,
    ) -> TokenGrant:
        """Return a token for the account with at least `min_ttl` seconds left.

        `scopes` is a canonical set from ScopePolicy.parse_request, or None for every
        scope the account granted. force_refresh skips the cached entry, for a caller
        whose token Trackunit rejected. Raises NotInstalled, ScopeNotGranted,
        InvalidRequest (min_ttl out of reach), VaultUnavailable or an UpstreamError.
        """
        key: CacheKey = (account_id, scopes)
        now = self._clock()
        with self._lock:
            entry = self._cache.get(key)
            if (
                entry is not None
                and now < entry.quiet_until
                and entry.expires_at - now >= min_ttl
                and not force_refresh
            ):
                return grant_of(entry, now, cache_hit=True)
        return self._get_slow(key, min_ttl, force_refresh)

    def evict(self, account_id: str) -> int:
        """Drop every cached token and learned fact of the account; return how many tokens."""
        with self._lock:
            return self._evict_locked(account_id)

    def close(self) -> None:
        """Stop the background workers after the refreshes already started."""
        self._executor.shutdown(wait=True)

    def _get_slow(self, key: CacheKey, min_ttl: int, force_refresh: bool) -> TokenGrant:
        """Serve, check coherence, or fetch, as _decide says; runs at most one check."""
        checked = False
        while True:
            now = self._clock()
            background: list[Callable[[], None]] = []
            with self._lock:
                step = self._decide(key, now, min_ttl, force_refresh, checked, background)
            for task in background:
                self._submit(task)

            if isinstance(step, TokenGrant):
                return step
            if isinstance(step, BrokerError):
                raise step
            if isinstance(step, _Check):
                checked = True
                if step.leader:
                    self._check(key[0], step.flight, step.epoch)
                else:
                    step.flight.done.wait(self._wait_timeout)
                continue
            return self._await_fetch(key, step, min_ttl)

    def _decide(
        self,
        key: CacheKey,
        now: float,
        min_ttl: int,
        force_refresh: bool,
        checked: bool,
        background: list[Callable[[], None]],
    ) -> TokenGrant | BrokerError | _Check | _Fetch:
        """Choose what a request that missed the hot path does. Call with the lock held."""
        account_id, scopes = key
        facts = self._accounts.get(account_id)
        entry = self._cache.get(key)
        if entry is not None and facts is None:
            # The facts fell out of their LRU; the token was minted right after a read.
            facts = self._accounts[account_id] = AccountFacts(entry.kv_version, entry.issued_at)
        if entry is not None and entry.kv_version != facts.kv_version:
            self._cache.pop(key, None)
            entry = None

        usable = entry is not None and not force_refresh and entry.expires_at - now >= min_ttl
        if facts is not None and not checked and self._facts_expired(facts, now):
            # Check only when the answer would come from what this process remembers.
            if usable or facts.refused or facts.rejection is not None:
                if not facts.check_failing:
                    return self._check_step(account_id)
                self._start_check(account_id, background)

        fallback = None
        if usable:
            if now < entry.fresh_until:
                if now >= entry.refresh_at:
                    self._start_refresh(key, entry, facts, now, background)
                entry.quiet_until = self._quiet_until(entry, facts)
                return grant_of(entry, now, cache_hit=True)
            if now < entry.retry_at:
                # A fetch failed moments ago; the token is still valid.
                return grant_of(entry, now, cache_hit=True)
            fallback = entry
        elif entry is not None and not force_refresh:
            if entry.lifetime < min_ttl:
                return _min_ttl_out_of_reach(account_id, min_ttl, entry.lifetime, recent=False)
            if now - entry.issued_at < self._retry:
                return _min_ttl_out_of_reach(account_id, min_ttl, entry.lifetime, recent=True)

        if facts is not None and facts.rejected_until > now:
            return self._fail_fast(account_id, facts, now)
        if scopes is not None and facts is not None and facts.refused.intersection(scopes):
            return scope_not_granted(account_id, scopes, facts.refused)

        flight = self._flights.get(key)
        leader = flight is None
        if leader:
            flight = self._flights[key] = Flight()
        known = replace(facts) if facts is not None else None
        return _Fetch(flight, leader, self._evictions.get(account_id, 0), known, fallback)

    def _await_fetch(self, key: CacheKey, step: _Fetch, min_ttl: int) -> TokenGrant:
        """Run or wait for the fetch, then serve its token or fall back to the old one."""
        account_id = key[0]
        if step.leader:
            self._run_fetch(key, step.flight, step.epoch, step.known)
        elif not step.flight.done.wait(self._wait_timeout):
            log.error(
                "Waited %.0f s for another token fetch for account %s", self._wait_timeout, account_id
            )
            raise UpstreamTimeout("Timed out waiting for a token fetch already in progress")

        now = self._clock()
        error = step.flight.error
        if error is None:
            token = step.flight.token
            if token.expires_at - now < min_ttl:
                raise _min_ttl_out_of_reach(account_id, min_ttl, token.lifetime, recent=True)
            return grant_of(token, now, cache_hit=False)

        fallback = step.fallback
        if (
            fallback is not None
            and _may_fall_back(error)
            and fallback.expires_at > now
            and fallback.expires_at - now >= min_ttl
        ):
            log.warning(
                "Serving the cached token of account %s with %d s left, because fetching "
                "a new one failed: %s",
                account_id,
                int(fallback.expires_at - now),
                error.message,
            )
            return grant_of(fallback, now, cache_hit=True)
        raise error

    def _run_fetch(
        self, key: CacheKey, flight: Flight, epoch: int, known: AccountFacts | None
    ) -> FetchOutcome:
        """Fetch for `key`, apply the outcome and wake the waiters. Never raises."""
        try:
            outcome = self._fetcher.fetch(key[0], key[1], known)
        except Exception:
            log.exception("Token fetch for account %s failed unexpectedly", key[0])
            outcome = FetchOutcome(
                read_started=self._clock(),
                error=BrokerError("An unexpected error occurred while fetching the token"),
            )

        with self._lock:
            self._apply_fetch(key, epoch, outcome)
            flight.token = outcome.token
            flight.error = outcome.error
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.done.set()
        return outcome

    def _apply_fetch(self, key: CacheKey, epoch: int, outcome: FetchOutcome) -> None:
        """Cache the fetched tokens and learned facts if still current. Call with the lock held."""
        account_id = key[0]
        now = self._clock()
        if self._evictions.get(account_id, 0) != epoch:
            return
        if outcome.not_installed:
            dropped = self._evict_locked(account_id)
            if dropped:
                log.info("Account %s has no credentials any more; dropped %d cached token(s)", account_id, dropped)
            return

        if outcome.error is not None and outcome.rejected is None:
            entry = self._cache.get(key)
            facts = self._accounts.get(account_id)
            if entry is not None and facts is not None:
                entry.retry_at = now + self._retry
                entry.quiet_until = self._quiet_until(entry, facts)
        if outcome.version is None or not self._observe_version(
            account_id, outcome.version, outcome.read_started
        ):
            return

        facts = self._accounts[account_id]
        if outcome.refused is not None:
            facts.refused = outcome.refused
        if outcome.rejected is not None and self._backoff > 0:
            facts.rejected_until = now + self._backoff
            facts.rejection = outcome.rejected
        elif outcome.token is not None:
            facts.rejected_until = 0.0
            facts.rejection = None

        for scopes, token in outcome.extra.items():
            self._cache_token((account_id, scopes), token, facts, now)
        if outcome.token is not None:
            self._cache_token(key, outcome.token, facts, now)

    def _cache_token(self, key: CacheKey, token: CachedToken, facts: AccountFacts, now: float) -> None:
        if token.fresh_until > now:
            token.quiet_until = self._quiet_until(token, facts)
            self._cache[key] = token

    def _refresh_in_background(
        self, key: CacheKey, flight: Flight, epoch: int, known: AccountFacts | None
    ) -> None:
        outcome = self._run_fetch(key, flight, epoch, known)
        if outcome.error is not None:
            log.warning(
                "Refreshing the token of account %s ahead of expiry failed (%s); "
                "trying again in %g s at the earliest",
                key[0],
                outcome.error.code,
                self._retry,
            )

    def _start_refresh(
        self,
        key: CacheKey,
        entry: CachedToken,
        facts: AccountFacts,
        now: float,
        background: list[Callable[[], None]],
    ) -> None:
        """Queue one background refresh of `key` unless one runs or must wait. Lock held."""
        if key in self._flights or now < entry.retry_at or now < facts.rejected_until:
            return
        flight = self._flights[key] = Flight()
        epoch = self._evictions.get(key[0], 0)
        background.append(partial(self._refresh_in_background, key, flight, epoch, replace(facts)))

    def _check_step(self, account_id: str) -> _Check:
        flight = self._checks.get(account_id)
        leader = flight is None
        if leader:
            flight = self._checks[account_id] = Flight()
        return _Check(flight, leader, self._evictions.get(account_id, 0))

    def _start_check(self, account_id: str, background: list[Callable[[], None]]) -> None:
        """Queue a background version check while Vault is failing. Lock held."""
        facts = self._accounts.get(account_id)
        if account_id in self._checks or facts is None or self._clock() < facts.revalidate_retry_at:
            return
        step = self._check_step(account_id)
        background.append(partial(self._check, account_id, step.flight, step.epoch))

    def _check(self, account_id: str, flight: Flight, epoch: int) -> None:
        """Read the account's KV version and drop its entries if it changed. Never raises."""
        started = self._clock()
        try:
            version = self._store.current_version(account_id)
        except BrokerError as exc:
            version = None
            error: BrokerError | None = exc
            log.warning(
                "Could not check account %s in Vault (%s); serving its cached tokens while "
                "they are valid and checking again in %g s",
                account_id,
                exc.code,
                self._retry,
            )
        else:
            error = None

        with self._lock:
            if self._evictions.get(account_id, 0) == epoch:
                facts = self._accounts.get(account_id)
                if error is not None and facts is not None:
                    facts.check_failing = True
                    facts.revalidate_retry_at = self._clock() + self._retry
                elif error is None and version is None:
                    dropped = self._evict_locked(account_id)
                    log.info(
                        "Account %s has no credentials in Vault any more; dropped %d cached token(s)",
                        account_id,
                        dropped,
                    )
                elif error is None:
                    self._observe_version(account_id, version, started)
            if self._checks.get(account_id) is flight:
                del self._checks[account_id]
        flight.error = error
        flight.done.set()

    def _observe_version(self, account_id: str, version: int, read_started: float) -> bool:
        """Record a KV version read at `read_started`; return False if a newer read won. Lock held."""
        facts = self._accounts.get(account_id)
        if facts is None:
            self._accounts[account_id] = AccountFacts(version, read_started)
            return True
        if facts.kv_version == version:
            facts.validated_at = max(facts.validated_at, read_started)
            facts.check_failing = False
            facts.revalidate_retry_at = 0.0
            return True
        if read_started < facts.validated_at:
            return False

        stale = []
        for key in [key for key in self._cache.keys() if key[0] == account_id]:
            entry = self._cache.get(key)
            if entry is not None and entry.kv_version != version:
                stale.append(key)
                self._cache.pop(key, None)
        self._accounts[account_id] = AccountFacts(version, read_started)
        log.info(
            "Account %s changed from KV version %d to %d; dropped %d cached token(s) and "
            "what was learned about its scopes",
            account_id,
            facts.kv_version,
            version,
            len(stale),
        )
        return True

    def _evict_locked(self, account_id: str) -> int:
        self._evictions[account_id] = self._evictions.get(account_id, 0) + 1
        keys = [key for key in self._cache.keys() if key[0] == account_id]
        for key in keys:
            self._cache.pop(key, None)
        for key in [key for key in self._flights if key[0] == account_id]:
            del self._flights[key]
        self._checks.pop(account_id, None)
        self._accounts.pop(account_id, None)
        return len(keys)

    def _facts_expired(self, facts: AccountFacts, now: float) -> bool:
        return now >= facts.validated_at + self._coherence and now >= facts.revalidate_retry_at

    def _quiet_until(self, entry: CachedToken, facts: AccountFacts) -> float:
        """Return when the hot path must next look at the entry's refresh or coherence."""
        refresh = max(entry.refresh_at, entry.retry_at)
        check = max(facts.validated_at + self._coherence, facts.revalidate_retry_at)
        return min(refresh, check, entry.fresh_until)

    def _fail_fast(self, account_id: str, facts: AccountFacts, now: float) -> UpstreamRejected:
        rejection = facts.rejection
        oauth_error = rejection.details.get("oauth_error") if rejection else "invalid_client"
        remaining = facts.rejected_until - now
        error = UpstreamRejected(
            f"Trackunit's token endpoint rejected the stored credentials of account {account_id} "
            f"with '{oauth_error}'; the service asks again in {remaining:.0f} s, or at once "
            "after the account installs the app again",
            oauth_error=oauth_error,
            accountId=account_id,
        )
        error.retry_after = remaining
        return error

    def _submit(self, task: Callable[[], None]) -> None:
        try:
            self._executor.submit(task)
        except RuntimeError:
            # The executor is shut down (the process is exiting): run it here, so the
            # flight it owns still completes and its waiters wake up.
            task()


def _may_fall_back(error: BrokerError) -> bool:
    """Tell whether a failed fetch may be answered with the still-valid cached token."""
    if isinstance(error, UpstreamRejected):
        return False
    return isinstance(error, (VaultUnavailable, UpstreamError))


def _min_ttl_out_of_reach(
    account_id: str, min_ttl: int, lifetime: float, *, recent: bool
) -> InvalidRequest:
    """Build the 400 for a min_ttl that a new token would not meet either."""
    reason = "and the cached one was issued moments ago" if recent else "from issue"
    return InvalidRequest(
        f"min_ttl={min_ttl} cannot be met: tokens for account {account_id} last "
        f"{int(lifetime)} s {reason}; ask for a smaller min_ttl",
        field="min_ttl",
    )


def _expiry_of(_key: CacheKey, entry: CachedToken, _now: float) -> float:
    return entry.expires_at

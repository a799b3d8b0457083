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
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable

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
from .token_fetch import TokenFetcher, scope_not_granted
from .token_state import AccountFacts, CachedToken, CacheKey, Flight, TokenGrant, grant_of
from .token_table import TokenTable
from .token_work import CheckStep, TokenWorker
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


class TokenBroker:
    """Serves access tokens per account and scope set from the cache, fetching on a miss."""

    def __init__(
        self,
        store: CredentialStore,
        client: TokenClient,
        *,
        scopes: ScopePolicy | tuple[str, ...],
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
        if not isinstance(scopes, ScopePolicy):
            scopes = ScopePolicy(tuple(scopes))
        self.scopes = scopes
        fetcher = TokenFetcher(
            store,
            client,
            scopes,
            expiry_margin=expiry_margin,
            refresh_ahead_fraction=refresh_ahead_fraction,
            clock=clock,
        )
        self._wait_timeout = wait_timeout
        self._retry = refresh_retry_seconds
        self._clock = clock
        self._table = TokenTable(
            max_size=max_size,
            retry_seconds=refresh_retry_seconds,
            coherence_seconds=coherence_seconds,
            invalid_client_backoff=invalid_client_backoff,
            clock=clock,
        )
        self._worker = TokenWorker(
            self._table,
            fetcher,
            store,
            executor
            or ThreadPoolExecutor(max_workers=refresh_workers, thread_name_prefix="token-refresh"),
            clock=clock,
        )
        # The hot path reads these two without going through the table.
        self._lock = self._table.lock
        self._cache = self._table.cache

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
            return self._table.evict(account_id)

    def close(self) -> None:
        """Stop the background workers after the refreshes already started."""
        self._worker.close()

    def _get_slow(self, key: CacheKey, min_ttl: int, force_refresh: bool) -> TokenGrant:
        """Serve, check coherence or fetch, as _decide chooses, with at most one check."""
        checked = False
        while True:
            now = self._clock()
            background: list[Callable[[], None]] = []
            with self._lock:
                step = self._decide(key, now, min_ttl, force_refresh, checked, background)
            for task in background:
                self._worker.submit(task)

            if isinstance(step, TokenGrant):
                return step
            if isinstance(step, BrokerError):
                raise step
            if isinstance(step, CheckStep):
                checked = True
                if step.leader:
                    self._worker.check(key[0], step.flight, step.epoch)
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
    ) -> TokenGrant | BrokerError | CheckStep | _Fetch:
        """Choose what a request that missed the hot path does. Call with the lock held."""
        account_id, scopes = key
        table = self._table
        facts = table.accounts.get(account_id)
        entry = table.cache.get(key)
        if entry is not None and facts is None:
            # The facts fell out of their LRU; the token was minted right after a read.
            facts = table.accounts[account_id] = AccountFacts(entry.kv_version, entry.issued_at)
        if entry is not None and entry.kv_version != facts.kv_version:
            table.cache.pop(key, None)
            entry = None

        usable = entry is not None and not force_refresh and entry.expires_at - now >= min_ttl
        if facts is not None and not checked and table.facts_expired(facts, now):
            # Check only when the response would come from what this process remembers.
            if usable or facts.refused or facts.rejection is not None:
                if not facts.check_failing:
                    return self._worker.check_step(account_id)
                self._worker.start_check(account_id, background)

        fallback = None
        if usable:
            if now < entry.fresh_until:
                if now >= entry.refresh_at:
                    self._worker.start_refresh(key, entry, facts, now, background)
                entry.quiet_until = table.quiet_until(entry, facts)
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

        flight = table.flights.get(key)
        leader = flight is None
        if leader:
            flight = table.flights[key] = Flight()
        known = replace(facts) if facts is not None else None
        return _Fetch(flight, leader, table.epoch(account_id), known, fallback)

    def _await_fetch(self, key: CacheKey, step: _Fetch, min_ttl: int) -> TokenGrant:
        """Run or wait for the fetch, then serve its token or fall back to the old one."""
        account_id = key[0]
        if step.leader:
            self._worker.run_fetch(key, step.flight, step.epoch, step.known)
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


def _may_fall_back(error: BrokerError) -> bool:
    """Tell whether the still-valid cached token may stand in for a failed fetch."""
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

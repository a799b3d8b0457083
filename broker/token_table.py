"""The token cache's shared state and the rules that change it.

TokenTable holds the cache of tokens, what is known per account, the work in flight,
and the one lock that guards all of them. Every method except the constructor must be
called with `lock` held. None of them calls Vault or the network.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from cachetools import LRUCache, TLRUCache

from .errors import BrokerError
from .token_fetch import FetchOutcome
from .token_state import AccountFacts, CachedToken, CacheKey, Flight

log = logging.getLogger(__name__)


class TokenTable:
    """Cached tokens, account facts and in-flight work of one process, under one lock."""

    def __init__(
        self,
        *,
        max_size: int,
        retry_seconds: float,
        coherence_seconds: float,
        invalid_client_backoff: float,
        clock: Callable[[], float],
    ):
        self.lock = threading.Lock()
        self.cache: TLRUCache[CacheKey, CachedToken] = TLRUCache(
            maxsize=max_size, ttu=_expiry_of, timer=clock
        )
        self.accounts: LRUCache[str, AccountFacts] = LRUCache(maxsize=max_size)
        self.flights: dict[CacheKey, Flight] = {}
        self.checks: dict[str, Flight] = {}
        # Counts evictions per account so a fetch or check that started before a
        # re-install does not cache a token minted from the replaced credentials.
        self.evictions: LRUCache[str, int] = LRUCache(maxsize=max_size)
        self.retry_seconds = retry_seconds
        self.coherence_seconds = coherence_seconds
        self._backoff = invalid_client_backoff

    def epoch(self, account_id: str) -> int:
        """Return the account's eviction count, to compare when work in flight ends."""
        return self.evictions.get(account_id, 0)

    def evict(self, account_id: str) -> int:
        """Drop the account's tokens, facts and work in flight; return how many tokens."""
        self.evictions[account_id] = self.epoch(account_id) + 1
        keys = [key for key in self.cache.keys() if key[0] == account_id]
        for key in keys:
            self.cache.pop(key, None)
        for key in [key for key in self.flights if key[0] == account_id]:
            del self.flights[key]
        self.checks.pop(account_id, None)
        self.accounts.pop(account_id, None)
        return len(keys)

    def facts_expired(self, facts: AccountFacts, now: float) -> bool:
        """Tell whether the account's facts are older than TOKEN_COHERENCE_SECONDS and due."""
        return (
            now >= facts.validated_at + self.coherence_seconds
            and now >= facts.revalidate_retry_at
        )

    def quiet_until(self, entry: CachedToken, facts: AccountFacts) -> float:
        """Return when the hot path must next look at the entry's refresh or coherence."""
        refresh = max(entry.refresh_at, entry.retry_at)
        check = max(facts.validated_at + self.coherence_seconds, facts.revalidate_retry_at)
        return min(refresh, check, entry.fresh_until)

    def apply_fetch(self, key: CacheKey, epoch: int, outcome: FetchOutcome, now: float) -> None:
        """Cache the fetched tokens and learned facts unless the account changed meanwhile."""
        account_id = key[0]
        if self.epoch(account_id) != epoch:
            return
        if outcome.not_installed:
            dropped = self.evict(account_id)
            if dropped:
                log.info(
                    "Account %s has no credentials any more; dropped %d cached token(s)",
                    account_id,
                    dropped,
                )
            return

        if outcome.error is not None and outcome.rejected is None:
            self._hold_back_refresh(key, now)
        if outcome.version is None or not self.observe_version(
            account_id, outcome.version, outcome.read_started
        ):
            return

        facts = self.accounts[account_id]
        if outcome.refused is not None:
            facts.refused = outcome.refused
        if outcome.rejected is not None and self._backoff > 0:
            facts.rejected_until = now + self._backoff
            facts.rejection = outcome.rejected
            # The first rejection carries Retry-After, as the fail-fast ones that follow it do.
            outcome.rejected.retry_after = self._backoff
        elif outcome.token is not None:
            facts.rejected_until = 0.0
            facts.rejection = None

        for scopes, token in outcome.extra.items():
            self._cache_token((account_id, scopes), token, facts, now)
        if outcome.token is not None:
            self._cache_token(key, outcome.token, facts, now)

    def apply_check(
        self,
        account_id: str,
        epoch: int,
        version: int | None,
        error: BrokerError | None,
        started: float,
        now: float,
    ) -> None:
        """Apply a KV metadata read: record the version, drop a deleted account, or note a failure."""
        if self.epoch(account_id) != epoch:
            return
        facts = self.accounts.get(account_id)
        if error is not None:
            if facts is not None:
                facts.check_failing = True
                facts.revalidate_retry_at = now + self.retry_seconds
        elif version is None:
            dropped = self.evict(account_id)
            log.info(
                "Account %s has no credentials in Vault any more; dropped %d cached token(s)",
                account_id,
                dropped,
            )
        else:
            self.observe_version(account_id, version, started)

    def observe_version(self, account_id: str, version: int, read_started: float) -> bool:
        """Record a KV version read at `read_started`; return False if a newer read won.

        A version other than the known one drops the account's tokens of other versions
        and everything learned about it, because a re-install happened somewhere.
        """
        facts = self.accounts.get(account_id)
        if facts is None:
            self.accounts[account_id] = AccountFacts(version, read_started)
            return True
        if facts.kv_version == version:
            facts.validated_at = max(facts.validated_at, read_started)
            facts.check_failing = False
            facts.revalidate_retry_at = 0.0
            return True
        if read_started < facts.validated_at:
            return False

        stale = []
        for key in [key for key in self.cache.keys() if key[0] == account_id]:
            entry = self.cache.get(key)
            if entry is not None and entry.kv_version != version:
                stale.append(key)
                self.cache.pop(key, None)
        self.accounts[account_id] = AccountFacts(version, read_started)
        log.info(
            "Account %s changed from KV version %d to %d; dropped %d cached token(s) and "
            "what was learned about its scopes",
            account_id,
            facts.kv_version,
            version,
            len(stale),
        )
        return True

    def _hold_back_refresh(self, key: CacheKey, now: float) -> None:
        """Keep serving the cached token of `key` for a while after a fetch failed."""
        entry = self.cache.get(key)
        facts = self.accounts.get(key[0])
        if entry is not None and facts is not None:
            entry.retry_at = now + self.retry_seconds
            entry.quiet_until = self.quiet_until(entry, facts)

    def _cache_token(
        self, key: CacheKey, token: CachedToken, facts: AccountFacts, now: float
    ) -> None:
        if token.fresh_until > now:
            token.quiet_until = self.quiet_until(token, facts)
            self.cache[key] = token


def _expiry_of(_key: CacheKey, entry: CachedToken, _now: float) -> float:
    return entry.expires_at

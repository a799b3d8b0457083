"""Per-process cache of access tokens with single-flight fetching.

Expiry rules: an entry is fresh until `expires_at - TOKEN_EXPIRY_MARGIN`, measured on the
injected clock from the moment the token was requested, so network time shortens the
lifetime rather than lengthening it. Fresh entries are served as they are. A stale
entry is fetched again and never served. The cache itself drops an entry at its real
expiry (`expires_at`) or when TOKEN_CACHE_SIZE pushes out the least recently used one.

Concurrency: one lock guards the cache and the table of fetches in flight and is held
only for dictionary work, never during network calls. Concurrent misses for one key
share a single fetch (single-flight), while misses for other keys proceed in parallel.
Each gunicorn worker process has its own cache, so N workers may fetch N tokens for
the same account.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from cachetools import LRUCache, TLRUCache

from .credentials import CredentialStore
from .errors import BrokerError, NotInstalled, UpstreamTimeout
from .trackunit import TokenClient

log = logging.getLogger(__name__)

CacheKey = tuple[str, tuple[str, ...]]


@dataclass(slots=True)
class CachedToken:
    """One issued token and the clock readings that bound its use."""

    access_token: str = field(repr=False)
    scope: str
    expires_at: float
    fresh_until: float
    kv_version: int


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """The token a caller receives. `expires_in` is whole seconds left, never negative."""

    access_token: str = field(repr=False)
    expires_in: int
    scope: str
    cache_hit: bool


class _Flight:
    """A fetch in progress that other threads can wait for."""

    __slots__ = ("done", "token", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.token: CachedToken | None = None
        self.error: BrokerError | None = None


class TokenBroker:
    """Serves access tokens per account from the cache, fetching on a miss."""

    def __init__(
        self,
        store: CredentialStore,
        client: TokenClient,
        *,
        scopes: tuple[str, ...],
        expiry_margin: float,
        max_size: int,
        wait_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._store = store
        self._client = client
        self._scopes = scopes
        self._margin = expiry_margin
        self._wait_timeout = wait_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: TLRUCache[CacheKey, CachedToken] = TLRUCache(
            maxsize=max_size, ttu=_expiry_of, timer=clock
        )
        self._flights: dict[CacheKey, _Flight] = {}
        # Counts evictions per account so a fetch that started before a re-install
        # does not cache a token minted from the replaced credentials.
        self._evictions: LRUCache[str, int] = LRUCache(maxsize=max_size)

    def get(self, account_id: str, *, force_refresh: bool = False) -> TokenGrant:
        """Return a fresh token for the account, fetching one on a miss.

        force_refresh skips the cached entry, for a caller whose token Trackunit rejected.
        Raises NotInstalled, VaultUnavailable or an UpstreamError subclass.
        """
        key: CacheKey = (account_id, self._scopes)
        now = self._clock()

        with self._lock:
            entry = self._cache.get(key)
            if entry is not None and not force_refresh and now < entry.fresh_until:
                return _grant(entry, now, cache_hit=True)

            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
                epoch = self._evictions.get(account_id, 0)

        if leader:
            self._lead(key, flight, epoch)
        elif not flight.done.wait(self._wait_timeout):
            log.error("Waited %.0f s for another token fetch for account %s", self._wait_timeout, account_id)
            raise UpstreamTimeout("Timed out waiting for a token fetch already in progress")

        if flight.error is not None:
            raise flight.error
        return _grant(flight.token, self._clock(), cache_hit=False)

    def evict(self, account_id: str) -> int:
        """Drop every cached token of the account and return how many were dropped."""
        with self._lock:
            self._evictions[account_id] = self._evictions.get(account_id, 0) + 1
            keys = [key for key in self._cache.keys() if key[0] == account_id]
            for key in keys:
                self._cache.pop(key, None)
            for key in [key for key in self._flights if key[0] == account_id]:
                del self._flights[key]
        return len(keys)

    def _lead(self, key: CacheKey, flight: _Flight, epoch: int) -> None:
        """Fetch the token for `key`, publish it to waiters and cache it if still current."""
        account_id, scopes = key
        try:
            entry = self._fetch(account_id, scopes)
        except BrokerError as exc:
            flight.error = exc
        else:
            flight.token = entry
        finally:
            with self._lock:
                if self._flights.get(key) is flight:
                    del self._flights[key]
                current = self._evictions.get(account_id, 0) == epoch
                if flight.token is not None and current and flight.token.fresh_until > self._clock():
                    self._cache[key] = flight.token
            flight.done.set()

    def _fetch(self, account_id: str, scopes: tuple[str, ...]) -> CachedToken:
        credentials = self._store.load(account_id)
        if credentials is None:
            raise NotInstalled(
                f"No credentials are stored for account {account_id}; "
                "the account must install the app first",
                accountId=account_id,
            )

        requested_at = self._clock()
        issued = self._client.fetch(
            account_id, credentials.client_id, credentials.client_secret, scopes
        )
        expires_at = requested_at + issued.expires_in
        if issued.expires_in <= self._margin:
            log.warning(
                "Token for account %s lives %d s, within the %g s expiry margin; "
                "it is served once and not cached",
                account_id,
                issued.expires_in,
                self._margin,
            )
        log.info("Fetched a token for account %s, expires in %d s", account_id, issued.expires_in)
        return CachedToken(
            access_token=issued.access_token,
            scope=issued.scope,
            expires_at=expires_at,
            fresh_until=expires_at - self._margin,
            kv_version=credentials.version,
        )


def _expiry_of(_key: CacheKey, entry: CachedToken, _now: float) -> float:
    return entry.expires_at


def _grant(entry: CachedToken, now: float, *, cache_hit: bool) -> TokenGrant:
    return TokenGrant(
        access_token=entry.access_token,
        expires_in=max(0, int(entry.expires_at - now)),
        scope=entry.scope,
        cache_hit=cache_hit,
    )

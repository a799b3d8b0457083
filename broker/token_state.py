"""The records the token cache keeps: cached tokens, account facts and fetches in flight.

All times are readings of the broker's injected monotonic clock, in seconds. The mutable
fields are changed only while TokenBroker holds its lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .errors import BrokerError, UpstreamRejected
from .scopes import ScopeSet

# Key of the cache: the account and the requested scope set, None for "all granted".
CacheKey = tuple[str, ScopeSet | None]


@dataclass(slots=True)
class CachedToken:
    """One issued token and the clock readings that bound its use.

    `expires_at` is the real expiry, `fresh_until` the end of normal serving
    (`expires_at - TOKEN_EXPIRY_MARGIN`), `refresh_at` the start of refresh-ahead.
    The hot path serves the entry without further checks while `now < quiet_until`,
    the earlier of `refresh_at` and the account's next coherence check. `retry_at`
    holds back the next refresh after one failed.
    """

    access_token: str = field(repr=False)
    scope: str
    issued_at: float
    expires_at: float
    fresh_until: float
    refresh_at: float
    kv_version: int
    quiet_until: float = 0.0
    retry_at: float = 0.0

    @property
    def lifetime(self) -> float:
        """Seconds from the token request to the real expiry."""
        return self.expires_at - self.issued_at


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """The token a caller receives. `expires_in` is whole seconds left, never negative."""

    access_token: str = field(repr=False)
    expires_in: int
    scope: str
    cache_hit: bool


@dataclass(slots=True)
class AccountFacts:
    """Facts this process learned about one account's installation, and when it last checked.

    `validated_at` is the clock reading just before the latest Vault read that returned
    `kv_version`. Learned refusals and the invalid_client back-off belong to that
    version and are dropped when another version appears. `check_failing` is set
    while Vault fails the version checks, which then run in the background.
    """

    kv_version: int
    validated_at: float
    refused: frozenset[str] = frozenset()
    rejected_until: float = 0.0
    rejection: UpstreamRejected | None = None
    revalidate_retry_at: float = 0.0
    check_failing: bool = False


class Flight:
    """A fetch or Vault check in progress that other threads can wait for."""

    __slots__ = ("done", "token", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.token: CachedToken | None = None
        self.error: BrokerError | None = None


def grant_of(entry: CachedToken, now: float, *, cache_hit: bool) -> TokenGrant:
    """Build the caller's view of a cached token at clock reading `now`."""
    return TokenGrant(
        access_token=entry.access_token,
        expires_in=max(0, int(entry.expires_at - now)),
        scope=entry.scope,
        cache_hit=cache_hit,
    )

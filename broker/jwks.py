"""A cache of Trackunit's JSON Web Key Set (JWKS), the keys that sign install callbacks.

Expiry and refetch rules: a fetched key set is fresh for `ttl` seconds on the injected
monotonic clock. A lookup refetches when the set is stale or the requested `kid` is not
in it, but at most one fetch is attempted per `min_refetch_interval` seconds, however
many unknown kids arrive, so random kids cannot hammer the JWKS URL. When a fetch fails,
the keys from the last good fetch stay in use. A fetch that returns no usable key counts
as failed, so a broken JWKS document never wipes the cached keys.

Concurrency: fetches are serialised by one lock. A thread whose kid is already cached
never waits for another thread's fetch and uses the cached key. Every fetch has a
connect and read timeout of `timeout` seconds, stops reading the body once `timeout`
seconds have passed since it started, and reads at most MAX_JWKS_BYTES. So one fetch
takes at most about 2 x `timeout`, and a thread that needs a fetch waits about that long.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import requests

from .http_limits import BodyReadError, read_limited_body

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 256 * 1024

Jwk = dict[str, object]


class KeysUnavailable(Exception):
    """No key set is available to look the kid up in: the JWKS URL failed and nothing is cached."""


class _FetchFailed(Exception):
    """One fetch of the JWKS URL failed. The message names the cause and contains no body."""


@dataclass(frozen=True)
class _KeySet:
    keys: dict[str, tuple[Jwk, ...]]
    fetched_at: float


class JwksCache:
    """Looks up signing keys by `kid` in a JWKS document fetched over HTTP."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        ttl: float,
        min_refetch_interval: float,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.url = url
        self.min_refetch_interval = min_refetch_interval
        self.fetch_count = 0
        self._timeout = timeout
        self._ttl = ttl
        self._session = session or requests.Session()
        self._clock = clock
        self._key_set: _KeySet | None = None
        self._last_attempt_at: float | None = None
        self._last_attempt_failed = False
        self._fetch_lock = threading.Lock()

    def get(self, kid: str) -> tuple[Jwk, ...]:
        """Return the JWKs published under `kid`, or () when the current key set lacks it.

        Raises KeysUnavailable when the kid is not cached and the last fetch failed, so the
        caller cannot tell whether the key exists. A stale cached key is returned when a
        refetch fails or is rate limited.
        """
        known = self._key_set
        cached = known.keys.get(kid, ()) if known else ()
        if cached and self._clock() - known.fetched_at < self._ttl:
            return cached

        self._refresh(wait=not cached)

        current = self._key_set
        if current is not known:
            return current.keys.get(kid, ())
        if cached:
            return cached
        if current is None or self._last_attempt_failed:
            raise KeysUnavailable(f"the JWKS at {self.url} could not be fetched")
        return ()

    def _refresh(self, *, wait: bool) -> None:
        """Fetch the key set unless another fetch runs or one was attempted too recently."""
        acquired = self._fetch_lock.acquire(timeout=2 * self._timeout + 1 if wait else 0)
        if not acquired:
            log.warning("Timed out waiting for another fetch of the JWKS at %s", self.url)
            return
        try:
            now = self._clock()
            if (
                self._last_attempt_at is not None
                and now - self._last_attempt_at < self.min_refetch_interval
            ):
                return
            self._last_attempt_at = now
            self.fetch_count += 1
            try:
                keys = self._fetch()
            except _FetchFailed as exc:
                self._last_attempt_failed = True
                log.error("Fetching the JWKS at %s failed: %s", self.url, exc)
                return
            self._last_attempt_failed = False
            self._key_set = _KeySet(keys, now)
            log.info("Fetched the JWKS at %s: %d signing key(s)", self.url, len(keys))
        finally:
            self._fetch_lock.release()

    def _fetch(self) -> dict[str, tuple[Jwk, ...]]:
        deadline = time.monotonic() + self._timeout
        try:
            response = self._session.get(
                self.url,
                timeout=(self._timeout, self._timeout),
                stream=True,
                allow_redirects=False,
                headers={"Accept": "application/json"},
            )
        except requests.Timeout as exc:
            raise _FetchFailed("timed out") from exc
        except requests.RequestException as exc:
            raise _FetchFailed(f"request failed ({type(exc).__name__})") from exc

        with response:
            if response.status_code != 200:
                raise _FetchFailed(f"HTTP status {response.status_code}")
            body = _read_limited(response, deadline)
        return _parse_key_set(body)


def _read_limited(response: requests.Response, deadline: float) -> bytes:
    """Read the body, failing past MAX_JWKS_BYTES or the deadline."""
    try:
        return read_limited_body(response, deadline=deadline, max_bytes=MAX_JWKS_BYTES)
    except BodyReadError as exc:
        raise _FetchFailed(str(exc)) from exc


def _parse_key_set(body: bytes) -> dict[str, tuple[Jwk, ...]]:
    """Group the signing keys of a JWKS document by kid. Keys without a kid are skipped."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _FetchFailed("the body is not valid JSON") from exc
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise _FetchFailed("the body has no 'keys' array")

    keys: dict[str, list[Jwk]] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid or entry.get("use", "sig") != "sig":
            continue
        keys.setdefault(kid, []).append(entry)
    if not keys:
        raise _FetchFailed("the key set contains no signing key with a kid")
    return {kid: tuple(group) for kid, group in keys.items()}

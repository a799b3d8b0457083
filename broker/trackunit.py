"""Client for Trackunit's OAuth 2.0 client-credentials endpoint (`apptoken`).

One POST per attempt, form-encoded as RFC 6749 section 4.4 describes. 5xx responses,
429 and connection failures are retried at most TRACKUNIT_MAX_RETRIES times with
exponential backoff, honouring a Retry-After of up to TRACKUNIT_MAX_RETRY_AFTER seconds.
OAuth errors (400/401) and timeouts are not retried: the first means the credentials or
scopes are wrong, the second already cost a full TRACKUNIT_TIMEOUT.

Each attempt must deliver its reply body, at most MAX_TOKEN_REPLY_BYTES, within
TRACKUNIT_TIMEOUT of the attempt's start, or it counts as a timeout. The wait for the
headers is bounded only per socket read (see _post). The body of a 429 or 5xx response
is never read.

Neither the response body nor the request form is ever logged or put in an exception,
because one contains the access token and the other the client secret.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Callable

import requests

from . import metrics
from .errors import (
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from .http_limits import BodyReadError, BodyTimedOut, BodyTooLarge, read_limited_body

log = logging.getLogger(__name__)

_BACKOFF_BASE_SECONDS = 0.25
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# OAuth error codes are short ASCII words; anything else is not echoed back to callers.
_MAX_OAUTH_ERROR_LENGTH = 64
# An OAuth token reply is a few KB, so a larger body is treated as an invalid response.
MAX_TOKEN_REPLY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """An access token as the endpoint issued it. `expires_in` is in seconds."""

    access_token: str = field(repr=False)
    token_type: str
    expires_in: int
    scope: str


class TokenClient:
    """Exchanges client credentials for access tokens at one token URL.

    `session`, `sleep` and `clock` are injectable so tests use requests-mock and skip waits.
    """

    def __init__(
        self,
        token_url: str,
        *,
        timeout: float,
        max_retries: int,
        max_retry_after: float,
        default_lifetime: int,
        max_lifetime: int,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self._token_url = token_url
        self._timeout = (min(timeout, 5.0), timeout)
        self._max_retries = max_retries
        self._max_retry_after = max_retry_after
        self._default_lifetime = default_lifetime
        self._max_lifetime = max_lifetime
        self._session = session or requests.Session()
        self._sleep = sleep

    def fetch(
        self, account_id: str, client_id: str, client_secret: str, scopes: tuple[str, ...]
    ) -> IssuedToken:
        """Request a new token for the account, raising an UpstreamError subclass on failure."""
        form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
            "scope": " ".join(scopes),
        }

        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                response, body = self._post(form, started + self._timeout[1])
            except (requests.Timeout, BodyTimedOut) as exc:
                metrics.record_upstream(time.monotonic() - started, "timeout")
                log.error("Token request for account %s timed out", account_id)
                raise UpstreamTimeout(
                    f"Trackunit's token endpoint did not respond within {self._timeout[1]:g} s"
                ) from exc
            except (requests.RequestException, BodyReadError) as exc:
                metrics.record_upstream(time.monotonic() - started, "connection")
                cause = exc.__cause__ if isinstance(exc, BodyReadError) else exc
                failure: UpstreamError = UpstreamError(
                    f"Trackunit's token endpoint could not be reached ({type(cause).__name__})"
                )
                failure.__cause__ = exc
                delay = self._backoff(attempt)
                status = None
            else:
                status = response.status_code
                elapsed = time.monotonic() - started
                metrics.record_upstream(elapsed, None if status == 200 else str(status))
                elapsed_ms = elapsed * 1000
                log.debug(
                    "Token endpoint returned %s for account %s in %.1f ms",
                    status,
                    account_id,
                    elapsed_ms,
                )
                if status == 200:
                    return self._parse_token(body, account_id)
                if status not in _RETRY_STATUSES:
                    raise self._rejection(status, body, account_id)
                failure, delay = self._retryable_failure(response, attempt)

            if attempt > self._max_retries or delay is None:
                log.error(
                    "Token request for account %s failed after %d attempt(s): %s",
                    account_id,
                    attempt,
                    failure.message,
                )
                raise failure
            log.warning(
                "Token request for account %s failed (%s); retry %d of %d in %.2f s",
                account_id,
                status if status is not None else "connection error",
                attempt,
                self._max_retries,
                delay,
            )
            self._sleep(delay)

    def _post(
        self, form: dict[str, str], deadline: float
    ) -> tuple[requests.Response, bytes | None]:
        """POST the form and read the reply body by `deadline`, then close the response.

        Return the closed response, whose status and headers stay readable, and its body:
        b"" for a 429 or 5xx, whose body is not read, and None for a body larger than
        MAX_TOKEN_REPLY_BYTES. Raises requests.Timeout or BodyTimedOut when the reply is
        late, and requests.RequestException or BodyReadError when the connection fails.
        """
        # NOTE: requests and urllib3 limit the wait for the status line and headers only
        # per socket read, by TRACKUNIT_TIMEOUT. A server that sends its headers a byte at
        # a time can hold an attempt longer. Only the body read has a total deadline.
        response = self._session.post(
            self._token_url,
            data=form,
            headers={"Accept": "application/json"},
            timeout=self._timeout,
            allow_redirects=False,
            stream=True,
        )
        with response:
            if response.status_code in _RETRY_STATUSES:
                return response, b""
            try:
                body = read_limited_body(
                    response,
                    deadline=deadline,
                    max_bytes=MAX_TOKEN_REPLY_BYTES,
                    cap_read_timeout=True,
                )
            except BodyTooLarge:
                return response, None
        return response, body

    def _backoff(self, attempt: int) -> float:
        return _BACKOFF_BASE_SECONDS * (2 ** (attempt - 1))

    def _retryable_failure(
        self, response: requests.Response, attempt: int
    ) -> tuple[UpstreamError, float | None]:
        """Build the error for a 429 or 5xx and the delay before the next attempt.

        The delay is None when Retry-After requests longer than TRACKUNIT_MAX_RETRY_AFTER,
        because a caller is better served by a quick 503 than by a blocked worker.
        """
        retry_after = _parse_retry_after(response.headers.get("Retry-After"))
        delay: float | None = self._backoff(attempt)
        if retry_after is not None:
            delay = retry_after if retry_after <= self._max_retry_after else None

        if response.status_code == 429:
            error: UpstreamError = UpstreamRateLimited(
                "Trackunit's token endpoint is rate limiting this service (429)",
                retry_after=retry_after,
                upstream_status=429,
            )
        else:
            error = UpstreamError(
                f"Trackunit's token endpoint failed with HTTP {response.status_code}",
                upstream_status=response.status_code,
            )
        return error, delay

    def _rejection(self, status: int, body: bytes | None, account_id: str) -> UpstreamError:
        """Build the error for a non-retryable response such as an OAuth error."""
        document = _json_object(body)
        oauth_error = document.get("error") if document else None
        if not (isinstance(oauth_error, str) and oauth_error.isascii()):
            oauth_error = None
        elif len(oauth_error) > _MAX_OAUTH_ERROR_LENGTH or not oauth_error.replace("_", "").isalnum():
            oauth_error = None

        if oauth_error is None:
            log.error("Token endpoint returned HTTP %s for account %s", status, account_id)
            return UpstreamError(
                f"Trackunit's token endpoint failed with HTTP {status}", upstream_status=status
            )

        log.error(
            "Token endpoint rejected account %s: HTTP %s %s", account_id, status, oauth_error
        )
        return UpstreamRejected(
            f"Trackunit's token endpoint rejected the request with '{oauth_error}'; "
            "check the account's installation and the configured scopes",
            oauth_error=oauth_error,
            upstream_status=status,
        )

    def _parse_token(self, raw_body: bytes | None, account_id: str) -> IssuedToken:
        if raw_body is None:
            return self._invalid(
                account_id, f"the body is larger than {MAX_TOKEN_REPLY_BYTES} bytes"
            )
        body = _json_object(raw_body)
        if body is None:
            return self._invalid(account_id, "the body is not a JSON object")

        access_token = body.get("access_token")
        if not isinstance(access_token, str) or not access_token.strip():
            return self._invalid(account_id, "access_token is missing or not a string")

        token_type = body.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            return self._invalid(account_id, "token_type is not Bearer")

        expires_in = self._lifetime(body.get("expires_in"), account_id)
        scope = body.get("scope")
        if not isinstance(scope, str):
            scope = ""

        return IssuedToken(
            access_token=access_token,
            token_type="Bearer",
            expires_in=expires_in,
            scope=" ".join(scope.split()),
        )

    def _lifetime(self, raw: object, account_id: str) -> int:
        """Read expires_in as whole seconds, bounded so no token is cached forever."""
        if raw is None:
            log.warning(
                "Token for account %s has no expires_in; assuming %d s",
                account_id,
                self._default_lifetime,
            )
            return self._default_lifetime

        value: float | None = None
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            value = float(raw)
        elif isinstance(raw, str):
            try:
                value = float(raw.strip())
            except ValueError:
                value = None
        if value is None or not math.isfinite(value) or value <= 0:
            self._invalid(account_id, "expires_in is not a positive number")

        seconds = max(1, int(value))
        if seconds > self._max_lifetime:
            log.warning(
                "Token for account %s claims expires_in=%d; capping it at %d s",
                account_id,
                seconds,
                self._max_lifetime,
            )
            return self._max_lifetime
        return seconds

    def _invalid(self, account_id: str, reason: str):
        log.error("Token endpoint sent an invalid token response for account %s: %s", account_id, reason)
        raise UpstreamError(f"Trackunit's token endpoint sent an invalid response: {reason}")


def _json_object(body: bytes | None) -> dict | None:
    if body is None:
        return None
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) else None


def _parse_retry_after(raw: str | None) -> float | None:
    """Parse Retry-After as seconds or an HTTP date (RFC 9110 section 10.2.3)."""
    if not raw:
        return None
    raw = raw.strip()
    if raw.isdigit():
        return float(raw)
    try:
        moment = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if moment is None:
        return None
    return max(0.0, moment.timestamp() - time.time())

"""The service's exception hierarchy.

Each class fixes the HTTP status and the machine-readable `error` code that the single
Flask error handler in app.py returns. Messages are shown to callers, so they name
fields, accounts and status codes, never a client secret, an access token or a Vault token.
"""

from __future__ import annotations


class BrokerError(Exception):
    """Root of every error the service turns into a JSON response."""

    status = 500
    code = "internal_error"
    retry_after: float | None = None
    # True for errors whose module already logged them with more context than the
    # error handler has, so the handler does not log them a second time.
    logged = False

    def __init__(self, message: str, **details: object):
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, object]:
        """Return the JSON body: `error`, `message` and any detail fields."""
        return {"error": self.code, "message": self.message, **self.details}


class InvalidRequest(BrokerError, ValueError):
    """The request is malformed. `field` names the offending input. Not safe to retry unchanged."""

    status = 400
    code = "invalid_request"


class UnsupportedMediaType(InvalidRequest):
    """The body is not sent as application/json."""

    status = 415
    code = "unsupported_media_type"


class PayloadTooLarge(InvalidRequest):
    """The body is larger than INSTALL_MAX_BODY_BYTES."""

    status = 413
    code = "payload_too_large"


class Unauthorized(BrokerError, PermissionError):
    """The caller did not prove who it is."""

    status = 401
    code = "unauthorized"


class Forbidden(BrokerError, PermissionError):
    """The caller is known but may not do this."""

    status = 403
    code = "forbidden"


class ScopeNotGranted(Forbidden):
    """The account refused an optional scope the request needs. `scope` names the refused ones.

    Not safe to retry unchanged: the customer must grant the scope and install the app again.
    """

    code = "scope_not_granted"


class NotInstalled(BrokerError, LookupError):
    """Vault has no credentials for the account. A normal outcome before an install."""

    status = 404
    code = "not_installed"


class VaultUnavailable(BrokerError, ConnectionError):
    """Vault is unreachable, sealed, or denied the service. Safe to retry later."""

    status = 503
    code = "vault_unavailable"


class UpstreamError(BrokerError):
    """Trackunit's token endpoint did not issue a token."""

    status = 502
    code = "upstream_error"


class UpstreamRejected(UpstreamError):
    """The token endpoint rejected the stored credentials or scopes with an OAuth error.

    Not safe to retry with the same credentials: the account must be installed again or
    the scope configuration fixed. `oauth_error` carries the endpoint's error code.
    """

    code = "upstream_rejected"


class UpstreamTimeout(UpstreamError, TimeoutError):
    """The token endpoint did not send its reply within TRACKUNIT_TIMEOUT. Safe to retry."""

    status = 504
    code = "upstream_timeout"


class UpstreamRateLimited(UpstreamError):
    """The token endpoint kept returning 429. Safe to retry after `retry_after` seconds."""

    status = 503
    code = "upstream_rate_limited"

    def __init__(self, message: str, retry_after: float | None = None, **details: object):
        super().__init__(message, **details)
        self.retry_after = retry_after


class IdentityRejected(Unauthorized):
    """The Trackunit-Identity header of a callback failed a check. Nothing was written.

    `reason` names the check: missing_header, malformed_token, missing_claim, unknown_key,
    bad_signature, algorithm_not_allowed, expired, not_yet_valid or claim_mismatch.
    Not safe to retry with the same token.
    """

    code = "identity_rejected"
    logged = True

    def __init__(self, message: str, *, reason: str, **details: object):
        super().__init__(message, reason=reason, header="Trackunit-Identity", **details)
        self.reason = reason


class IdentityUnavailable(BrokerError, ConnectionError):
    """The keys that verify a callback's Trackunit-Identity header could not be fetched.

    Returned as 503 so Trackunit retries the callback. Safe to retry after `retry_after`.
    """

    status = 503
    code = "identity_keys_unavailable"

    def __init__(self, message: str, retry_after: float | None = None, **details: object):
        super().__init__(message, **details)
        self.retry_after = retry_after

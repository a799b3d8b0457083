"""Bearer-key check for the internal endpoints (`GET /token`, later `/metrics`)."""

from __future__ import annotations

import hmac

from .errors import Unauthorized


def require_internal_key(authorization: str | None, keys: tuple[bytes, ...]) -> None:
    """Raise Unauthorized unless the header is 'Bearer <key>' for one of INTERNAL_API_KEYS.

    Every configured key is compared in constant time, and all of them are compared,
    so the response time does not reveal which key matched or how much of one did.
    """
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized(
            "Missing or malformed Authorization header: send 'Authorization: Bearer <key>' "
            "with one of the service's INTERNAL_API_KEYS"
        )

    candidate = presented.strip().encode("utf-8", "surrogateescape")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key)
    if not matched:
        raise Unauthorized("The API key is not valid for this service")

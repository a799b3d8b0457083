"""Verification of the Trackunit-Identity header that Trackunit sends with each callback.

The header contains a JWT signed with a key from Trackunit's JWKS. IdentityVerifier
checks, in this order:

1. The header is present and decodes as a JWT.
2. Its `alg` is on the asymmetric allow-list, whatever else the header contains, so `none`
   and HS* are never accepted.
3. Its `kid` names a key in the JWKS whose type fits the algorithm.
4. The signature verifies. PyJWT does the cryptography.
5. `exp` and `iat` are present, and `exp`, `nbf` and `iat` hold within the leeway.
6. `iss` and `aud` match, when they are configured.
7. The claims that name the account or the app match the body (see identity_claims).

Time claims are checked by PyJWT against the wall clock, because the token's times are
wall-clock times. Every rejection raises IdentityRejected (401) and is logged once with
the accountId and the reason. Missing keys raise IdentityUnavailable (503).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import jwt
from jwt.exceptions import (
    DecodeError,
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuedAtError,
    InvalidIssuerError,
    InvalidKeyError,
    InvalidSignatureError,
    InvalidTokenError,
    MissingRequiredClaimError,
    PyJWKError,
)

from .config import Settings
from .errors import IdentityRejected, IdentityUnavailable
from .identity_claims import bind_claims_to_event
from .install import InstallEvent
from .jwks import JwksCache, Jwk, KeysUnavailable

log = logging.getLogger(__name__)

HEADER = "Trackunit-Identity"
MAX_TOKEN_LENGTH = 8192

# Asymmetric algorithms only, each with the JWK key type it needs. HS* is missing on
# purpose: with HMAC a public key from the JWKS could be used as the shared secret.
ALLOWED_ALGORITHMS: dict[str, str] = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
    "EdDSA": "OKP",
}
# exp bounds replays and iat orders deliveries (see CredentialStore.save_delivery).
# NOTE: Trackunit does not document its claims. If its tokens lack iat, every callback is
# rejected with missing_claim, and the ordering rule needs another source of time.
REQUIRED_CLAIMS = ("exp", "iat")


@dataclass(frozen=True, slots=True)
class VerifiedIdentity:
    """The checked facts of one callback's token. `issued_at` is its `iat` in Unix seconds."""

    issued_at: int
    expires_at: int
    key_id: str
    algorithm: str
    claim_names: tuple[str, ...]


class IdentityVerifier:
    """Checks Trackunit-Identity tokens against a JWKS cache and the callback body."""

    def __init__(
        self,
        keys: JwksCache,
        *,
        leeway: float,
        issuer: str | None = None,
        audience: str | None = None,
    ):
        self.keys = keys
        self._leeway = leeway
        self._issuer = issuer
        self._audience = audience

    def verify(self, header_value: str | None, event: InstallEvent) -> VerifiedIdentity:
        """Verify the header for this callback, raising IdentityRejected or IdentityUnavailable."""
        try:
            identity = self._verify(header_value, event)
        except IdentityRejected as exc:
            log.warning(
                "Rejected %s callback for account %s: %s (%s)",
                event.type,
                event.account_id,
                exc.reason,
                exc.message,
            )
            raise
        log.debug(
            "Verified %s for account %s: kid %s, alg %s",
            HEADER,
            event.account_id,
            identity.key_id,
            identity.algorithm,
        )
        return identity

    def _verify(self, header_value: str | None, event: InstallEvent) -> VerifiedIdentity:
        token = _token_from_header(header_value)
        header = _unverified_header(token)
        algorithm = _allowed_algorithm(header)
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise IdentityRejected(
                "The token header has no kid, so no Trackunit key can verify it",
                reason="unknown_key",
            )

        key = self._key_for(kid, algorithm, event)
        claims = self._decode(token, key, algorithm)
        log.debug(
            "Token for account %s carried claims: %s", event.account_id, ", ".join(sorted(claims))
        )
        bind_claims_to_event(claims, event)

        return VerifiedIdentity(
            issued_at=int(claims["iat"]),
            expires_at=int(claims["exp"]),
            key_id=kid,
            algorithm=algorithm,
            claim_names=tuple(sorted(claims)),
        )

    def _key_for(self, kid: str, algorithm: str, event: InstallEvent) -> jwt.PyJWK:
        try:
            candidates = self.keys.get(kid)
        except KeysUnavailable as exc:
            log.error(
                "Cannot verify %s callback for account %s: %s", event.type, event.account_id, exc
            )
            raise IdentityUnavailable(
                "Trackunit's signing keys could not be fetched, so the callback cannot be "
                "verified now; retry later",
                retry_after=self.keys.min_refetch_interval,
            ) from exc
        if not candidates:
            raise IdentityRejected(
                f"No key with kid {kid[:64]!r} is published in Trackunit's JWKS",
                reason="unknown_key",
            )

        for jwk in candidates:
            key = _usable_key(jwk, algorithm)
            if key is not None:
                return key
        raise IdentityRejected(
            f"The key with kid {kid[:64]!r} cannot verify {algorithm} signatures",
            reason="algorithm_not_allowed",
        )

    def _decode(self, token: str, key: jwt.PyJWK, algorithm: str) -> dict[str, object]:
        options = {
            "verify_signature": True,
            "verify_exp": True,
            "verify_nbf": True,
            "verify_iat": True,
            "verify_iss": self._issuer is not None,
            "verify_aud": self._audience is not None,
            "require": list(REQUIRED_CLAIMS),
            "enforce_minimum_key_length": True,
        }
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                options=options,
                leeway=self._leeway,
                issuer=self._issuer,
                audience=self._audience,
            )
        except InvalidTokenError as exc:
            raise _rejection(exc) from exc
        except InvalidKeyError as exc:
            raise IdentityRejected(
                "The published key for this token is too weak or malformed", reason="unknown_key"
            ) from exc


def build_verifier(
    settings: Settings, *, clock: Callable[[], float] | None = None
) -> IdentityVerifier | None:
    """Build the verifier from settings, or return None and warn when the check is off.

    `clock` is the monotonic clock of the JWKS cache's TTL and refetch limit.
    """
    if not settings.require_trackunit_identity:
        log.warning(
            "REQUIRE_TRACKUNIT_IDENTITY is off: install callbacks are accepted WITHOUT "
            "checking Trackunit's signature, so anyone who can reach %s can overwrite stored "
            "credentials. Use this only in the offline sandbox.",
            settings.appinstall_path,
        )
        return None

    keys = JwksCache(
        settings.trackunit_jwks_url,
        timeout=settings.trackunit_jwks_timeout,
        ttl=settings.trackunit_jwks_cache_ttl,
        min_refetch_interval=settings.trackunit_jwks_min_refetch_interval,
        clock=clock or time.monotonic,
    )
    return IdentityVerifier(
        keys,
        leeway=settings.trackunit_identity_leeway,
        issuer=settings.trackunit_identity_issuer,
        audience=settings.trackunit_identity_audience,
    )


def _token_from_header(header_value: str | None) -> str:
    token = (header_value or "").strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    if not token:
        raise IdentityRejected(
            f"The {HEADER} header is missing: only callbacks signed by Trackunit are accepted",
            reason="missing_header",
        )
    if len(token) > MAX_TOKEN_LENGTH:
        raise IdentityRejected(
            f"The token is longer than {MAX_TOKEN_LENGTH} characters", reason="malformed_token"
        )
    return token


def _unverified_header(token: str) -> dict[str, object]:
    try:
        return jwt.get_unverified_header(token)
    except DecodeError as exc:
        raise IdentityRejected(
            f"The {HEADER} header is not a well-formed JWT", reason="malformed_token"
        ) from exc
    except InvalidTokenError as exc:
        # PyJWT's header checks, such as a kid that is not a string. Its messages are fixed
        # texts that echo no token content.
        raise IdentityRejected(
            f"The token header is invalid: {exc}", reason="malformed_token"
        ) from exc


def _allowed_algorithm(header: dict[str, object]) -> str:
    algorithm = header.get("alg")
    if not isinstance(algorithm, str) or algorithm not in ALLOWED_ALGORITHMS:
        algorithm_name = algorithm if isinstance(algorithm, str) else "missing"
        raise IdentityRejected(
            f"The token algorithm {algorithm_name[:20]!r} is not allowed: use one of "
            f"{', '.join(ALLOWED_ALGORITHMS)}",
            reason="algorithm_not_allowed",
        )
    return algorithm


def _usable_key(jwk: Jwk, algorithm: str) -> jwt.PyJWK | None:
    """Build a key bound to `algorithm`, or None when the JWK is of another type or alg."""
    if jwk.get("kty") != ALLOWED_ALGORITHMS[algorithm]:
        return None
    if jwk.get("alg") not in (None, algorithm):
        return None
    try:
        return jwt.PyJWK(jwk, algorithm=algorithm)
    except PyJWKError:
        # InvalidKeyError is a PyJWKError too: for example an EC key on the wrong curve.
        return None


# PyJWT errors mapped to the reason reported to the caller. Order matters because
# InvalidSignatureError is a DecodeError.
_REASONS: tuple[tuple[type[InvalidTokenError], str, str], ...] = (
    (InvalidSignatureError, "bad_signature", "The token signature does not verify"),
    (ExpiredSignatureError, "expired", "The token has expired (exp)"),
    (ImmatureSignatureError, "not_yet_valid", "The token is not valid yet (nbf or iat)"),
    (MissingRequiredClaimError, "missing_claim", "The token lacks a required claim"),
    (InvalidIssuerError, "claim_mismatch", "The token issuer (iss) is not the expected one"),
    (InvalidAudienceError, "claim_mismatch", "The token audience (aud) is not this service"),
    (InvalidAlgorithmError, "algorithm_not_allowed", "The token algorithm is not allowed"),
    (InvalidIssuedAtError, "malformed_token", "The token iat claim is not a number"),
    (DecodeError, "malformed_token", "The token cannot be decoded"),
)


def _rejection(error: InvalidTokenError) -> IdentityRejected:
    for error_type, reason, message in _REASONS:
        if isinstance(error, error_type):
            if isinstance(error, MissingRequiredClaimError):
                message = f"The token lacks the required {error.claim} claim"
            return IdentityRejected(message, reason=reason)
    return IdentityRejected("The token is invalid", reason="malformed_token")

"""Vault client construction and authentication.

make_vault_client() builds one hvac client per process. The authenticator puts a Vault
token on that client: login() runs before the first Vault call and again when Vault
returns 403, which is how an expired or revoked token shows. renew_if_due() runs before
every other call and renews a renewable token once two thirds of its TTL have passed.
The token only ever travels in the X-Vault-Token header and is never logged.

Both authenticators expect the caller (CredentialStore) to serialise login() and
renew_if_due() with one lock, so they keep no lock of their own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import hvac
import hvac.exceptions
import requests

from .config import Settings

log = logging.getLogger(__name__)

# Renew when this share of the token's TTL has passed, leaving a third of it for retries.
RENEW_AFTER_FRACTION = 2 / 3


class ServiceAccountTokenError(OSError):
    """The Kubernetes service-account token file is missing, unreadable or empty.

    The message names the file and VAULT_K8S_TOKEN_PATH, never the token.
    """


class VaultAuthenticator(Protocol):
    """Something that can put a valid Vault token on an hvac client and keep it valid."""

    def login(self, client: hvac.Client) -> None:
        """Set client.token to a fresh token, raising hvac or requests errors on failure."""

    def renew_if_due(self, client: hvac.Client) -> None:
        """Renew or replace the token when its TTL runs low, logging failures instead of raising."""


@dataclass
class TokenLease:
    """The current token's TTL in seconds and whether it renews, as Vault reported them.

    `ttl` 0 means the token never expires (a root token, for example).
    """

    ttl: float
    renewable: bool
    obtained_at: float

    @classmethod
    def from_auth(cls, auth: Mapping[str, Any], now: float) -> TokenLease:
        """Build a lease from the `auth` block of a login or renew-self response."""
        return cls(float(auth.get("lease_duration") or 0), bool(auth.get("renewable")), now)

    def is_due(self, now: float) -> bool:
        """Return True when an expiring token has used two thirds of its TTL."""
        return self.ttl > 0 and now - self.obtained_at >= self.ttl * RENEW_AFTER_FRACTION


class _LeaseKeeper:
    """Renewal shared by both authenticators. Subclasses call _record() after a login."""

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self._lease: TokenLease | None = None

    @property
    def lease(self) -> TokenLease | None:
        """The current token's lease, or None before a login or when it is unknown."""
        return self._lease

    def renew_if_due(self, client: hvac.Client) -> None:
        lease = self._lease
        now = self._clock()
        if lease is None or not lease.is_due(now):
            return
        if not lease.renewable:
            self._replace_expiring(client, lease)
            return

        try:
            response = client.auth.token.renew_self()
        except (requests.RequestException, hvac.exceptions.VaultError) as exc:
            # The next Vault call fails with 403 if the token has expired, and that path
            # logs in again, so a failed renewal is only worth a warning.
            log.warning("Vault token renewal failed (%s); will retry on the next call", type(exc).__name__)
            return

        renewed = TokenLease.from_auth(response.get("auth") or {}, self._clock())
        log.info("Renewed the Vault token for %d s", renewed.ttl)
        if renewed.ttl < lease.ttl:
            # Vault capped the renewal at the token's max TTL, so it will expire for good.
            # NOTE: no test reaches this branch, because OpenBao caps a renewal only
            # after real time has passed, and the tests never sleep.
            self._lease = renewed
            self._replace_expiring(client, renewed)
            return
        self._lease = renewed

    def _record(self, auth: Mapping[str, Any]) -> None:
        self._lease = TokenLease.from_auth(auth, self._clock())

    def _replace_expiring(self, client: hvac.Client, lease: TokenLease) -> None:
        """Handle a token that cannot be renewed further. The default keeps it."""


class StaticTokenAuth(_LeaseKeeper):
    """Authentication with a fixed token from VAULT_TOKEN, used locally and in tests.

    login() looks the token up once to learn its TTL, so a renewable (periodic) token is
    renewed in time. A token that cannot be renewed any more is kept until Vault
    rejects it, because there is nothing to log in with.
    """

    def __init__(self, token: str, *, clock: Callable[[], float] = time.monotonic):
        super().__init__(clock)
        self._token = token

    def __repr__(self) -> str:
        return "StaticTokenAuth(token=<redacted>)"

    def login(self, client: hvac.Client) -> None:
        client.token = self._token
        try:
            data = client.auth.token.lookup_self()["data"]
        except (requests.RequestException, hvac.exceptions.VaultError) as exc:
            # The first real call reports a bad token; here it only means no renewal.
            log.warning("Could not look up VAULT_TOKEN (%s); it will not be renewed", type(exc).__name__)
            self._lease = None
            return
        self._record({"lease_duration": data.get("ttl"), "renewable": data.get("renewable")})

    def _replace_expiring(self, client: hvac.Client, lease: TokenLease) -> None:
        log.warning(
            "VAULT_TOKEN cannot be renewed beyond %d s more; replace it before it expires",
            lease.ttl,
        )
        # Stop tracking it, so the warning is logged once and not before every call.
        self._lease = None


class KubernetesAuth(_LeaseKeeper):
    """Vault's Kubernetes auth method with the pod's service-account token.

    Every login() reads the token file again, because the kubelet replaces a projected
    service-account token once 80 % of its lifetime has passed, and Kubernetes rejects
    the old one after it expires.
    """

    def __init__(
        self,
        role: str,
        *,
        mount: str = "kubernetes",
        token_path: str | Path,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(clock)
        self._role = role
        self._mount = mount
        self._token_path = Path(token_path)

    def __repr__(self) -> str:
        return f"KubernetesAuth(role={self._role!r}, mount={self._mount!r}, token_path='{self._token_path}')"

    def login(self, client: hvac.Client) -> None:
        """Log in at auth/<mount>/login with the current service-account token.

        Raises ServiceAccountTokenError when the token file cannot be read, and hvac or
        requests errors when Vault rejects the login or cannot be reached.
        """
        jwt = self._read_token()
        response = client.auth.kubernetes.login(
            self._role, jwt, use_token=True, mount_point=self._mount
        )
        self._record(response["auth"])
        log.info(
            "Logged in to Vault with Kubernetes auth role %s at %s (TTL %d s)",
            self._role,
            self._mount,
            self._lease.ttl if self._lease else 0,
        )

    def _read_token(self) -> str:
        try:
            jwt = self._token_path.read_text().strip()
        except OSError as exc:
            raise ServiceAccountTokenError(
                f"the service-account token file {self._token_path} could not be read "
                f"({type(exc).__name__}); check VAULT_K8S_TOKEN_PATH and the pod's token mount"
            ) from exc
        if not jwt:
            raise ServiceAccountTokenError(
                f"the service-account token file {self._token_path} is empty; check "
                "VAULT_K8S_TOKEN_PATH and the pod's token mount"
            )
        return jwt

    def _replace_expiring(self, client: hvac.Client, lease: TokenLease) -> None:
        try:
            self.login(client)
        except (ServiceAccountTokenError, requests.RequestException, hvac.exceptions.VaultError) as exc:
            log.warning(
                "Vault login with Kubernetes auth role %s failed (%s); will retry on the next call",
                self._role,
                type(exc).__name__,
            )


def make_authenticator(
    settings: Settings, *, clock: Callable[[], float] = time.monotonic
) -> VaultAuthenticator:
    """Return the authenticator that VAULT_AUTH_METHOD selects."""
    if settings.vault_auth_method == "kubernetes":
        return KubernetesAuth(
            settings.vault_k8s_role or "",
            mount=settings.vault_k8s_auth_mount,
            token_path=settings.vault_k8s_token_path,
            clock=clock,
        )
    return StaticTokenAuth(settings.vault_token or "", clock=clock)


def make_vault_client(settings: Settings) -> hvac.Client:
    """Build an unauthenticated hvac client for VAULT_ADDR with the configured timeout.

    hvac sends X-Vault-Namespace on every request of this client, logins included, when
    VAULT_NAMESPACE is set.
    """
    verify: bool | str = settings.vault_cacert or True
    # An empty token stops hvac from reading VAULT_TOKEN or ~/.vault-token by itself.
    return hvac.Client(
        url=settings.vault_addr,
        token="",
        namespace=settings.vault_namespace,
        timeout=settings.vault_timeout,
        verify=verify,
    )

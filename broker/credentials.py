"""Account credentials in Vault's KV v2 engine.

Each account lives at `<VAULT_KV_MOUNT>/<VAULT_KV_PREFIX>/<accountId>`, so a re-install
writes a new version and KV v2 keeps the older ones. Every hvac and requests error is
translated into VaultUnavailable in _call(), the one place that talks to Vault. A 403
triggers one fresh login and one retry, because that is how an expired token shows.

Thread safety: hvac's client wraps one requests.Session, which the gthread workers share.
The lock only serialises logins and token renewals, so two threads never do either at once.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, TypeVar

import hvac
import hvac.exceptions
import requests

from .errors import VaultUnavailable
from .vault_auth import ServiceAccountTokenError, VaultAuthenticator

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StoredCredentials:
    """One account's OAuth client credentials as read from Vault."""

    account_id: str
    client_id: str
    client_secret: str = field(repr=False)
    iris_app_id: str | None
    installed_at: str | None
    version: int


class CredentialStore:
    """Reads and writes account credentials under one KV v2 mount and prefix."""

    def __init__(
        self,
        client: hvac.Client,
        authenticator: VaultAuthenticator,
        *,
        mount: str,
        prefix: str,
        clock: Callable[[], float] = time.time,
    ):
        self._client = client
        self._authenticator = authenticator
        self._mount = mount
        self._prefix = prefix
        self._clock = clock
        self._login_lock = threading.Lock()

    def login(self) -> None:
        """Authenticate the client now, raising VaultUnavailable when Vault refuses."""
        self._call("login", self._login)

    def save(
        self, account_id: str, *, client_id: str, client_secret: str, iris_app_id: str | None
    ) -> int:
        """Write the account's credentials as a new KV version and return its number.

        Returns only after Vault confirmed the write. Raises VaultUnavailable otherwise.
        """
        installed_at = datetime.fromtimestamp(self._clock(), tz=timezone.utc)
        secret = {
            "clientId": client_id,
            "clientSecret": client_secret,
            "irisAppId": iris_app_id,
            "installedAt": installed_at.isoformat().replace("+00:00", "Z"),
        }

        response = self._call(
            "write",
            lambda: self._client.secrets.kv.v2.create_or_update_secret(
                path=self._path(account_id), secret=secret, mount_point=self._mount
            ),
        )
        return int(response["data"]["version"])

    def load(self, account_id: str) -> StoredCredentials | None:
        """Return the latest credentials, or None when none exist or the latest is deleted."""
        try:
            response = self._call(
                "read",
                lambda: self._client.secrets.kv.v2.read_secret_version(
                    path=self._path(account_id),
                    mount_point=self._mount,
                    raise_on_deleted_version=True,
                ),
                missing_ok=True,
            )
        except _Missing:
            return None

        data = response["data"]["data"] or {}
        metadata = response["data"]["metadata"] or {}
        client_id = data.get("clientId")
        client_secret = data.get("clientSecret")
        if not isinstance(client_id, str) or not isinstance(client_secret, str):
            log.error(
                "Vault entry for account %s version %s lacks clientId or clientSecret; "
                "treating the account as not installed",
                account_id,
                metadata.get("version"),
            )
            return None

        return StoredCredentials(
            account_id=account_id,
            client_id=client_id,
            client_secret=client_secret,
            iris_app_id=data.get("irisAppId"),
            installed_at=data.get("installedAt"),
            version=int(metadata.get("version") or 0),
        )

    def check_ready(self) -> str | None:
        """Return None when Vault is unsealed and our token works, else the reason it is not."""
        try:
            status = self._client.sys.read_health_status(method="GET")
        except (requests.RequestException, hvac.exceptions.VaultError) as exc:
            return f"Vault is unreachable at its address ({type(exc).__name__})"

        body = status.json() if hasattr(status, "json") else status
        if isinstance(body, dict) and body.get("sealed"):
            return "Vault is sealed"
        if isinstance(body, dict) and body.get("initialized") is False:
            return "Vault is not initialized"

        try:
            self._call("token lookup", lambda: self._client.auth.token.lookup_self())
        except VaultUnavailable as exc:
            return exc.message
        return None

    def _path(self, account_id: str) -> str:
        return f"{self._prefix}/{account_id}"

    def _login(self) -> None:
        with self._login_lock:
            self._authenticator.login(self._client)

    def _prepare_token(self) -> None:
        """Log in when the client has no token yet, else renew the token when it is due."""
        if not self._client.token:
            self._login()
            return
        with self._login_lock:
            self._authenticator.renew_if_due(self._client)

    def _call(self, action: str, operation: Callable[[], T], *, missing_ok: bool = False) -> T:
        """Run one Vault operation, logging in again once on 403, translating every error."""
        for attempt in (1, 2):
            try:
                if action != "login":
                    self._prepare_token()
                return operation()
            except hvac.exceptions.InvalidPath as exc:
                if missing_ok:
                    raise _Missing() from exc
                error = exc
            except hvac.exceptions.Forbidden as exc:
                if attempt == 1 and action != "login":
                    log.warning("Vault denied %s (403); logging in again and retrying once", action)
                    try:
                        self._login()
                        continue
                    except (
                        requests.RequestException,
                        hvac.exceptions.VaultError,
                        ServiceAccountTokenError,
                    ) as login_exc:
                        error = login_exc
                else:
                    error = exc
            except (
                requests.RequestException,
                hvac.exceptions.VaultError,
                ServiceAccountTokenError,
            ) as exc:
                error = exc
            break

        reason = _describe(error)
        log.error("Vault %s failed: %s", action, reason)
        raise VaultUnavailable(
            f"Vault {action} failed: {reason}; the request can be retried once Vault is back"
        ) from error


class _Missing(Exception):
    """Internal signal that the KV path has no live version."""


def _describe(error: Exception) -> str:
    """Name an hvac or requests error without its message, which may echo request data."""
    if isinstance(error, ServiceAccountTokenError):
        return str(error)
    if isinstance(error, hvac.exceptions.VaultDown):
        return "Vault is sealed or down (503)"
    if isinstance(error, hvac.exceptions.Forbidden):
        return "permission denied (403)"
    if isinstance(error, requests.Timeout):
        return "timed out"
    if isinstance(error, requests.ConnectionError):
        return "connection failed"
    return type(error).__name__

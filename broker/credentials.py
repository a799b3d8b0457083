"""Account credentials in Vault's KV v2 engine.

Each account lives at `<VAULT_KV_MOUNT>/<VAULT_KV_PREFIX>/<accountId>`, so a re-install
writes a new version and KV v2 keeps the older ones. Every hvac and requests error is
translated into VaultUnavailable in _call(), the one place that talks to Vault. A 403
triggers one fresh login and one retry, because that is how an expired token shows.

Thread safety: hvac's client wraps one requests.Session, which the gthread workers share.
The lock only serialises logins and token renewals, so two threads never do either at once.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable, TypeVar

import hvac
import hvac.exceptions
import requests

from . import metrics
from .account_history import AccountHistory, VersionInfo, mask, parse_metadata
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


@dataclass(frozen=True, slots=True)
class SaveOutcome:
    """The result of save_delivery(): `status` is installed, unchanged or ignored_stale.

    `version` is the KV version written, or the current one when nothing was written.
    """

    status: str
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

    def save_delivery(
        self,
        account_id: str,
        *,
        client_id: str,
        client_secret: str,
        iris_app_id: str | None,
        issued_at: int,
    ) -> SaveOutcome:
        """Write the credentials of a verified callback unless a newer one was applied.

        `issued_at` is the callback token's `iat`, stored as `deliveryIssuedAt`. Nothing is
        written when the stored delivery is newer (ignored_stale) or is this same delivery
        with the same credentials (unchanged). The write uses KV v2 check-and-set against
        the version just read, so of two concurrent deliveries only one wins. On a conflict
        the decision is made once more on a fresh read. Raises VaultUnavailable when Vault
        fails or the second write conflicts too.
        """
        for attempt in (1, 2):
            stored, version = self._read_latest(account_id)
            stored_at = stored.get("deliveryIssuedAt")
            if isinstance(stored_at, int) and not isinstance(stored_at, bool):
                if stored_at > issued_at:
                    return SaveOutcome("ignored_stale", version)
                if stored_at == issued_at and _same_credentials(
                    stored, client_id, client_secret, iris_app_id
                ):
                    return SaveOutcome("unchanged", version)

            secret = self._secret(client_id, client_secret, iris_app_id)
            secret["deliveryIssuedAt"] = issued_at
            written = self._call(
                "write", lambda: self._write_if_version(account_id, secret, version)
            )
            if written is not None:
                return SaveOutcome("installed", written)
            log.info(
                "Vault check-and-set conflict for account %s at version %d (attempt %d)",
                account_id,
                version,
                attempt,
            )
        raise VaultUnavailable(
            f"Concurrent callbacks for account {account_id} kept changing its Vault entry, "
            "so this one was not applied. Retry the callback."
        )

    def load(self, account_id: str) -> StoredCredentials | None:
        """Return the latest credentials, or None when none exist or the latest is deleted."""
        response = self._read_version(account_id)
        if response is None:
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

    def current_version(self, account_id: str) -> int | None:
        """Return the number of the account's latest KV version, or None when it has no live one.

        Reads only the metadata, never the secret. A latest version that is deleted or
        destroyed counts as none, as in load(). Raises VaultUnavailable when Vault fails.
        """
        history = self.history(account_id, with_fields=False)
        if history is None or not history.installed:
            return None
        return history.current_version

    def delete_latest(self, account_id: str) -> int | None:
        """Soft-delete the account's latest version and return its number.

        Returns None when there is nothing to delete: no entry, or the latest version is
        already deleted or destroyed. The version stays recoverable with undelete().
        """
        history = self.history(account_id, with_fields=False)
        if history is None or not history.installed:
            return None

        # Deleting the version by number (POST <mount>/delete/<path>) rather than "the
        # latest" leaves alone a newer version that a concurrent install may have written.
        self._call(
            "delete",
            lambda: self._client.secrets.kv.v2.delete_secret_versions(
                path=self._path(account_id),
                versions=[history.current_version],
                mount_point=self._mount,
            ),
        )
        return history.current_version

    def undelete(self, account_id: str, versions: list[int] | None = None) -> list[int]:
        """Restore soft-deleted versions and return the numbers restored.

        Without `versions`, restores the latest version when it is deleted and not
        destroyed. Returns an empty list when there is nothing to restore.
        """
        history = self.history(account_id, with_fields=False)
        if history is None:
            return []
        deleted = {
            info.version
            for info in history.versions
            if info.deletion_time and not info.destroyed
        }
        requested = versions if versions is not None else [history.current_version]
        chosen = sorted(version for version in set(requested) if version in deleted)
        if not chosen:
            return []

        self._call(
            "undelete",
            lambda: self._client.secrets.kv.v2.undelete_secret_versions(
                path=self._path(account_id), versions=chosen, mount_point=self._mount
            ),
        )
        return chosen

    def list_accounts(self) -> list[str]:
        """Return the sorted ids of every account with a KV entry, installed or not.

        An entry whose latest version is deleted is still listed. Use history() for its state.
        """
        # NOTE: one LIST request without pagination returns every key at once. The tests
        # list about a hundred accounts, so much larger prefixes are untested.
        try:
            response = self._call(
                "list",
                lambda: self._client.secrets.kv.v2.list_secrets(
                    path=self._prefix, mount_point=self._mount
                ),
                missing_ok=True,
            )
        except _Missing:
            return []
        keys = (response.get("data") or {}).get("keys") or []
        return sorted(key for key in keys if isinstance(key, str) and not key.endswith("/"))

    def history(self, account_id: str, *, with_fields: bool = True) -> AccountHistory | None:
        """Return the account's version history, or None when it has no KV entry.

        With `with_fields`, reads each live version to add irisAppId, installedAt and
        the masked clientId. The client secret is read with the version but never kept.
        """
        try:
            response = self._call(
                "read metadata",
                lambda: self._client.secrets.kv.v2.read_secret_metadata(
                    path=self._path(account_id), mount_point=self._mount
                ),
                missing_ok=True,
            )
        except _Missing:
            return None

        history = parse_metadata(account_id, response.get("data") or {})
        if not with_fields:
            return history
        versions = tuple(
            self._with_fields(account_id, info) if info.live else info
            for info in history.versions
        )
        return replace(history, versions=versions)

    def _with_fields(self, account_id: str, info: VersionInfo) -> VersionInfo:
        response = self._read_version(account_id, info.version)
        if response is None:
            return info
        fields = response["data"]["data"] or {}
        client_id = fields.get("clientId")
        return replace(
            info,
            iris_app_id=fields.get("irisAppId"),
            installed_at=fields.get("installedAt"),
            client_id_hint=mask(client_id) if isinstance(client_id, str) else None,
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

    def _secret(self, client_id: str, client_secret: str, iris_app_id: str | None) -> dict:
        installed_at = datetime.fromtimestamp(self._clock(), tz=timezone.utc)
        return {
            "clientId": client_id,
            "clientSecret": client_secret,
            "irisAppId": iris_app_id,
            "installedAt": installed_at.isoformat().replace("+00:00", "Z"),
        }

    def _read_version(
        self, account_id: str, version: int | None = None, *, raise_on_deleted: bool = True
    ) -> dict | None:
        """Read one KV version (the latest by default), or None when it is missing or deleted.

        With raise_on_deleted=False, a soft-deleted version is returned with empty data.
        """
        try:
            return self._call(
                "read",
                lambda: self._client.secrets.kv.v2.read_secret_version(
                    path=self._path(account_id),
                    version=version,
                    mount_point=self._mount,
                    raise_on_deleted_version=raise_on_deleted,
                ),
                missing_ok=True,
            )
        except _Missing:
            return None

    def _read_latest(self, account_id: str) -> tuple[dict, int]:
        """Return the latest version's data ({} when deleted) and number (0 when none exists).

        NOTE: a soft-deleted latest version has no readable deliveryIssuedAt, so any
        delivery is applied over it, however old.
        """
        response = self._read_version(account_id, raise_on_deleted=False)
        if response is None:
            # A destroyed latest version reads as missing but still has a version number.
            return {}, self._current_version(account_id)
        data = response["data"]["data"] or {}
        metadata = response["data"]["metadata"] or {}
        return data, int(metadata.get("version") or 0)

    def _current_version(self, account_id: str) -> int:
        history = self.history(account_id, with_fields=False)
        return history.current_version if history is not None else 0

    def delivery_is_stale(self, account_id: str, issued_at: int) -> bool:
        """Tell whether the live version was written by a delivery issued after `issued_at`.

        Lets an uninstall that arrives late leave a newer install alone.
        """
        data, _ = self._read_latest(account_id)
        stored_at = data.get("deliveryIssuedAt")
        return isinstance(stored_at, int) and stored_at > issued_at

    def _write_if_version(self, account_id: str, secret: dict, version: int) -> int | None:
        """Write with check-and-set `version`, returning the new version or None on conflict."""
        try:
            response = self._client.secrets.kv.v2.create_or_update_secret(
                path=self._path(account_id), secret=secret, cas=version, mount_point=self._mount
            )
        except hvac.exceptions.InvalidRequest as exc:
            if "check-and-set" in str(exc):
                return None
            raise
        return int(response["data"]["version"])

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
        """Run one Vault operation, logging in again once on 403, translating every error.

        Records the duration in the Vault metrics, and the reason when it fails.
        A missing path is a normal result, not an error.
        """
        started = time.perf_counter()
        for attempt in (1, 2):
            try:
                if action != "login":
                    self._prepare_token()
                result = operation()
                metrics.record_vault(action, time.perf_counter() - started)
                return result
            except hvac.exceptions.InvalidPath as exc:
                if missing_ok:
                    metrics.record_vault(action, time.perf_counter() - started)
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
        metrics.record_vault(action, time.perf_counter() - started, _reason_code(error))
        log.error("Vault %s failed: %s", action, reason)
        if isinstance(error, hvac.exceptions.Forbidden):
            advice = "check that the service's Vault token or role is valid and has its policy"
        else:
            advice = "the request can be retried once Vault is back"
        raise VaultUnavailable(
            f"Vault {action} failed: {reason}; {advice}"
        ) from error


class _Missing(Exception):
    """Internal signal that the KV path has no live version."""


def _reason_code(error: Exception) -> str:
    """Classify an hvac or requests error into a short metric label."""
    if isinstance(error, hvac.exceptions.VaultDown):
        return "sealed"
    if isinstance(error, hvac.exceptions.Forbidden):
        return "denied"
    if isinstance(error, requests.Timeout):
        return "timeout"
    if isinstance(error, requests.ConnectionError):
        return "connection"
    return "other"


def _same_credentials(
    stored: dict, client_id: str, client_secret: str, iris_app_id: str | None
) -> bool:
    stored_secret = stored.get("clientSecret")
    return (
        stored.get("clientId") == client_id
        and stored.get("irisAppId") == iris_app_id
        and isinstance(stored_secret, str)
        and hmac.compare_digest(stored_secret.encode(), client_secret.encode())
    )


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

"""Version history of an account's KV v2 entry, without its secret.

KV v2 keeps each install as a version. Deleting the latest version (an uninstall) marks
it with a deletion_time and keeps its data for undelete; destroying it removes the data.
Either way GET /token treats the account as not installed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One KV version of an account, without its secret.

    `client_id_hint` is the clientId masked to its last 4 characters. The non-secret
    fields are None when the version is deleted or destroyed, because Vault no longer
    returns its data.
    """

    version: int
    created_time: str
    deletion_time: str | None
    destroyed: bool
    iris_app_id: str | None = None
    installed_at: str | None = None
    client_id_hint: str | None = None

    @property
    def live(self) -> bool:
        """Whether the version can still be read: neither deleted nor destroyed."""
        return not self.deletion_time and not self.destroyed


@dataclass(frozen=True, slots=True)
class AccountHistory:
    """An account's KV metadata: the latest version number and every kept version."""

    account_id: str
    current_version: int
    created_time: str
    updated_time: str
    versions: tuple[VersionInfo, ...]

    @property
    def latest(self) -> VersionInfo | None:
        """The latest version, or None when Vault no longer keeps it."""
        for info in self.versions:
            if info.version == self.current_version:
                return info
        return None

    @property
    def installed(self) -> bool:
        """Whether the latest version is live, which is what GET /token reads."""
        latest = self.latest
        return latest is not None and latest.live


def mask(value: str) -> str:
    """Return `value` with all but its last 4 characters replaced by '*'.

    Values of 8 characters or fewer are fully masked, so little of a short id shows.
    """
    if len(value) <= 8:
        return "*" * len(value)
    return "*" * (len(value) - 4) + value[-4:]


def parse_metadata(account_id: str, data: dict) -> AccountHistory:
    """Build an AccountHistory from the `data` of a KV v2 metadata response."""
    versions = []
    for number, raw in sorted((data.get("versions") or {}).items(), key=lambda item: int(item[0])):
        versions.append(
            VersionInfo(
                version=int(number),
                created_time=raw.get("created_time") or "",
                deletion_time=raw.get("deletion_time") or None,
                destroyed=bool(raw.get("destroyed")),
            )
        )
    return AccountHistory(
        account_id=account_id,
        current_version=int(data.get("current_version") or 0),
        created_time=data.get("created_time") or "",
        updated_time=data.get("updated_time") or "",
        versions=tuple(versions),
    )

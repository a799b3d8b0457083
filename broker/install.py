"""Validation of Trackunit's install callback body.

parse_install_event() checks the decoded JSON once, at the boundary, and returns an
InstallEvent that the rest of the service trusts. Each error names the field. No error
message contains a submitted value other than `type`, because the body carries a secret.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

from .errors import InvalidRequest

# The lower-case hyphenated form that canonical_account_id() returns, checked first because
# it is what callers send on the hot path.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
MAX_ID_LENGTH = 256
MAX_SECRET_LENGTH = 1024
EVENT_INSTALLED = "INSTALLED"
# The app lifecycle's uninstall event. It needs accountId only, and any credentials in it are ignored.
EVENT_UNINSTALLED = "UNINSTALLED"


@dataclass(frozen=True, slots=True)
class InstallEvent:
    """A validated install callback. `account_id` is a canonical lower-case UUID."""

    type: str
    account_id: str
    iris_app_id: str | None
    client_id: str = ""
    client_secret: str = field(default="", repr=False)


def parse_install_event(body: object) -> InstallEvent:
    """Validate a decoded callback body, raising InvalidRequest that names the bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest(
            f"The body must be a JSON object, not {_json_type(body)}", field="body"
        )

    event_type = _required_string(body, "type", MAX_ID_LENGTH)
    account_id = _account_id(body)
    iris_app_id = _optional_string(body, "irisAppId", MAX_ID_LENGTH)
    if event_type != EVENT_INSTALLED:
        return InstallEvent(type=event_type, account_id=account_id, iris_app_id=iris_app_id)

    return InstallEvent(
        type=event_type,
        account_id=account_id,
        iris_app_id=iris_app_id,
        client_id=_required_string(body, "clientId", MAX_ID_LENGTH),
        client_secret=_required_string(body, "clientSecret", MAX_SECRET_LENGTH),
    )


def canonical_account_id(raw: str) -> str | None:
    """Return the account id as a lower-case hyphenated UUID, or None if it is not one.

    Only the 36-character hyphenated form is accepted, so '../x', 'a/b' or '%2e%2e' can
    never reach a Vault path.
    """
    if len(raw) != 36:
        return None
    if _CANONICAL_UUID.match(raw):
        return raw
    try:
        parsed = uuid.UUID(raw)
    except ValueError:
        return None
    canonical = str(parsed)
    return canonical if canonical == raw.lower() else None


def _account_id(body: dict) -> str:
    raw = _required_string(body, "accountId", 36)
    account_id = canonical_account_id(raw)
    if account_id is None:
        raise InvalidRequest(
            "accountId must be a UUID such as 6b5cb246-7945-4bb6-bec5-2a1413ffd1b3",
            field="accountId",
        )
    return account_id


def _required_string(body: dict, name: str, max_length: int) -> str:
    if name not in body or body[name] is None:
        raise InvalidRequest(f"{name} is missing", field=name)
    value = _optional_string(body, name, max_length)
    if not value or not value.strip():
        raise InvalidRequest(f"{name} must not be empty", field=name)
    return value


def _optional_string(body: dict, name: str, max_length: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(
            f"{name} must be a string, not {_json_type(value)}", field=name
        )
    if len(value) > max_length:
        raise InvalidRequest(
            f"{name} is longer than the maximum of {max_length} characters", field=name
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise InvalidRequest(f"{name} must not contain control characters", field=name)
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"

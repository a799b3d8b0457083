"""Helpers for the token cache tests: a scripted token endpoint, a manual executor, installs.

FakeTokenEndpoint responds on the requests-mock adapter from conftest's `trackunit`
fixture the way Trackunit's apptoken endpoint does, and records every call.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from tests.conftest import API_KEY, TOKEN_URL

INSTALL_HEADERS = {"Content-Type": "application/json"}


@dataclass
class TokenCall:
    """One request the fake endpoint received."""

    client_id: str
    scopes: tuple[str, ...]


@dataclass
class FakeTokenEndpoint:
    """A scripted apptoken endpoint. `granted` maps client ids to the scopes they may get.

    `failure` makes every call fail with that HTTP status (500, 503 ...) until cleared.
    An unknown client or wrong secret gets 401 invalid_client, a scope outside the
    client's grant gets 400 invalid_scope.
    """

    granted: dict[str, set[str]] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    expires_in: int = 3600
    failure: int | None = None
    calls: list[TokenCall] = field(default_factory=list)
    _serial: itertools.count = field(default_factory=itertools.count)

    def register(self, client_id: str, client_secret: str, scopes: set[str]) -> None:
        self.granted[client_id] = set(scopes)
        self.secrets[client_id] = client_secret

    def attach(self, adapter) -> None:
        adapter.register_uri("POST", TOKEN_URL, json=self._answer)

    def _answer(self, request, context):
        form = {key: values[0] for key, values in parse_qs(request.text or "").items()}
        client_id = form.get("client_id", "")
        scopes = tuple(form.get("scope", "").split())
        self.calls.append(TokenCall(client_id, scopes))

        if self.failure is not None:
            context.status_code = self.failure
            return {"error": "server_error"}
        if self.secrets.get(client_id) != form.get("client_secret"):
            context.status_code = 401
            return {"error": "invalid_client"}
        if not set(scopes) <= self.granted[client_id]:
            context.status_code = 400
            return {"error": "invalid_scope"}

        context.status_code = 200
        return {
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "access_token": f"token-{client_id}-{next(self._serial)}",
            "scope": " ".join(sorted(scopes)),
        }


class ManualExecutor:
    """An executor that queues tasks until the test runs them, so nothing runs by surprise."""

    def __init__(self) -> None:
        self.tasks: list = []

    def submit(self, task, *args):
        self.tasks.append((task, args))

    def run_all(self) -> int:
        """Run every queued task, including ones queued meanwhile; return how many ran."""
        count = 0
        while self.tasks:
            task, args = self.tasks.pop(0)
            task(*args)
            count += 1
        return count

    def shutdown(self, wait: bool = True) -> None:
        self.tasks.clear()


def new_account() -> str:
    return str(uuid.uuid4())


def install(client, account_id: str, client_id: str, client_secret: str = "secret-0123456789"):
    """POST an INSTALLED callback for the account and return the response."""
    return client.post(
        "/appinstall",
        json={
            "type": "INSTALLED",
            "accountId": account_id,
            "clientId": client_id,
            "clientSecret": client_secret,
        },
        headers=INSTALL_HEADERS,
    )


def token(client, account_id: str, **params):
    """GET /token/<accountId> with the internal key and the given query parameters."""
    return client.get(
        f"/token/{account_id}",
        query_string=params,
        headers={"Authorization": f"Bearer {API_KEY}"},
    )

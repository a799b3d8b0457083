"""Vault client construction and authentication.

make_vault_client() builds one hvac client per process. The authenticator puts a Vault
token on that client: login() runs at start-up and again when Vault answers 403, which
is how an expired token shows. The token only ever travels in the X-Vault-Token header
and is never logged.
"""

from __future__ import annotations

import logging
from typing import Protocol

import hvac

from .config import Settings

log = logging.getLogger(__name__)


class VaultAuthenticator(Protocol):
    """Something that can put a valid Vault token on an hvac client."""

    def login(self, client: hvac.Client) -> None:
        """Set client.token to a fresh token, raising hvac or requests errors on failure."""


class StaticTokenAuth:
    """Authentication with a fixed token from VAULT_TOKEN. login() cannot renew it."""

    def __init__(self, token: str):
        self._token = token

    def __repr__(self) -> str:
        return "StaticTokenAuth(token=<redacted>)"

    def login(self, client: hvac.Client) -> None:
        client.token = self._token


def make_authenticator(settings: Settings) -> VaultAuthenticator:
    """Return the authenticator that VAULT_AUTH_METHOD selects."""
    if settings.vault_auth_method == "token":
        return StaticTokenAuth(settings.vault_token or "")
    # TODO: Kubernetes auth is not implemented yet, so VAULT_AUTH_METHOD=kubernetes fails.
    raise NotImplementedError("VAULT_AUTH_METHOD=kubernetes is not supported yet")


def make_vault_client(settings: Settings) -> hvac.Client:
    """Build an unauthenticated hvac client for VAULT_ADDR with the configured timeout."""
    verify: bool | str = settings.vault_cacert or True
    # An empty token stops hvac from reading VAULT_TOKEN or ~/.vault-token by itself.
    return hvac.Client(
        url=settings.vault_addr,
        token="",
        namespace=settings.vault_namespace,
        timeout=settings.vault_timeout,
        verify=verify,
    )

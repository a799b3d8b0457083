"""One token fetch: read the credentials from Vault, ask the token endpoint, learn refusals.

A fetch never touches the cache. It returns a FetchOutcome that TokenBroker applies
under its lock, so the rules for what gets cached live in one place.

Learning refused optional scopes: when the endpoint returns `invalid_scope` for a set
that contains optional scopes, the fetch retries once with the required scopes only.
If that succeeds and the set held one optional scope, that scope is the refused one.
With several, each optional scope is tried alone next to the required ones, so the
outcome names exactly the refused ones. A bare request (no `scope`) then gets a token
for everything granted. This costs at most 3 + (number of optional scopes) calls, once
per installation and process.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from .credentials import CredentialStore, StoredCredentials
from .errors import BrokerError, NotInstalled, ScopeNotGranted, UpstreamRejected
from .scopes import ScopePolicy, ScopeSet
from .token_state import AccountFacts, CachedToken
from .trackunit import TokenClient

log = logging.getLogger(__name__)

# OAuth errors that mean the stored credentials themselves no longer work.
CREDENTIALS_REJECTED = frozenset({"invalid_client", "unauthorized_client"})


@dataclass(slots=True)
class FetchOutcome:
    """The result of one fetch, for TokenBroker to apply.

    `version` is the KV version read, None when Vault failed or the account has no
    credentials (`not_installed`). `extra` contains tokens minted while learning refusals,
    keyed by their explicit scope set. `refused` is set when refusals were learned.
    `rejected` is set when the endpoint rejected the credentials.
    """

    read_started: float
    version: int | None = None
    not_installed: bool = False
    token: CachedToken | None = None
    error: BrokerError | None = None
    extra: dict[ScopeSet, CachedToken] = field(default_factory=dict)
    refused: frozenset[str] | None = None
    rejected: UpstreamRejected | None = None


class TokenFetcher:
    """Fetches tokens for an account and scope set, learning refused optional scopes."""

    def __init__(
        self,
        store: CredentialStore,
        client: TokenClient,
        policy: ScopePolicy,
        *,
        expiry_margin: float,
        refresh_ahead_fraction: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._store = store
        self._client = client
        self._policy = policy
        self._margin = expiry_margin
        self._ahead = refresh_ahead_fraction
        self._clock = clock

    def fetch(
        self, account_id: str, requested: ScopeSet | None, known: AccountFacts | None
    ) -> FetchOutcome:
        """Fetch a token for `requested` (None: every granted scope); never raises BrokerError.

        `known` carries refusals learned earlier; they apply only while the stored
        credentials are still at the version they were learned for.
        """
        outcome = FetchOutcome(read_started=self._clock())
        try:
            credentials = self._store.load(account_id)
        except BrokerError as exc:
            outcome.error = exc
            return outcome
        if credentials is None:
            outcome.not_installed = True
            outcome.error = NotInstalled(
                f"No credentials are stored for account {account_id}; "
                "the account must install the app first",
                accountId=account_id,
            )
            return outcome

        outcome.version = credentials.version
        refused = frozenset()
        if known is not None and known.kv_version == credentials.version:
            refused = known.refused
        if requested is not None and refused.intersection(requested):
            outcome.error = scope_not_granted(account_id, requested, refused)
            return outcome

        scopes = requested if requested is not None else self._policy.granted_set(refused)
        try:
            outcome.token = self.issue(account_id, credentials, scopes)
        except UpstreamRejected as exc:
            oauth_error = exc.details.get("oauth_error")
            if oauth_error in CREDENTIALS_REJECTED:
                outcome.rejected = exc
                outcome.error = exc
            elif oauth_error == "invalid_scope" and self._policy.optional_in(scopes):
                self._learn(outcome, credentials, requested, scopes, refused, exc)
            else:
                outcome.error = exc
        except BrokerError as exc:
            outcome.error = exc
        return outcome

    def issue(
        self, account_id: str, credentials: StoredCredentials, scopes: ScopeSet
    ) -> CachedToken:
        """Ask the token endpoint for one token, raising an UpstreamError subclass on failure."""
        requested_at = self._clock()
        issued = self._client.fetch(
            account_id, credentials.client_id, credentials.client_secret, scopes
        )

        expires_at = requested_at + issued.expires_in
        fresh_until = expires_at - self._margin
        refresh_at = fresh_until - self._ahead * max(0.0, fresh_until - requested_at)
        if issued.expires_in <= self._margin:
            log.warning(
                "Token for account %s lives %d s, within the %g s expiry margin; "
                "it is served once and not cached",
                account_id,
                issued.expires_in,
                self._margin,
            )
        log.info(
            "Fetched a token for account %s (scope %s), expires in %d s",
            account_id,
            " ".join(scopes),
            issued.expires_in,
        )
        return CachedToken(
            access_token=issued.access_token,
            # A response without `scope` grants exactly the requested set (RFC 6749 5.1).
            scope=issued.scope or " ".join(scopes),
            issued_at=requested_at,
            expires_at=expires_at,
            fresh_until=fresh_until,
            refresh_at=refresh_at,
            kv_version=credentials.version,
        )

    def _learn(
        self,
        outcome: FetchOutcome,
        credentials: StoredCredentials,
        requested: ScopeSet | None,
        scopes: ScopeSet,
        known_refused: frozenset[str],
        rejection: UpstreamRejected,
    ) -> None:
        """Find which optional scopes in `scopes` the account refused, and finish the request."""
        account_id = credentials.account_id
        required = self._policy.required
        tried = self._policy.optional_in(scopes)
        log.info(
            "Token endpoint returned invalid_scope for account %s; retrying with the "
            "required scopes only",
            account_id,
        )
        try:
            outcome.extra[required] = self.issue(account_id, credentials, required)
        except BrokerError as exc:
            if isinstance(exc, UpstreamRejected) and exc.details.get("oauth_error") == "invalid_scope":
                # NOTE: nothing is remembered here, so while TRACKUNIT_SCOPES is wrong every
                # request for the account costs two calls to the token endpoint.
                log.error(
                    "Token endpoint rejected the required scopes of account %s; "
                    "check TRACKUNIT_SCOPES against the app manifest",
                    account_id,
                )
            outcome.error = exc
            return

        refused = set(known_refused)
        if len(tried) == 1:
            refused.add(tried[0])
        else:
            for scope in tried:
                probe = tuple(sorted((*required, scope)))
                try:
                    outcome.extra[probe] = self.issue(account_id, credentials, probe)
                except UpstreamRejected as exc:
                    if exc.details.get("oauth_error") != "invalid_scope":
                        outcome.error = exc
                        return
                    refused.add(scope)
                except BrokerError as exc:
                    outcome.error = exc
                    return

        outcome.refused = frozenset(refused)
        log.warning(
            "Account %s did not grant the optional scope(s) %s; requests that need them "
            "get 403 scope_not_granted until the account installs the app again",
            account_id,
            " ".join(sorted(refused)) or "(none)",
        )

        if requested is not None:
            if outcome.refused.intersection(requested):
                outcome.error = scope_not_granted(account_id, requested, outcome.refused)
            else:
                # The endpoint refused the set but granted each optional scope alone.
                outcome.error = rejection
            return

        target = self._policy.granted_set(outcome.refused)
        minted = outcome.extra.get(target)
        if minted is not None:
            outcome.token = replace(minted)
            return
        try:
            outcome.token = self.issue(account_id, credentials, target)
        except BrokerError as exc:
            outcome.error = exc


def scope_not_granted(
    account_id: str, requested: ScopeSet, refused: frozenset[str]
) -> ScopeNotGranted:
    """Build the 403 for a request that needs scopes the account refused."""
    denied = " ".join(scope for scope in requested if scope in refused)
    return ScopeNotGranted(
        f"Account {account_id} did not grant the optional scope(s) {denied} when it "
        "installed the app; ask without them, or have the customer grant them and install again",
        scope=denied,
        accountId=account_id,
    )

"""The rule that ties a verified Trackunit-Identity token to the callback body it came with.

Trackunit does not document the claim names of the token, so the rule is defensive:

- A claim named in ACCOUNT_CLAIMS must be a string holding the body's `accountId`
  (compared as a UUID, so letter case does not matter).
- A claim named in APP_CLAIMS must be a string equal to the body's `irisAppId`. A body
  without `irisAppId` does not match a token that names an app.
- A token that carries none of these claims passes this rule. The signature, `exp` and
  the other checks still apply.

Only names that mean the same thing as the body fields are bound. Claims such as `sub`
or `appId` may hold another identifier (a user, an internal app id), so they are only
logged at DEBUG by the verifier, which shows which claims real tokens carry.
"""

from __future__ import annotations

from .errors import IdentityRejected
from .install import InstallEvent, canonical_account_id

# NOTE: the token binds no clientId or clientSecret, so a captured token can carry other
# credentials for its own account until its exp.
ACCOUNT_CLAIMS = ("accountId", "account_id")
APP_CLAIMS = ("irisAppId", "iris_app_id")


def bind_claims_to_event(claims: dict[str, object], event: InstallEvent) -> None:
    """Raise IdentityRejected (claim_mismatch) when a bound claim contradicts the body."""
    for name in ACCOUNT_CLAIMS:
        if name not in claims:
            continue
        value = claims[name]
        if not isinstance(value, str) or canonical_account_id(value) != event.account_id:
            raise IdentityRejected(
                f"The token claim {name} names another account than the body's accountId",
                reason="claim_mismatch",
                field="accountId",
            )

    for name in APP_CLAIMS:
        if name not in claims:
            continue
        value = claims[name]
        if not isinstance(value, str) or value != event.iris_app_id:
            raise IdentityRejected(
                f"The token claim {name} names another app than the body's irisAppId",
                reason="claim_mismatch",
                field="irisAppId",
            )

"""Measure the resident memory one cached account costs in the service's TokenBroker.

Run it in a fresh process, so nothing else grows the heap between the two readings:

    python -m bench.memory --accounts 100000 --token-bytes 1024

It builds the real TokenBroker and fills it through its public get(), the path a cache
miss takes in production. Only the Vault store and the token client are replaced by
in-memory stand-ins that return the real StoredCredentials and IssuedToken types
instantly, because 100,000 Vault reads and token POSTs would take minutes and add nothing
to what stays in memory. It prints one JSON object: the resident set size (VmRSS) before
and after, and the bytes per account beyond the token's own characters.
"""

from __future__ import annotations

import argparse
import gc
import json
import secrets
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from broker.credentials import StoredCredentials  # noqa: E402
from broker.tokens import TokenBroker  # noqa: E402
from broker.trackunit import IssuedToken  # noqa: E402

SCOPES = ("account.asset.manage", "asset.view")


class _InstantStore:
    """Returns made-up credentials for any account, as CredentialStore.load() would."""

    def load(self, account_id: str) -> StoredCredentials:
        return StoredCredentials(
            account_id=account_id,
            client_id="bench-client",
            client_secret="bench-secret",
            iris_app_id=None,
            installed_at=None,
            version=1,
        )


class _InstantTokenClient:
    """Issues a fresh random token of a fixed length, as TokenClient.fetch() would."""

    def __init__(self, token_bytes: int):
        self._token_bytes = token_bytes

    def fetch(self, account_id: str, client_id: str, client_secret: str, scopes) -> IssuedToken:
        token = secrets.token_urlsafe(self._token_bytes)[: self._token_bytes]
        # A parsed response yields a new scope string per token, so build one here too.
        return IssuedToken(
            access_token=token, token_type="Bearer", expires_in=3600, scope=" ".join(scopes)
        )


def resident_bytes() -> int:
    """Return this process's resident set size (VmRSS in /proc/self/status) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmRSS line")


def measure(accounts: int, token_bytes: int) -> dict[str, float]:
    """Fill a TokenBroker with `accounts` tokens and return the memory figures."""
    broker = TokenBroker(
        _InstantStore(),
        _InstantTokenClient(token_bytes),
        scopes=SCOPES,
        expiry_margin=60,
        max_size=accounts + 1,
        wait_timeout=30,
    )
    # One warm-up call creates whatever the first get() allocates once per process.
    broker.get(str(uuid.uuid4()))
    account_ids: list[str] = []
    gc.collect()
    before = resident_bytes()

    # The ids are made inside the measured span because the cache keeps each one as its key.
    for _ in range(accounts):
        account_id = str(uuid.uuid4())
        account_ids.append(account_id)
        broker.get(account_id)
    gc.collect()
    after = resident_bytes()

    cached = sum(1 for account_id in account_ids if broker.get(account_id).cache_hit)
    growth = after - before
    return {
        "accounts": accounts,
        "cached": cached,
        "token_bytes": token_bytes,
        "rss_before_mib": before / 2**20,
        "rss_after_mib": after / 2**20,
        "bytes_per_account": growth / accounts,
        "bytes_per_account_beyond_token": growth / accounts - token_bytes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure memory per cached account.")
    parser.add_argument("--accounts", type=int, default=100_000, help="accounts to cache")
    parser.add_argument("--token-bytes", type=int, default=1024, help="access token length")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.accounts, args.token_bytes)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

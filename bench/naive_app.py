"""The naive design the benchmark compares against: read credentials from Vault on every request.

This is what a team might write without iris-token-broker: each `GET /token/<accountId>`
reads the account's credentials from Vault KV v2 with hvac, then returns a token.
It is generous to the naive design in one way. It keeps the token it got for those
credentials in a plain dict and POSTs to the token endpoint only on a miss, so the
measured cost is the Vault read alone. The dict ignores expiry, which is safe only because
a benchmark run is shorter than the stand-in's one-hour tokens. A version that also POSTs on every request is
slower still, so the ratio the benchmark reports is a lower bound.

It runs under the same gunicorn.conf.py and reads the same environment variables as the
service: `gunicorn -c gunicorn.conf.py bench.naive_app:app`.
"""

from __future__ import annotations

import os
import threading

import hvac
import requests
from flask import Flask, jsonify, request

from broker.internal_auth import require_internal_key

app = Flask(__name__)

_vault = hvac.Client(url=os.environ["VAULT_ADDR"], token=os.environ["VAULT_TOKEN"], timeout=5)
_mount = os.environ.get("VAULT_KV_MOUNT", "secret")
_prefix = os.environ.get("VAULT_KV_PREFIX", "iris-token-broker/accounts")
_token_url = os.environ["TRACKUNIT_TOKEN_URL"]
_scope = " ".join(sorted(os.environ["TRACKUNIT_SCOPES"].split()))
_api_keys = tuple(key.strip().encode() for key in os.environ["INTERNAL_API_KEYS"].split(","))
_session = requests.Session()
_tokens: dict[tuple[str, str, str], dict] = {}
_tokens_lock = threading.Lock()


@app.get("/healthz")
def healthz():
    """Report that the process is up."""
    return jsonify(status="ok")


@app.get("/token/<account_id>")
def token(account_id: str):
    """Read the account's credentials from Vault, then return the token issued for them."""
    require_internal_key(request.headers.get("Authorization"), _api_keys)
    secret = _vault.secrets.kv.v2.read_secret_version(
        path=f"{_prefix}/{account_id}", mount_point=_mount, raise_on_deleted_version=True
    )
    data = secret["data"]["data"]
    key = (account_id, data["clientId"], data["clientSecret"])

    with _tokens_lock:
        issued = _tokens.get(key)
    if issued is None:
        response = _session.post(
            _token_url,
            data={
                "grant_type": "client_credentials",
                "client_id": data["clientId"],
                "client_secret": data["clientSecret"],
                "scope": _scope,
            },
            timeout=10,
        )
        response.raise_for_status()
        issued = response.json()
        with _tokens_lock:
            _tokens[key] = issued

    return jsonify(
        access_token=issued["access_token"],
        token_type="Bearer",
        expires_in=issued["expires_in"],
        scope=issued["scope"],
    )

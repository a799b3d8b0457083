"""vault/policy.hcl against the session's OpenBao: the service works with a token limited
to the policy, and that token reaches nothing outside the service's KV prefix.

Each test loads the policy rendered for its own prefix and creates a token with that
policy alone (no `default` policy), so the policy must be complete by itself.
"""

from __future__ import annotations

import uuid

import hvac
import hvac.exceptions
import pytest

from broker.credentials import CredentialStore
from broker.vault_auth import StaticTokenAuth, make_vault_client
from tests.conftest import TOKEN_URL, with_settings
from vault.local_server import render_policy

ACCOUNT_ID = "6b5cb246-7945-4bb6-bec5-2a1413ffd1b3"
INSTALL_EVENT = {
    "type": "INSTALLED",
    "accountId": ACCOUNT_ID,
    "clientId": "iris-client-1",
    "clientSecret": "iris-secret-value-1",
    "irisAppId": "app-1",
}


@pytest.fixture
def service_policy(openbao, kv_prefix):
    """The service policy, rendered for this test's prefix and loaded under a unique name."""
    root = openbao.client()
    name = f"iris-token-broker-{uuid.uuid4().hex[:8]}"
    root.sys.create_or_update_policy(name, render_policy("secret", kv_prefix))
    yield name
    root.sys.delete_policy(name)


def create_limited_token(openbao, policy: str, **options) -> str:
    """Create a token that carries only `policy` and return it."""
    created = openbao.client().auth.token.create(
        policies=[policy], no_default_policy=True, ttl="1h", **options
    )
    return created["auth"]["client_token"]


@pytest.fixture
def limited_token(openbao, service_policy):
    """A token that carries only the service policy."""
    return create_limited_token(openbao, service_policy)


@pytest.fixture
def limited(openbao, limited_token) -> hvac.Client:
    """An hvac client with the limited token."""
    return openbao.client(limited_token)


@pytest.fixture
def seeded(openbao, kv_prefix):
    """Entries the root token writes inside the prefix, beside it, and on another mount."""
    root = openbao.client()
    sibling = f"{kv_prefix}-other"
    parent = kv_prefix.rsplit("/", 1)[0]
    root.secrets.kv.v2.create_or_update_secret(
        path=f"{kv_prefix}/{ACCOUNT_ID}", secret={"clientId": "a", "clientSecret": "b"}, mount_point="secret"
    )
    root.secrets.kv.v2.create_or_update_secret(
        path=f"{sibling}/{ACCOUNT_ID}", secret={"clientId": "x", "clientSecret": "y"}, mount_point="secret"
    )
    root.secrets.kv.v2.create_or_update_secret(
        path=f"{parent}/unrelated", secret={"value": "z"}, mount_point="secret"
    )
    return {"inside": f"{kv_prefix}/{ACCOUNT_ID}", "sibling": f"{sibling}/{ACCOUNT_ID}", "parent": parent}


def test_whole_flow_with_limited_token(make_app, settings, limited_token, trackunit, auth_header):
    app = make_app(with_settings(settings, vault_token=limited_token))
    client = app.test_client()
    trackunit.register_uri(
        "POST",
        TOKEN_URL,
        json={"access_token": "access-1", "token_type": "Bearer", "expires_in": 3600},
    )

    ready = client.get("/readyz")
    installed = client.post("/appinstall", json=INSTALL_EVENT)
    reinstalled = client.post("/appinstall", json=INSTALL_EVENT)
    token = client.get(f"/token/{ACCOUNT_ID}", headers=auth_header)

    assert ready.status_code == 200
    assert installed.status_code == 200
    assert reinstalled.json["version"] == 2
    assert token.status_code == 200
    assert token.json["access_token"] == "access-1"


def test_kv_operations_allowed_inside_prefix(limited, kv_prefix, seeded):
    kv = limited.secrets.kv.v2
    path = seeded["inside"]

    written = kv.create_or_update_secret(path=path, secret={"clientId": "c"}, mount_point="secret")
    read = kv.read_secret_version(path=path, mount_point="secret", raise_on_deleted_version=True)
    listed = kv.list_secrets(path=kv_prefix, mount_point="secret")
    history = kv.read_secret_metadata(path=path, mount_point="secret")
    kv.delete_secret_versions(path=path, versions=[1], mount_point="secret")
    kv.undelete_secret_versions(path=path, versions=[1], mount_point="secret")
    kv.delete_latest_version_of_secret(path=path, mount_point="secret")

    assert written["data"]["version"] == 2
    assert read["data"]["data"] == {"clientId": "c"}
    assert listed["data"]["keys"] == [ACCOUNT_ID]
    assert sorted(history["data"]["versions"]) == ["1", "2"]


def test_token_renews_and_looks_up_itself(limited, service_policy):
    renewed = limited.auth.token.renew_self()
    looked_up = limited.auth.token.lookup_self()

    assert renewed["auth"]["lease_duration"] > 0
    assert looked_up["data"]["policies"] == [service_policy]


DENIED_OPERATIONS = {
    "read beside the prefix": lambda kv, paths: kv.read_secret_version(
        path=paths["sibling"], mount_point="secret", raise_on_deleted_version=True
    ),
    "write beside the prefix": lambda kv, paths: kv.create_or_update_secret(
        path=paths["sibling"], secret={"a": "b"}, mount_point="secret"
    ),
    "read in the parent folder": lambda kv, paths: kv.read_secret_version(
        path=f"{paths['parent']}/unrelated", mount_point="secret", raise_on_deleted_version=True
    ),
    "list the parent folder": lambda kv, paths: kv.list_secrets(
        path=paths["parent"], mount_point="secret"
    ),
    "destroy a version": lambda kv, paths: kv.destroy_secret_versions(
        path=paths["inside"], versions=[1], mount_point="secret"
    ),
    "delete all metadata": lambda kv, paths: kv.delete_metadata_and_all_versions(
        path=paths["inside"], mount_point="secret"
    ),
    "change metadata settings": lambda kv, paths: kv.update_metadata(
        path=paths["inside"], max_versions=1, mount_point="secret"
    ),
    "read the mount configuration": lambda kv, paths: kv.read_configuration(mount_point="secret"),
}


@pytest.mark.parametrize("operation", DENIED_OPERATIONS.values(), ids=DENIED_OPERATIONS.keys())
def test_kv_operation_denied_outside_prefix(limited, seeded, operation):
    with pytest.raises(hvac.exceptions.Forbidden):
        operation(limited.secrets.kv.v2, seeded)


DENIED_SYSTEM_CALLS = {
    "list policies": lambda client: client.sys.list_policies(),
    "list secrets engines": lambda client: client.sys.list_mounted_secrets_engines(),
    "create a child token": lambda client: client.auth.token.create(policies=["default"]),
}


@pytest.mark.parametrize("call", DENIED_SYSTEM_CALLS.values(), ids=DENIED_SYSTEM_CALLS.keys())
def test_system_endpoint_denied(limited, call):
    with pytest.raises(hvac.exceptions.Forbidden):
        call(limited)


@pytest.mark.parametrize(
    ("mount", "prefix"),
    [("secret", "iris-token-broker/accounts"), ("kv-iris", "brokers/eu/accounts")],
    ids=["default names", "custom mount and prefix"],
)
def test_render_policy_rewrites_every_path(mount, prefix):
    rendered = render_policy(mount, prefix)
    kv_paths = [
        line.split('"')[1]
        for line in rendered.splitlines()
        if line.startswith('path "') and not line.startswith('path "auth/')
    ]

    assert len(kv_paths) == 4
    for path in kv_paths:
        assert path.startswith(f"{mount}/")
        assert path.endswith(f"/{prefix}/*")


def test_static_token_renewed_when_due(openbao, service_policy, settings, clock):
    token = create_limited_token(openbao, service_policy, period="90s", renewable=True)
    client = make_vault_client(with_settings(settings, vault_token=token))
    authenticator = StaticTokenAuth(token, clock=clock)
    store = CredentialStore(client, authenticator, mount="secret", prefix=settings.vault_kv_prefix)

    store.load(ACCOUNT_ID)
    before = client.auth.token.lookup_self()["data"]
    clock.advance(61)
    store.load(ACCOUNT_ID)
    after = client.auth.token.lookup_self()["data"]

    assert authenticator.lease.renewable is True
    assert not before.get("last_renewal_time")
    assert after.get("last_renewal_time")


def test_root_token_never_renewed(openbao, settings, clock):
    client = make_vault_client(settings)
    authenticator = StaticTokenAuth(openbao.root_token, clock=clock)
    store = CredentialStore(client, authenticator, mount="secret", prefix=settings.vault_kv_prefix)

    store.load(ACCOUNT_ID)
    clock.advance(10**9)
    store.load(ACCOUNT_ID)

    assert authenticator.lease.ttl == 0
    assert not client.auth.token.lookup_self()["data"].get("last_renewal_time")


def test_non_renewable_token_warned_once(openbao, service_policy, settings, clock, caplog):
    token = create_limited_token(openbao, service_policy, renewable=False)
    client = make_vault_client(with_settings(settings, vault_token=token))
    authenticator = StaticTokenAuth(token, clock=clock)
    store = CredentialStore(client, authenticator, mount="secret", prefix=settings.vault_kv_prefix)

    store.load(ACCOUNT_ID)
    clock.advance(2401)
    store.load(ACCOUNT_ID)
    store.load(ACCOUNT_ID)
    warnings = [record for record in caplog.records if "cannot be renewed" in record.getMessage()]

    assert len(warnings) == 1
    assert authenticator.lease is None

"""Kubernetes auth against OpenBao's own kubernetes auth method.

OpenBao checks a service-account token by POSTing a TokenReview to `kubernetes_host`.
A small HTTP server on loopback stands in for that Kubernetes API: it accepts the
tokens a test registers and records every token it was asked about, so a test can see
which token each login sent. The service-account tokens are RS256 JWTs with the claims
Kubernetes puts in them, because OpenBao reads those claims (unverified) before it
asks for the review.
"""

from __future__ import annotations

import json
import contextlib
import os
import signal
import secrets
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import helm_python as helm
import hvac
import jwt
import pytest
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from broker.config import load_settings
from broker.credentials import CredentialStore
from broker.errors import VaultUnavailable
from broker.vault_auth import KubernetesAuth, make_authenticator, make_vault_client
from sandbox import trackunit_standin
from tests.conftest import API_KEY, ROOT, TOKEN_URL, free_port
from vault.local_server import bao_binary, render_policy

NAMESPACE = "iris"
SERVICE_ACCOUNT = "iris-token-broker"
REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
ACCOUNT_ID = "6b5cb246-7945-4bb6-bec5-2a1413ffd1b3"


@dataclass
class ReviewLog:
    """Tokens the stand-in accepts (token to service-account uid and audiences), and
    every token it was asked to review, in order."""

    reviewer_jwt: str
    accepted: dict[str, tuple[str, list[str]]] = field(default_factory=dict)
    reviewed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _TokenReviewHandler(BaseHTTPRequestHandler):
    server: "TokenReviewServer"
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - the name is fixed by http.server
        state = self.server.state
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        if self.path != REVIEW_PATH:
            self._reply(404, {"kind": "Status", "status": "Failure", "code": 404})
            return
        if self.headers.get("Authorization") != f"Bearer {state.reviewer_jwt}":
            self._reply(401, {"kind": "Status", "status": "Failure", "code": 401})
            return

        token = body["spec"]["token"]
        with state.lock:
            state.reviewed.append(token)
            uid, token_audiences = state.accepted.get(token, (None, []))
        # Like the API server, authenticate only for a requested audience the token has,
        # and list it in status.audiences, which OpenBao checks.
        requested = body["spec"].get("audiences") or [API_AUDIENCE]
        audiences = [audience for audience in requested if audience in token_audiences]
        status: dict[str, object] = {"authenticated": False, "error": "token is not valid"}
        if uid is not None and audiences:
            status = {
                "authenticated": True,
                "audiences": audiences,
                "user": {
                    "username": f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}",
                    "uid": uid,
                    "groups": ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}"],
                },
            }
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status}
        self._reply(201, review)

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


class TokenReviewServer(ThreadingHTTPServer):
    """The loopback TokenReview stand-in with its ReviewLog."""

    daemon_threads = True

    def __init__(self, state: ReviewLog):
        super().__init__(("127.0.0.1", 0), _TokenReviewHandler)
        self.state = state

    @property
    def url(self) -> str:
        """The base URL to configure as kubernetes_host."""
        return f"http://127.0.0.1:{self.server_address[1]}"


class ServiceAccountIssuer:
    """Signs service-account JWTs the way the Kubernetes API server does, and registers them."""

    def __init__(self, reviews: ReviewLog):
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._reviews = reviews
        self.uid = str(uuid.uuid4())

    def issue(self, audience: str = API_AUDIENCE) -> str:
        """Return a new token for the service account that the stand-in accepts."""
        claims = {
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}",
            "aud": [audience],
            "jti": secrets.token_hex(8),
            "kubernetes.io": {
                "namespace": NAMESPACE,
                "serviceaccount": {"name": SERVICE_ACCOUNT, "uid": self.uid},
            },
            "kubernetes.io/serviceaccount/namespace": NAMESPACE,
            "kubernetes.io/serviceaccount/service-account.name": SERVICE_ACCOUNT,
            "kubernetes.io/serviceaccount/service-account.uid": self.uid,
        }
        token = jwt.encode(claims, self._key, algorithm="RS256")
        with self._reviews.lock:
            self._reviews.accepted[token] = (self.uid, [audience])
        return token


def _self_signed_ca_pem() -> str:
    """Return a throwaway CA certificate. OpenBao requires one when the local CA is off."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-kubernetes-ca")])
    now = datetime.now(timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class AuthSetup:
    """One kubernetes auth mount with a role bound to the test's service account."""

    mount: str
    role: str
    policy: str


def configure_kubernetes_auth(
    root: hvac.Client,
    kubernetes_api: TokenReviewServer,
    reviews: ReviewLog,
    kv_prefix: str,
    **role_options: object,
) -> AuthSetup:
    """Enable kubernetes auth on a fresh mount, write the service policy and bind a role."""
    suffix = uuid.uuid4().hex[:8]
    setup = AuthSetup(mount=f"k8s-{suffix}", role="iris-token-broker", policy=f"broker-{suffix}")
    root.sys.create_or_update_policy(setup.policy, render_policy("secret", kv_prefix))
    root.sys.enable_auth_method("kubernetes", path=setup.mount)
    root.auth.kubernetes.configure(
        kubernetes_host=kubernetes_api.url,
        kubernetes_ca_cert=_self_signed_ca_pem(),
        token_reviewer_jwt=reviews.reviewer_jwt,
        disable_local_ca_jwt=True,
        mount_point=setup.mount,
    )
    root.auth.kubernetes.create_role(
        setup.role,
        bound_service_account_names=[SERVICE_ACCOUNT],
        bound_service_account_namespaces=[NAMESPACE],
        policies=[setup.policy],
        mount_point=setup.mount,
        **role_options,
    )
    return setup


def remove_kubernetes_auth(root: hvac.Client, setup: AuthSetup) -> None:
    """Disable the test's auth mount and delete its policy."""
    root.sys.disable_auth_method(setup.mount)
    root.sys.delete_policy(setup.policy)


@pytest.fixture
def reviews():
    """The TokenReview stand-in's log, with the reviewer JWT OpenBao must present."""
    return ReviewLog(reviewer_jwt=secrets.token_urlsafe(24))


@pytest.fixture
def kubernetes_api(reviews):
    """The TokenReview stand-in on a free loopback port."""
    server = TokenReviewServer(reviews)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def issuer(reviews):
    """Signs service-account tokens that the stand-in accepts."""
    return ServiceAccountIssuer(reviews)


@pytest.fixture
def auth_setup(openbao, kubernetes_api, reviews, kv_prefix):
    """A kubernetes auth mount whose role grants the service policy for 60 s, renewable."""
    root = openbao.client()
    setup = configure_kubernetes_auth(
        root, kubernetes_api, reviews, kv_prefix, ttl="60s", max_ttl="1h"
    )
    yield setup
    remove_kubernetes_auth(root, setup)


@pytest.fixture
def token_file(tmp_path, issuer):
    """The projected service-account token file, holding a first token."""
    path = tmp_path / "serviceaccount" / "token"
    path.parent.mkdir()
    path.write_text(issuer.issue() + "\n")
    return path


@pytest.fixture
def k8s_env(base_env, token_file):
    """base_env switched to Kubernetes auth with the test's token file, without a role yet."""
    env = dict(base_env)
    del env["VAULT_TOKEN"]
    env.update(VAULT_AUTH_METHOD="kubernetes", VAULT_K8S_TOKEN_PATH=str(token_file))
    return env


@pytest.fixture
def k8s_settings(k8s_env, auth_setup):
    """Settings that select Kubernetes auth on the test's mount and role."""
    return load_settings(
        {**k8s_env, "VAULT_K8S_ROLE": auth_setup.role, "VAULT_K8S_AUTH_MOUNT": auth_setup.mount}
    )


@dataclass
class Service:
    """The service's Vault side: the store, its hvac client and its authenticator."""

    store: CredentialStore
    client: hvac.Client
    authenticator: KubernetesAuth


def build_service(settings, clock) -> Service:
    """Wire a CredentialStore the way create_app does, with the fake clock for renewal."""
    client = make_vault_client(settings)
    authenticator = make_authenticator(settings, clock=clock)
    store = CredentialStore(
        client, authenticator, mount=settings.vault_kv_mount, prefix=settings.vault_kv_prefix
    )
    return Service(store, client, authenticator)


@pytest.fixture
def service(k8s_settings, clock):
    """The service's Vault side, logging in with Kubernetes auth on the fake clock."""
    return build_service(k8s_settings, clock)


def save_account(store: CredentialStore) -> int:
    """Store one account's credentials and return the KV version."""
    return store.save(ACCOUNT_ID, client_id="client-1", client_secret="secret-1", iris_app_id=None)


def test_login_stores_and_loads_credentials(service, reviews, token_file):
    version = save_account(service.store)
    loaded = service.store.load(ACCOUNT_ID)

    assert version == 1
    assert loaded is not None
    assert loaded.client_secret == "secret-1"
    assert reviews.reviewed == [token_file.read_text().strip()]


def test_login_token_has_only_service_policy(service, auth_setup):
    save_account(service.store)

    policies = service.client.auth.token.lookup_self()["data"]["policies"]

    assert sorted(policies) == sorted(["default", auth_setup.policy])


def test_second_login_reads_rotated_token_file(service, issuer, reviews, token_file):
    first = token_file.read_text().strip()

    service.authenticator.login(service.client)
    second = issuer.issue()
    token_file.write_text(second)
    service.authenticator.login(service.client)

    assert first != second
    assert reviews.reviewed == [first, second]


def test_revoked_token_logs_in_again(service, openbao, issuer, reviews, token_file):
    save_account(service.store)
    first_vault_token = service.client.token
    openbao.client().auth.token.revoke(first_vault_token)
    rotated = issuer.issue()
    token_file.write_text(rotated)

    loaded = service.store.load(ACCOUNT_ID)

    assert loaded is not None
    assert len(reviews.reviewed) == 2
    assert reviews.reviewed[-1] == rotated
    assert service.client.token != first_vault_token


def test_rejected_login_raises_vault_unavailable(service, reviews, token_file):
    with reviews.lock:
        reviews.accepted.clear()

    with pytest.raises(VaultUnavailable) as caught:
        save_account(service.store)

    assert "permission denied (403)" in caught.value.message
    assert token_file.read_text().strip() not in caught.value.message


def test_missing_token_file_names_setting(service, token_file):
    token_file.unlink()

    with pytest.raises(VaultUnavailable) as caught:
        save_account(service.store)

    assert "VAULT_K8S_TOKEN_PATH" in caught.value.message
    assert str(token_file) in caught.value.message


def test_empty_token_file_names_setting(service, token_file, reviews):
    token_file.write_text("\n")

    with pytest.raises(VaultUnavailable) as caught:
        save_account(service.store)

    assert "is empty" in caught.value.message
    assert reviews.reviewed == []


def test_renewal_waits_for_two_thirds_of_ttl(service, clock):
    save_account(service.store)
    clock.advance(39)

    service.store.load(ACCOUNT_ID)
    data = service.client.auth.token.lookup_self()["data"]

    assert not data.get("last_renewal_time")


def test_renewal_renews_token_when_due(service, clock):
    save_account(service.store)
    vault_token = service.client.token
    clock.advance(41)

    service.store.load(ACCOUNT_ID)
    data = service.client.auth.token.lookup_self()["data"]

    assert service.client.token == vault_token
    assert data.get("last_renewal_time")
    assert service.authenticator.lease.obtained_at == clock.now


def test_batch_token_logs_in_again_when_due(
    openbao, kubernetes_api, reviews, kv_prefix, k8s_env, issuer, token_file, clock
):
    root = openbao.client()
    setup = configure_kubernetes_auth(
        root, kubernetes_api, reviews, kv_prefix, ttl="60s", max_ttl="1h", token_type="batch"
    )
    settings = load_settings(
        {**k8s_env, "VAULT_K8S_ROLE": setup.role, "VAULT_K8S_AUTH_MOUNT": setup.mount}
    )
    service = build_service(settings, clock)
    try:
        save_account(service.store)
        rotated = issuer.issue()
        token_file.write_text(rotated)
        clock.advance(41)

        service.store.load(ACCOUNT_ID)

        assert service.authenticator.lease.renewable is False
        assert len(reviews.reviewed) == 2
        assert reviews.reviewed[-1] == rotated
    finally:
        remove_kubernetes_auth(root, setup)


def test_login_sends_vault_namespace(openbao, kubernetes_api, reviews, k8s_env, clock):
    namespace = f"team-{uuid.uuid4().hex[:8]}"
    root = openbao.client()
    root.sys.create_namespace(namespace)
    scoped_root = hvac.Client(
        url=openbao.addr, token=openbao.root_token, namespace=namespace, timeout=10
    )
    scoped_root.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    setup = configure_kubernetes_auth(scoped_root, kubernetes_api, reviews, "accounts", ttl="60s")
    settings = load_settings(
        {
            **k8s_env,
            "VAULT_K8S_ROLE": setup.role,
            "VAULT_K8S_AUTH_MOUNT": setup.mount,
            "VAULT_NAMESPACE": namespace,
            "VAULT_KV_PREFIX": "accounts",
        }
    )
    service = build_service(settings, clock)
    try:
        version = save_account(service.store)
        stored = scoped_root.secrets.kv.v2.read_secret_version(
            path=f"accounts/{ACCOUNT_ID}", mount_point="secret", raise_on_deleted_version=True
        )

        assert version == 1
        assert stored["data"]["data"]["clientId"] == "client-1"
        assert len(reviews.reviewed) == 1
    finally:
        remove_kubernetes_auth(scoped_root, setup)
        scoped_root.sys.disable_secrets_engine("secret")
        root.sys.delete_namespace(namespace)


CONFIGURE_SCRIPT = ROOT / "vault" / "configure-kubernetes.sh"


def run_configure_script(openbao, extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run vault/configure-kubernetes.sh with the bao CLI against the session's OpenBao."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "VAULT_CLI": bao_binary(),
        "BAO_ADDR": openbao.addr,
        "BAO_TOKEN": openbao.root_token,
        **extra_env,
    }
    return subprocess.run(
        ["bash", str(CONFIGURE_SCRIPT)], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def script_env(kubernetes_api, reviews, tmp_path):
    """Settings for the configure script: fresh mounts, the stand-in and its CA and reviewer JWT."""
    suffix = uuid.uuid4().hex[:8]
    ca_file = tmp_path / "kubernetes-ca.pem"
    ca_file.write_text(_self_signed_ca_pem())
    reviewer_file = tmp_path / "reviewer.jwt"
    reviewer_file.write_text(reviews.reviewer_jwt)
    return {
        "KV_MOUNT": f"kv-{suffix}",
        "KV_PREFIX": "iris-token-broker/accounts",
        "POLICY_NAME": f"iris-token-broker-{suffix}",
        "AUTH_MOUNT": f"k8s-{suffix}",
        "K8S_HOST": kubernetes_api.url,
        "K8S_CA_CERT": str(ca_file),
        "TOKEN_REVIEWER_JWT": str(reviewer_file),
        "DISABLE_LOCAL_CA_JWT": "true",
        "K8S_NAMESPACE": NAMESPACE,
        "SERVICE_ACCOUNT": SERVICE_ACCOUNT,
        "TOKEN_TTL": "5m",
    }


@pytest.fixture
def configured(openbao, script_env):
    """The configure script's result on fresh mounts, removed again afterwards."""
    result = run_configure_script(openbao, script_env)
    yield result
    root = openbao.client()
    root.sys.disable_auth_method(script_env["AUTH_MOUNT"])
    root.sys.disable_secrets_engine(script_env["KV_MOUNT"])
    root.sys.delete_policy(script_env["POLICY_NAME"])


def test_configure_script_lets_service_log_in(configured, script_env, k8s_env, issuer, token_file, clock):
    token_file.write_text(issuer.issue(audience="vault"))
    settings = load_settings(
        {
            **k8s_env,
            "VAULT_K8S_ROLE": "iris-token-broker",
            "VAULT_K8S_AUTH_MOUNT": script_env["AUTH_MOUNT"],
            "VAULT_KV_MOUNT": script_env["KV_MOUNT"],
            "VAULT_KV_PREFIX": script_env["KV_PREFIX"],
        }
    )
    service = build_service(settings, clock)

    version = save_account(service.store)
    policies = service.client.auth.token.lookup_self()["data"]["policies"]

    assert configured.returncode == 0, configured.stderr
    assert version == 1
    assert script_env["POLICY_NAME"] in policies


def test_configure_script_role_requires_audience(configured, script_env, k8s_env, token_file, clock):
    settings = load_settings(
        {
            **k8s_env,
            "VAULT_K8S_ROLE": "iris-token-broker",
            "VAULT_K8S_AUTH_MOUNT": script_env["AUTH_MOUNT"],
            "VAULT_KV_MOUNT": script_env["KV_MOUNT"],
        }
    )
    service = build_service(settings, clock)

    with pytest.raises(VaultUnavailable) as caught:
        save_account(service.store)

    assert configured.returncode == 0, configured.stderr
    assert "permission denied (403)" in caught.value.message


def test_configure_script_runs_again(configured, openbao, script_env):
    again = run_configure_script(openbao, script_env)

    assert configured.returncode == 0, configured.stderr
    assert again.returncode == 0, again.stderr
    assert f"KV mount {script_env['KV_MOUNT']}/ exists" in again.stdout


def test_configure_script_requires_namespace(openbao, script_env):
    env = dict(script_env)
    del env["K8S_NAMESPACE"]

    result = run_configure_script(openbao, env)

    assert result.returncode == 2
    assert "K8S_NAMESPACE is missing" in result.stderr


def test_app_flow_with_kubernetes_auth(make_app, k8s_settings, trackunit, auth_header):
    client = make_app(k8s_settings).test_client()
    trackunit.register_uri(
        "POST", TOKEN_URL, json={"access_token": "access-1", "token_type": "Bearer", "expires_in": 3600}
    )
    install = {
        "type": "INSTALLED",
        "accountId": ACCOUNT_ID,
        "clientId": "client-1",
        "clientSecret": "secret-1",
    }

    ready = client.get("/readyz")
    installed = client.post("/appinstall", json=install)
    token = client.get(f"/token/{ACCOUNT_ID}", headers=auth_header)

    assert ready.status_code == 200
    assert installed.status_code == 200
    assert token.json["access_token"] == "access-1"


def _image_command() -> list[str]:
    """Return the Dockerfile's ENTRYPOINT followed by its CMD, as the container runs them."""
    command: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith(("ENTRYPOINT ", "CMD ")):
            command += json.loads(line.split(None, 1)[1])
    return command


def _chart_settings(openbao, kv_prefix: str, token_url: str) -> dict[str, str]:
    """Render the chart's ConfigMap for this OpenBao and stand-in, and return its data."""
    values = yaml.safe_load((ROOT / "helm" / "iris-token-broker" / "ci" / "minimal-values.yaml").read_text())
    values["vault"].update(addr=openbao.addr, kvPrefix=kv_prefix)
    values["trackunit"]["tokenUrl"] = token_url
    with helm.Chart.load(ROOT / "helm" / "iris-token-broker") as chart:
        rendered = chart.render(values=values, name="iris", namespace=NAMESPACE)
    return yaml.safe_load(rendered["iris-token-broker/templates/configmap.yaml"])["data"]


@pytest.mark.e2e
def test_gunicorn_serves_with_chart_settings(openbao, auth_setup, token_file, kv_prefix, tmp_path):
    standin = trackunit_standin.start_in_thread()
    standin.state.register("client-1", "secret-1", {"asset.view", "account.asset.manage"})
    port = free_port()
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        **_chart_settings(openbao, kv_prefix, standin.token_url),
        # The pod's paths and bind address, moved to this machine's loopback and tmp_path.
        "VAULT_K8S_ROLE": auth_setup.role,
        "VAULT_K8S_AUTH_MOUNT": auth_setup.mount,
        "VAULT_K8S_TOKEN_PATH": str(token_file),
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "INTERNAL_API_KEYS": API_KEY,
        # Callback signatures have tests of their own; this test posts an unsigned one.
        "REQUIRE_TRACKUNIT_IDENTITY": "false",
        "TRACKUNIT_JWKS_URL": standin.jwks_url,
    }
    command = _image_command()
    command[0] = str(Path(sys.executable).with_name(command[0]))
    base = f"http://127.0.0.1:{port}"
    log_file = open(tmp_path / "gunicorn.log", "wb")
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        _wait_for_health(base, process)
        install = {
            "type": "INSTALLED",
            "accountId": ACCOUNT_ID,
            "clientId": "client-1",
            "clientSecret": "secret-1",
        }

        ready = requests.get(f"{base}/readyz", timeout=10)
        installed = requests.post(f"{base}/appinstall", json=install, timeout=10)
        token = requests.get(
            f"{base}/token/{ACCOUNT_ID}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
        )

        assert ready.status_code == 200, ready.text
        assert installed.status_code == 200, installed.text
        assert token.status_code == 200, token.text
        assert token.json()["access_token"].startswith("standin.")
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        finally:
            # No worker may outlive the test, even one stuck at exit.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        log_file.close()
        standin.shutdown()
        standin.server_close()


def _wait_for_health(base: str, process: subprocess.Popen) -> None:
    """Wait up to 20 s for /healthz, failing early when gunicorn exits."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"gunicorn exited with code {process.returncode}; see gunicorn.log")
        try:
            requests.get(f"{base}/healthz", timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    pytest.fail("gunicorn did not answer /healthz within 20 s")

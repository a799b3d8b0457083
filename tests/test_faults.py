"""Fault tests against real processes: OpenBao with raft storage, gunicorn and the stand-in.

Everything binds to loopback. The service gets VAULT_TIMEOUT=3 and TRACKUNIT_TIMEOUT=3, short
enough that each fault shows within seconds and long enough for a loaded CI machine. Tests that rely on one process's token cache run one
gunicorn worker, because each worker has its own cache.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import API_KEY, SCOPES, with_settings
from tests.e2e_support import ROOT, RaftOpenBao, ServiceProcess
from sandbox.trackunit_standin import StandinState, start_in_thread

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": f"Bearer {API_KEY}"}
KV_PREFIX = "iris-token-broker/accounts"
REQUEST_TIMEOUT = 15


@pytest.fixture(scope="module")
def bao(tmp_path_factory):
    """An OpenBao node of this module's own, with data on disk so it survives restarts."""
    server = RaftOpenBao(tmp_path_factory.mktemp("openbao"), kv_prefix=KV_PREFIX)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def standin():
    """The stand-in token endpoint on loopback."""
    server = start_in_thread(StandinState(expires_in=3600))
    yield server
    server.state.release()
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _healthy(bao, standin):
    """Leave OpenBao running and unsealed and the stand-in unscripted after each test."""
    yield
    standin.state.release()
    standin.state.scripted.clear()
    if bao.process is None:
        bao.start()
    elif bao.root_client().sys.is_sealed():
        bao.unseal()


@pytest.fixture
def start_service(bao, standin, tmp_path):
    """Start the service under gunicorn with a new Vault token. Stops it after the test."""
    started = []

    def start(*, workers: int = 1, vault_token: str | None = None, **env: str) -> ServiceProcess:
        service = ServiceProcess(
            {
                "VAULT_ADDR": bao.addr,
                "VAULT_TOKEN": vault_token or bao.service_token(),
                "VAULT_KV_PREFIX": KV_PREFIX,
                "VAULT_TIMEOUT": "3",
                "INTERNAL_API_KEYS": API_KEY,
                "TRACKUNIT_SCOPES": SCOPES,
                "TRACKUNIT_TOKEN_URL": standin.token_url,
                "TRACKUNIT_TIMEOUT": "3",
                # Callback signatures have tests of their own; these tests post unsigned ones.
                "REQUIRE_TRACKUNIT_IDENTITY": "false",
                "TRACKUNIT_JWKS_URL": standin.jwks_url,
                "LOG_FORMAT": "json",
                **env,
            },
            tmp_path / f"service-{len(started)}.log",
            workers=workers,
        )
        service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def _install(service: ServiceProcess, standin, account_id: str, secret: str = "secret-1") -> None:
    client_id = f"client-{account_id}"
    standin.state.register(client_id, secret, set(SCOPES.split()))
    response = requests.post(
        f"{service.url}/appinstall",
        json={"type": "INSTALLED", "accountId": account_id, "clientId": client_id, "clientSecret": secret},
        timeout=REQUEST_TIMEOUT,
    )
    assert response.status_code == 200, response.text


def _token(service: ServiceProcess, account_id: str, **headers: str) -> requests.Response:
    return requests.get(
        f"{service.url}/token/{account_id}", headers={**AUTH, **headers}, timeout=REQUEST_TIMEOUT
    )


def _new_account() -> str:
    return str(uuid.uuid4())


def test_vault_stop_serves_cache_then_recovers(bao, standin, start_service):
    service = start_service()
    cached, uncached = _new_account(), _new_account()
    _install(service, standin, cached)
    _install(service, standin, uncached)
    token = _token(service, cached).json()["access_token"]

    bao.stop()
    during_cached = _token(service, cached)
    during_uncached = _token(service, uncached)
    during_ready = requests.get(f"{service.url}/readyz", timeout=REQUEST_TIMEOUT)
    bao.start()
    after_uncached = _token(service, uncached)

    assert during_cached.status_code == 200
    assert during_cached.json()["access_token"] == token
    assert during_uncached.status_code == 503
    assert during_uncached.json()["error"] == "vault_unavailable"
    assert during_ready.status_code == 503
    assert after_uncached.status_code == 200


def test_vault_sealed_serves_cache_then_recovers(bao, standin, start_service):
    service = start_service()
    cached, uncached = _new_account(), _new_account()
    _install(service, standin, cached)
    _install(service, standin, uncached)
    _token(service, cached)

    bao.seal()
    during_cached = _token(service, cached)
    during_uncached = _token(service, uncached)
    during_ready = requests.get(f"{service.url}/readyz", timeout=REQUEST_TIMEOUT)
    bao.unseal()
    after_uncached = _token(service, uncached)

    assert during_cached.status_code == 200
    assert during_uncached.status_code == 503
    assert during_uncached.json()["error"] == "vault_unavailable"
    assert during_ready.json() == {"status": "unavailable", "reason": "Vault is sealed"}
    assert after_uncached.status_code == 200


def test_revoked_vault_token_serves_cache(bao, standin, start_service):
    vault_token = bao.service_token()
    service = start_service(vault_token=vault_token)
    cached, uncached = _new_account(), _new_account()
    _install(service, standin, cached)
    _install(service, standin, uncached)
    _token(service, cached)

    bao.root_client().auth.token.revoke(vault_token)
    cached_response = _token(service, cached)
    uncached_response = _token(service, uncached)
    callback = requests.post(
        f"{service.url}/appinstall",
        json={"type": "INSTALLED", "accountId": _new_account(), "clientId": "c", "clientSecret": "s"},
        timeout=REQUEST_TIMEOUT,
    )

    assert cached_response.status_code == 200
    assert uncached_response.status_code == 503
    assert uncached_response.json()["error"] == "vault_unavailable"
    assert "permission denied" in uncached_response.json()["message"]
    assert callback.status_code == 503


def test_hanging_token_endpoint_is_bounded(standin, start_service):
    service = start_service(TRACKUNIT_TIMEOUT="1")
    account_id = _new_account()
    _install(service, standin, account_id)
    standin.state.hang()

    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.monotonic()
        pending = pool.submit(_token, service, account_id)
        time.sleep(0.2)
        health = requests.get(f"{service.url}/healthz", timeout=REQUEST_TIMEOUT)
        response = pending.result()
        elapsed = time.monotonic() - started

    assert health.status_code == 200
    assert response.status_code == 504
    assert response.json()["error"] == "upstream_timeout"
    assert elapsed < 5


def test_token_endpoint_503_twice_then_200(standin, start_service):
    service = start_service(TRACKUNIT_MAX_RETRIES="2")
    account_id = _new_account()
    _install(service, standin, account_id)
    standin.state.script((503, {"error": "temporarily_unavailable"}), (503, {}))
    calls_before = standin.state.request_count

    response = _token(service, account_id)

    assert response.status_code == 200
    assert standin.state.request_count - calls_before == 3


def test_token_endpoint_503_beyond_retries_is_502(standin, start_service):
    service = start_service(TRACKUNIT_MAX_RETRIES="2")
    account_id = _new_account()
    _install(service, standin, account_id)
    standin.state.script((503, {}), (503, {}), (503, {}))
    calls_before = standin.state.request_count

    response = _token(service, account_id)

    assert response.status_code == 502
    assert response.json()["upstream_status"] == 503
    assert standin.state.request_count - calls_before == 3


def test_uninstall_then_reinstall(standin, start_service):
    service = start_service()
    account_id = _new_account()
    _install(service, standin, account_id, "secret-old")
    first = _token(service, account_id).json()["access_token"]

    uninstall = requests.post(
        f"{service.url}/appinstall",
        json={"type": "UNINSTALLED", "accountId": account_id},
        timeout=REQUEST_TIMEOUT,
    )
    after_uninstall = _token(service, account_id)
    _install(service, standin, account_id, "secret-new")
    after_reinstall = _token(service, account_id)

    assert uninstall.json()["status"] == "uninstalled"
    assert after_uninstall.status_code == 404
    assert after_uninstall.json()["error"] == "not_installed"
    assert after_reinstall.status_code == 200
    assert after_reinstall.json()["access_token"] != first


def test_request_id_in_response_and_json_log(standin, start_service):
    service = start_service()
    account_id = _new_account()
    _install(service, standin, account_id)

    response = _token(service, account_id, **{"X-Request-ID": "e2e-trace-1"})
    service.stop()

    assert response.headers["X-Request-ID"] == "e2e-trace-1"
    lines = [line for line in service.log().splitlines() if account_id in line and "Served" in line]
    assert len(lines) == 1
    assert '"request_id": "e2e-trace-1"' in lines[0]


def test_metrics_sum_across_workers(standin, start_service):
    service = start_service(workers=2)
    account_id = _new_account()
    _install(service, standin, account_id)

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: _token(service, account_id).status_code, range(40)))
    scrapes = [
        requests.get(f"{service.url}/metrics", headers=AUTH, timeout=REQUEST_TIMEOUT).text
        for _ in range(4)
    ]

    assert statuses == [200] * 40
    served = 'iris_token_broker_token_requests_total{outcome="served"} 40.0'
    assert all(served in scrape for scrape in scrapes)


def test_thousand_requests_survive_vault_restart(bao, standin, start_service):
    service = start_service(workers=2)
    accounts = [_new_account() for _ in range(100)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda account_id: _install(service, standin, account_id), accounts))

    completed = 0
    completed_at_stop: list[int] = []
    lock = threading.Lock()
    restart_started = threading.Event()
    vault_stopped = threading.Event()
    downtime_served = threading.Event()

    def restart() -> None:
        restart_started.wait(60)
        bao.stop()
        with lock:
            completed_at_stop.append(completed)
        vault_stopped.set()
        # Keep Vault down while 200 requests complete, then bring it back.
        downtime_served.wait(60)
        bao.start()

    restarter = threading.Thread(target=restart)
    restarter.start()

    def request(index: int) -> tuple[int, str | None]:
        nonlocal completed
        if index >= 300:
            vault_stopped.wait(60)
        response = _token(service, accounts[index % len(accounts)])
        with lock:
            completed += 1
            if completed == 300:
                restart_started.set()
            if completed == 500:
                downtime_served.set()
        error = response.json().get("error") if response.status_code != 200 else None
        return response.status_code, error

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(request, range(1000)))
    restart_started.set()
    downtime_served.set()
    restarter.join(timeout=60)

    assert completed_at_stop[0] <= 300
    statuses = {status for status, _ in results}
    errors = {error for _, error in results if error is not None}
    assert statuses <= {200, 503}, statuses
    assert errors <= {"vault_unavailable"}, errors
    assert len(results) == 1000
    lost = [account_id for account_id in accounts if _token(service, account_id).status_code != 200]
    assert lost == []


def test_operator_commands_with_service_policy(bao, standin, start_service):
    """Run the documented `flask --app wsgi accounts` commands with a policy-limited token."""
    service = start_service()
    account_id = _new_account()
    _install(service, standin, account_id)
    env = {**service.env, "VAULT_TOKEN": bao.service_token()}

    def flask(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "flask", "--app", "wsgi", "accounts", *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
        )

    verified = flask("verify", account_id)
    uninstalled = flask("uninstall", account_id)
    shown = flask("show", account_id)
    undeleted = flask("undelete", account_id)
    listed = flask("list")

    assert verified.returncode == 0, verified.stderr
    assert "expires in 3600 s" in verified.stdout
    assert uninstalled.returncode == 0, uninstalled.stderr
    assert "state:           uninstalled" in shown.stdout
    assert undeleted.returncode == 0, undeleted.stderr
    assert f"{account_id}\tinstalled" in listed.stdout


def test_hanging_vault_is_bounded(make_app, settings, auth_header):
    """A Vault that accepts connections and never responds costs one VAULT_TIMEOUT per call."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        host, port = silent.getsockname()
        app = make_app(with_settings(settings, vault_addr=f"http://{host}:{port}", vault_timeout=0.5))
        client = app.test_client()

        started = time.monotonic()
        token = client.get(f"/token/{_new_account()}", headers=auth_header)
        ready = client.get("/readyz")
        elapsed = time.monotonic() - started

    assert token.status_code == 503
    assert "timed out" in token.get_json()["message"]
    assert ready.status_code == 503
    assert elapsed < 3


def test_missing_metrics_dir_stops_startup(bao, standin, tmp_path):
    service = ServiceProcess(
        {
            "VAULT_ADDR": bao.addr,
            "VAULT_TOKEN": "unused-token",
            "INTERNAL_API_KEYS": API_KEY,
            "TRACKUNIT_SCOPES": SCOPES,
            "TRACKUNIT_TOKEN_URL": standin.token_url,
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing"),
        },
        tmp_path / "service.log",
    )

    with pytest.raises(RuntimeError, match="gunicorn exited with 2"):
        service.start()

    assert "PROMETHEUS_MULTIPROC_DIR=" in service.log()
    assert "is not a directory" in service.log()

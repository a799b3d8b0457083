"""Shared fixtures: a real OpenBao dev server per test session, settings, app and clock.

The OpenBao server runs in dev mode (in memory, KV v2 at `secret/`) on a free loopback
port with a random root token. Each test gets its own KV prefix, so tests never see
each other's accounts.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import hvac
import pytest
import requests
import requests_mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import create_app  # noqa: E402
from broker.config import load_settings  # noqa: E402
from vault.local_server import bao_binary, wait_until_listening  # noqa: E402

API_KEY = "test-internal-key-0123456789abcdef"
SCOPES = "account.asset.manage asset.view"
TOKEN_URL = "https://auth.trackunit.test/apptoken"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeClock:
    """A monotonic clock that moves only when a test calls advance()."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class OpenBao:
    """A running OpenBao dev server: its address, root token and process."""

    def __init__(self, addr: str, root_token: str, process: subprocess.Popen):
        self.addr = addr
        self.root_token = root_token
        self.process = process

    def client(self, token: str | None = None) -> hvac.Client:
        """Return an hvac client for this server, with the root token unless one is given."""
        return hvac.Client(url=self.addr, token=token or self.root_token, timeout=10)


def _die_with_parent() -> None:
    """Ask Linux to stop the child when pytest dies, so no dev server outlives a killed run."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def start_openbao(port: int | None = None, root_token: str | None = None) -> OpenBao:
    """Start an OpenBao dev server on loopback and wait until it is unsealed."""
    port = port or free_port()
    root_token = root_token or secrets.token_urlsafe(24)
    process = subprocess.Popen(
        [
            bao_binary(),
            "server",
            "-dev",
            f"-dev-listen-address=127.0.0.1:{port}",
            f"-dev-root-token-id={root_token}",
            "-dev-no-store-token",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")},
        preexec_fn=_die_with_parent,
    )
    addr = f"http://127.0.0.1:{port}"
    wait_until_listening(addr, process)
    bao = OpenBao(addr, root_token, process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            bao.client().secrets.kv.v2.read_configuration(mount_point="secret")
            return bao
        except (hvac.exceptions.VaultError, requests.RequestException):
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("OpenBao dev server did not become ready")


def stop_openbao(bao: OpenBao) -> None:
    """Stop the server and wait for it to exit."""
    bao.process.terminate()
    try:
        bao.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        bao.process.kill()
        bao.process.wait(timeout=10)


@pytest.fixture(scope="session")
def openbao():
    """The session's OpenBao dev server."""
    bao = start_openbao()
    yield bao
    stop_openbao(bao)


@pytest.fixture
def kv_prefix() -> str:
    """A KV prefix of this test's own."""
    return f"tests/{uuid.uuid4().hex}/accounts"


@pytest.fixture
def base_env(openbao, kv_prefix) -> dict[str, str]:
    """Environment variables for a service against the session's OpenBao and requests-mock.

    The Trackunit-Identity check is off here, so tests can post unsigned callbacks. Tests
    of the check turn it on with a loopback JWKS (tests/test_install_identity.py).
    """
    return {
        "VAULT_ADDR": openbao.addr,
        "VAULT_TOKEN": openbao.root_token,
        "VAULT_KV_PREFIX": kv_prefix,
        "VAULT_TIMEOUT": "5",
        "INTERNAL_API_KEYS": API_KEY,
        "TRACKUNIT_SCOPES": SCOPES,
        "TRACKUNIT_TOKEN_URL": TOKEN_URL,
        "TRACKUNIT_TIMEOUT": "2",
        "REQUIRE_TRACKUNIT_IDENTITY": "false",
    }


@pytest.fixture
def settings(base_env):
    """Validated settings from base_env."""
    return load_settings(base_env)


@pytest.fixture
def clock() -> FakeClock:
    """A clock the test moves by hand."""
    return FakeClock()


@pytest.fixture
def sleeps() -> list[float]:
    """Every delay the token client asked to sleep, in order. Nothing really sleeps."""
    return []


@pytest.fixture
def trackunit() -> requests_mock.Adapter:
    """requests-mock adapter that serves Trackunit's token endpoint. Vault stays real."""
    return requests_mock.Adapter()


@pytest.fixture
def http_session(trackunit) -> requests.Session:
    """The token client's session, routing the token URL to the `trackunit` adapter."""
    session = requests.Session()
    session.mount("https://auth.trackunit.test", trackunit)
    yield session
    session.close()


@pytest.fixture
def background():
    """The executor for background refreshes: tasks wait until the test runs them."""
    from tests.token_helpers import ManualExecutor

    return ManualExecutor()


@pytest.fixture
def make_app(clock, sleeps, http_session, background):
    """Build an app from settings with the fake clock, recorded sleeps and requests-mock.

    Background refreshes queue on `background` instead of running, so upstream call
    counts only change when a test runs them.
    """

    def build(settings, **overrides):
        options = {
            "clock": clock,
            "sleep": sleeps.append,
            "http_session": http_session,
            "executor": background,
        }
        options.update(overrides)
        return create_app(settings, **options)

    return build


@pytest.fixture
def app(make_app, settings):
    """The app on the session's OpenBao, with requests-mock standing in for Trackunit."""
    return make_app(settings)


@pytest.fixture
def client(app):
    """A Flask test client of `app`."""
    return app.test_client()


@pytest.fixture
def auth_header() -> dict[str, str]:
    """The Authorization header of an internal caller."""
    return {"Authorization": f"Bearer {API_KEY}"}


def with_settings(settings, **changes):
    """Return a copy of settings with some fields changed."""
    return replace(settings, **changes)

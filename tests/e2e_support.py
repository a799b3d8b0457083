"""Real processes for end-to-end tests: a raft-backed OpenBao and the service under gunicorn.

Both bind to free loopback ports and are stopped by the fixtures that start them. The
OpenBao server keeps its data on disk (vault/local_server.py), so unlike the in-memory dev
server it can be stopped, sealed and started again without losing accounts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import hvac
import requests

from vault.local_server import POLICY_NAME, prepare, start_server

ROOT = Path(__file__).resolve().parent.parent
_READY_TIMEOUT_SECONDS = 30


def free_port_pair() -> int:
    """Return a loopback port P such that P and P + 1 were both free a moment ago.

    OpenBao's raft storage listens on the API port and uses the next one for cluster traffic.
    """
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("No two adjacent free loopback ports were found")


class RaftOpenBao:
    """One OpenBao node with raft storage in `data_dir`, which survives stop() and start()."""

    def __init__(self, data_dir: Path, *, kv_prefix: str):
        self.data_dir = data_dir
        self.kv_prefix = kv_prefix
        self.port = free_port_pair()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the server, initialise it the first time, unseal it and wait until it is active."""
        self.process = start_server(self.data_dir, self.port)
        prepare(self.addr, self.data_dir, prefix=self.kv_prefix)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and wait for it to exit."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        # A gthread worker can deadlock when SIGINT lands while it starts a thread, and it
        # would outlive its master, so whatever is left of the process group goes too.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process = None

    def restart(self) -> None:
        """Stop the server and start it again on the same port with the same data."""
        self.stop()
        self.start()

    def root_client(self) -> hvac.Client:
        """Return an hvac client with the root token saved at initialisation."""
        saved = json.loads((self.data_dir / "init.json").read_text())
        return hvac.Client(url=self.addr, token=saved["root_token"], timeout=10)

    def seal(self) -> None:
        """Seal the server, so it returns 503 until unseal()."""
        self.root_client().sys.seal()

    def unseal(self) -> None:
        """Unseal the server with the saved key and wait until it is active again."""
        prepare(self.addr, self.data_dir, prefix=self.kv_prefix)

    def service_token(self) -> str:
        """Create a new token limited to the service's policy, as a deployment would have."""
        created = self.root_client().auth.token.create(
            policies=[POLICY_NAME], ttl="1h", display_name="iris-token-broker-e2e"
        )
        return created["auth"]["client_token"]


class ServiceProcess:
    """The service under gunicorn on a loopback port, with its log in `log_path`."""

    def __init__(self, env: dict[str, str], log_path: Path, *, workers: int = 1, threads: int = 8):
        self.port = free_port_pair()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/tmp"),
            "GUNICORN_BIND": f"127.0.0.1:{self.port}",
            "GUNICORN_WORKERS": str(workers),
            "GUNICORN_THREADS": str(threads),
            **env,
        }
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start gunicorn and wait until /healthz returns 200."""
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                cwd=ROOT,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gunicorn did not become healthy:\n{self.log()}")

    def stop(self) -> None:
        """Stop gunicorn with a quick shutdown (SIGINT), killing it after 10 s.

        A graceful SIGTERM would wait for idle keep-alive connections, which only slows tests.
        """
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        # A gthread worker can deadlock when SIGINT lands while it starts a thread, and it
        # would outlive its master, so whatever is left of the process group goes too.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process = None

    def log(self) -> str:
        """Return everything the service logged so far."""
        return self.log_path.read_text(errors="replace")

"""Start and stop the processes the benchmark measures, all on 127.0.0.1.

OpenBao runs as `vault/local_server.py` runs it (raft storage, the service's policy and a
token limited to it), so Vault reads cost what they cost in the embedded default. The
Trackunit stand-in and each gunicorn server run as child processes, so none of them shares
a GIL with the load generator or with the code that times requests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hvac.exceptions
import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vault.local_server import prepare, start_server  # noqa: E402

_START_TIMEOUT_SECONDS = 30
_PREPARE_ATTEMPTS = 3


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log_path: Path) -> None:
    """Poll `url` until it returns 200, raising RuntimeError if the process exits first."""
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} did not start: the process exited; see {log_path}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not respond within {_START_TIMEOUT_SECONDS} s; see {log_path}")


@dataclass
class Vault:
    """A running OpenBao: its address, the policy-limited service token and the process."""

    addr: str
    token: str
    process: subprocess.Popen


def start_vault(work_dir: Path) -> Vault:
    """Start a fresh raft-backed OpenBao under work_dir and prepare it for the service."""
    port = free_port()
    data_dir = work_dir / "openbao"
    process = start_server(data_dir, port)
    addr = f"http://127.0.0.1:{port}"
    # NOTE: prepare() can fail with "local node not active" when raft loses leadership
    # right after unsealing. It is idempotent, so a bounded retry is safe here.
    try:
        for attempt in range(1, _PREPARE_ATTEMPTS + 1):
            try:
                token = prepare(addr, data_dir)
                break
            except hvac.exceptions.InternalServerError:
                if attempt == _PREPARE_ATTEMPTS:
                    raise
                time.sleep(1)
    except BaseException:
        stop(process)
        raise
    return Vault(addr=addr, token=token, process=process)


@dataclass
class Server:
    """A child process serving HTTP on a loopback port."""

    name: str
    url: str
    process: subprocess.Popen
    log_path: Path

    def worker_pids(self) -> list[int]:
        """Return the pids of the gunicorn master's direct children (its workers)."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(child) for child in children]


def start_standin(work_dir: Path, clients: dict[str, tuple[str, str]], token_bytes: int) -> Server:
    """Start bench/standin.py with these clients (client_id: (secret, scopes))."""
    clients_file = work_dir / "standin-clients.json"
    clients_file.write_text(json.dumps(clients))
    os.chmod(clients_file, 0o600)
    port = free_port()
    log_path = work_dir / "standin.log"
    command = [
        sys.executable, "-m", "bench.standin",
        "--port", str(port),
        "--clients-file", str(clients_file),
        "--token-bytes", str(token_bytes),
    ]
    server = _spawn("trackunit-standin", command, port, log_path, os.environ.copy())
    _wait_or_stop(server, "/stats")
    return server


def start_gunicorn(
    name: str, app_spec: str, work_dir: Path, env: dict[str, str], health_path: str
) -> Server:
    """Start `gunicorn -c gunicorn.conf.py app_spec` with env and wait for health_path."""
    port = free_port()
    log_path = work_dir / f"{name}.log"
    env = {**env, "GUNICORN_BIND": f"127.0.0.1:{port}"}
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", app_spec]
    server = _spawn(name, command, port, log_path, env)
    _wait_or_stop(server, health_path)
    return server


def stop(process: subprocess.Popen) -> None:
    """Send SIGTERM, wait up to 20 s, then SIGKILL."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _wait_or_stop(server: Server, path: str) -> None:
    """Wait until the server returns 200 on path, stopping it if it never does."""
    try:
        wait_for_http(f"{server.url}{path}", server.process, server.log_path)
    except BaseException:
        stop(server.process)
        raise


def _spawn(name: str, command: list[str], port: int, log_path: Path, env: dict[str, str]) -> Server:
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return Server(name=name, url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)

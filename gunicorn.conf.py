"""Gunicorn settings for iris-token-broker. Each one can be overridden by an environment variable.

gthread workers suit this service: requests are short, and the few slow ones (a token
fetch on a cold cache) wait on the network, so threads keep the other requests moving.
"""

import glob
import os
import shutil
import sys
import tempfile

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8080")
worker_class = "gthread"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# A cold token fetch is bounded by VAULT_TIMEOUT and TRACKUNIT_TIMEOUT with retries,
# which stay well below this.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
# The app logs each request's outcome itself, so gunicorn's access log is off unless asked for.
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
# The runtime control socket is a management surface this service does not use.
control_socket_disable = True
# Only Trackunit's callback has a body, and it is small.
limit_request_line = 4094
limit_request_fields = 100

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

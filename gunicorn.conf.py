"""Gunicorn settings for iris-token-broker. Each one can be overridden by an environment variable.

gthread workers suit this service: requests are short, and the few slow ones (a token
fetch on a cold cache) wait on the network, so threads keep the other requests moving.
"""

import os
import sys

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


def on_starting(server):
    """Check the settings in the master process, so a bad one stops start-up with one message."""
    from broker.config import ConfigError, load_settings

    try:
        load_settings()
    except ConfigError as exc:
        print(f"iris-token-broker: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)

"""Prometheus metrics of the service and the `/metrics` endpoint.

The metric objects live in prometheus-client's default registry, one set per process.
Under gunicorn, gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before any worker imports
prometheus_client, so every worker writes its values to files in that folder and
`/metrics` sums them across workers with the MultiProcessCollector. Without that
variable (tests, `flask run`) the endpoint reports this process alone.

Every label takes values from a small fixed set (error codes, HTTP statuses, operation
names), never an account id, so the number of series stays bounded. Recording a value
costs one lock and an addition, which is cheap enough for the token hot path.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess

_PREFIX = "iris_token_broker"
# Upstream and Vault calls take milliseconds when healthy and up to their timeouts when not.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# The event types that get their own label value. Any other type is counted as "other".
_KNOWN_CALLBACK_TYPES = frozenset({"INSTALLED", "UNINSTALLED"})

TOKEN_REQUESTS = Counter(
    f"{_PREFIX}_token_requests_total",
    "GET /token requests by outcome: 'served' or the error code of the response.",
    ["outcome"],
)
CACHE_LOOKUPS = Counter(
    f"{_PREFIX}_token_cache_lookups_total",
    "Token cache lookups by result: 'hit' (served from the cache) or 'miss'.",
    ["result"],
)
REFRESHES = Counter(
    f"{_PREFIX}_token_refreshes_total",
    "Token fetches started to refresh a cached token, by outcome.",
    ["outcome"],
)
UPSTREAM_LATENCY = Histogram(
    f"{_PREFIX}_upstream_request_duration_seconds",
    "Duration of each request to Trackunit's token endpoint, including failed ones.",
    buckets=_LATENCY_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    f"{_PREFIX}_upstream_errors_total",
    "Failed requests to the token endpoint by code: the HTTP status, 'timeout' or 'connection'.",
    ["code"],
)
VAULT_LATENCY = Histogram(
    f"{_PREFIX}_vault_request_duration_seconds",
    "Duration of each Vault operation by operation name, including failed ones.",
    ["operation"],
    buckets=_LATENCY_BUCKETS,
)
VAULT_ERRORS = Counter(
    f"{_PREFIX}_vault_errors_total",
    "Failed Vault operations by operation name and reason.",
    ["operation", "reason"],
)
CALLBACKS = Counter(
    f"{_PREFIX}_callbacks_total",
    "Install callbacks by event type and outcome ('installed', 'uninstalled', "
    "'not_installed', 'ignored' or the error code of the response).",
    ["type", "outcome"],
)


# Children of the labels every served token touches, looked up once rather than per request.
_SERVED = TOKEN_REQUESTS.labels("served")
_CACHE_HIT = CACHE_LOOKUPS.labels("hit")
_CACHE_MISS = CACHE_LOOKUPS.labels("miss")


def record_token_request(outcome: str) -> None:
    """Count one GET /token request. `outcome` is 'served' or an error code."""
    if outcome == "served":
        _SERVED.inc()
    else:
        TOKEN_REQUESTS.labels(outcome).inc()


def record_cache_lookup(hit: bool) -> None:
    """Count one token cache lookup as a hit or a miss."""
    (_CACHE_HIT if hit else _CACHE_MISS).inc()


def record_refresh(outcome: str) -> None:
    """Count one refresh of a cached token. `outcome` is 'ok' or an error code."""
    REFRESHES.labels(outcome).inc()


def record_upstream(seconds: float, error_code: str | None = None) -> None:
    """Record one request to the token endpoint and, when it failed, its error code."""
    UPSTREAM_LATENCY.observe(seconds)
    if error_code is not None:
        UPSTREAM_ERRORS.labels(error_code).inc()


def record_vault(operation: str, seconds: float, error_reason: str | None = None) -> None:
    """Record one Vault operation and, when it failed, the reason."""
    VAULT_LATENCY.labels(operation).observe(seconds)
    if error_reason is not None:
        VAULT_ERRORS.labels(operation, error_reason).inc()


def record_callback(event_type: str | None, outcome: str) -> None:
    """Count one install callback. A body that failed validation has the type 'none'."""
    if event_type is None:
        label = "none"
    elif event_type in _KNOWN_CALLBACK_TYPES:
        label = event_type
    else:
        label = "other"
    CALLBACKS.labels(label, outcome).inc()


def render() -> tuple[bytes, str]:
    """Return the exposition text of every metric and its content type.

    In multiprocess mode the values come from all workers' files, so any worker can serve them.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST

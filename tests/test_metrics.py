"""Prometheus metrics: what each route and client records, and the /metrics endpoint.

The metric objects are process-wide, so each test compares values before and after.
"""

from __future__ import annotations

import uuid

import pytest
import requests
from prometheus_client import REGISTRY

from tests.conftest import TOKEN_URL


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """Reads how much a sample grew since the Delta was made."""

    def __init__(self, name: str, **labels: str):
        self.name = name
        self.labels = labels
        self.start = _value(name, **labels)

    def __call__(self) -> float:
        return _value(self.name, **self.labels) - self.start


def _install(client, account_id: str) -> None:
    response = client.post(
        "/appinstall",
        json={"type": "INSTALLED", "accountId": account_id, "clientId": "c", "clientSecret": "s"},
    )
    assert response.status_code == 200


@pytest.fixture
def account_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def token_ok(trackunit):
    trackunit.register_uri(
        "POST",
        TOKEN_URL,
        json={"access_token": "t", "token_type": "Bearer", "expires_in": 3600},
    )


def test_metrics_requires_api_key(client):
    response = client.get("/metrics")

    assert response.status_code == 401


def test_metrics_is_prometheus_text(client, auth_header):
    response = client.get("/metrics", headers=auth_header)

    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert "iris_token_broker_token_requests_total" in response.get_data(as_text=True)


def test_served_token_counts_miss_then_hit(client, auth_header, account_id, token_ok):
    _install(client, account_id)
    served = Delta("iris_token_broker_token_requests_total", outcome="served")
    hits = Delta("iris_token_broker_token_cache_lookups_total", result="hit")
    misses = Delta("iris_token_broker_token_cache_lookups_total", result="miss")

    client.get(f"/token/{account_id}", headers=auth_header)
    client.get(f"/token/{account_id}", headers=auth_header)

    assert served() == 2
    assert misses() == 1
    assert hits() == 1


def test_error_outcome_uses_error_code(client, auth_header, account_id):
    not_installed = Delta("iris_token_broker_token_requests_total", outcome="not_installed")
    unauthorized = Delta("iris_token_broker_token_requests_total", outcome="unauthorized")

    client.get(f"/token/{account_id}", headers=auth_header)
    client.get(f"/token/{account_id}")

    assert not_installed() == 1
    assert unauthorized() == 1


def test_upstream_errors_count_by_status(client, auth_header, account_id, trackunit):
    _install(client, account_id)
    trackunit.register_uri("POST", TOKEN_URL, status_code=503, json={})
    errors = Delta("iris_token_broker_upstream_errors_total", code="503")
    attempts = Delta("iris_token_broker_upstream_request_duration_seconds_count")

    response = client.get(f"/token/{account_id}", headers=auth_header)

    assert response.status_code == 502
    assert errors() == 3
    assert attempts() == 3


def test_upstream_timeout_counts(client, auth_header, account_id, trackunit):
    _install(client, account_id)
    trackunit.register_uri("POST", TOKEN_URL, exc=requests.exceptions.ReadTimeout)
    timeouts = Delta("iris_token_broker_upstream_errors_total", code="timeout")

    client.get(f"/token/{account_id}", headers=auth_header)

    assert timeouts() == 1


def test_upstream_success_counts_no_error(client, auth_header, account_id, token_ok):
    _install(client, account_id)
    attempts = Delta("iris_token_broker_upstream_request_duration_seconds_count")
    errors = Delta("iris_token_broker_upstream_errors_total", code="200")

    client.get(f"/token/{account_id}", headers=auth_header)

    assert attempts() == 1
    assert errors() == 0


def test_vault_operations_are_timed(client, account_id):
    writes = Delta("iris_token_broker_vault_request_duration_seconds_count", operation="write")

    _install(client, account_id)

    assert writes() == 1


def test_vault_errors_count_by_reason(make_app, settings, auth_header, account_id):
    from tests.conftest import with_settings, free_port

    down = with_settings(settings, vault_addr=f"http://127.0.0.1:{free_port()}", vault_timeout=1.0)
    client = make_app(down).test_client()
    errors = Delta("iris_token_broker_vault_errors_total", operation="read", reason="connection")

    response = client.get(f"/token/{account_id}", headers=auth_header)

    assert response.status_code == 503
    assert errors() == 1


@pytest.mark.parametrize(
    ("body", "labels"),
    [
        ({"type": "INSTALLED", "clientId": "c", "clientSecret": "s"}, ("INSTALLED", "installed")),
        ({"type": "UNINSTALLED"}, ("UNINSTALLED", "not_installed")),
        ({"type": "SUSPENDED"}, ("other", "ignored")),
        ({"type": "INSTALLED"}, ("none", "invalid_request")),
    ],
    ids=["install", "uninstall of unknown account", "unknown type", "install without clientId"],
)
def test_callbacks_count_by_type_and_outcome(client, account_id, body, labels):
    event_type, outcome = labels
    counted = Delta("iris_token_broker_callbacks_total", type=event_type, outcome=outcome)

    client.post("/appinstall", json={**body, "accountId": account_id})

    assert counted() == 1


def test_unparsable_callback_counts_type_none(client):
    counted = Delta("iris_token_broker_callbacks_total", type="none", outcome="invalid_request")

    client.post("/appinstall", data="{", content_type="application/json")

    assert counted() == 1


def test_record_refresh_counts_outcome():
    from broker import metrics

    refreshed = Delta("iris_token_broker_token_refreshes_total", outcome="ok")

    metrics.record_refresh("ok")

    assert refreshed() == 1

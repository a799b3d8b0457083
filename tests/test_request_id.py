"""Request ids in responses and log lines, and the JSON log format."""

from __future__ import annotations

import io
import json
import logging
import uuid

import pytest

from broker.logs import configure_logging
from tests.conftest import TOKEN_URL


@pytest.fixture
def log_stream():
    """Capture the service's log output as configure_logging sets it up, then restore logging."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = io.StringIO()

    def configure(log_format: str) -> io.StringIO:
        configure_logging("INFO", log_format, stream)
        return stream

    yield configure
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


def test_response_returns_presented_id(client):
    response = client.get("/healthz", headers={"X-Request-ID": "abc-123"})

    assert response.headers["X-Request-ID"] == "abc-123"


def test_missing_id_is_generated(client):
    response = client.get("/healthz")

    generated = response.headers["X-Request-ID"]
    assert uuid.UUID(hex=generated).hex == generated


def test_each_request_gets_new_id(client):
    first = client.get("/healthz").headers["X-Request-ID"]
    second = client.get("/healthz").headers["X-Request-ID"]

    assert first != second


@pytest.mark.parametrize(
    "presented",
    ["", "x" * 129, "has space", "tab\there", "caf\u00e9"],
    ids=["empty", "longer than 128", "with a space", "with a tab", "not ASCII"],
)
def test_invalid_id_is_replaced(client, presented):
    response = client.get("/healthz", headers={"X-Request-ID": presented})

    assert response.headers["X-Request-ID"] != presented
    assert len(response.headers["X-Request-ID"]) == 32


def test_id_of_128_characters_is_kept(client):
    presented = "a" * 128

    response = client.get("/healthz", headers={"X-Request-ID": presented})

    assert response.headers["X-Request-ID"] == presented


def test_error_response_carries_id(client):
    response = client.get("/token/not-a-uuid", headers={"X-Request-ID": "err-1"})

    assert response.status_code == 401
    assert response.headers["X-Request-ID"] == "err-1"


def test_json_lines_carry_request_id(client, log_stream):
    stream = log_stream("json")
    account_id = str(uuid.uuid4())

    client.post(
        "/appinstall",
        json={"type": "SUSPENDED", "accountId": account_id},
        headers={"X-Request-ID": "trace-42"},
    )

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    ours = [line for line in lines if account_id in line["message"]]
    assert ours
    assert all(line["request_id"] == "trace-42" for line in ours)
    assert {"time", "level", "logger", "message", "process"} <= set(ours[0])


def test_every_line_of_request_has_its_id(client, log_stream, auth_header, trackunit):
    account_id = str(uuid.uuid4())
    client.post(
        "/appinstall",
        json={"type": "INSTALLED", "accountId": account_id, "clientId": "c", "clientSecret": "s"},
    )
    trackunit.register_uri("POST", TOKEN_URL, status_code=503, json={})
    stream = log_stream("json")

    client.get(f"/token/{account_id}", headers={**auth_header, "X-Request-ID": "trace-7"})

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    loggers = {line["logger"] for line in lines}
    assert {"broker.app", "broker.trackunit"} <= loggers
    assert [line["request_id"] for line in lines] == ["trace-7"] * len(lines)


def test_text_lines_carry_request_id(client, log_stream):
    stream = log_stream("text")
    account_id = str(uuid.uuid4())

    client.post(
        "/appinstall",
        json={"type": "SUSPENDED", "accountId": account_id},
        headers={"X-Request-ID": "trace-43"},
    )

    assert f"[trace-43] broker.app: Ignored callback of type 'SUSPENDED' for account {account_id}" in stream.getvalue()


def test_lines_outside_request_have_dash(client, log_stream):
    stream = log_stream("json")
    client.get("/healthz", headers={"X-Request-ID": "before"})

    logging.getLogger("broker.test").info("background work")

    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["request_id"] == "-"

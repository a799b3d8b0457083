"""TokenClient against loopback token endpoints that reply slowly or with too much.

These use a real requests.Session and real sockets, because requests-mock has no socket
timeouts, so it cannot show which waits the client bounds.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import pytest
import requests

from broker.errors import UpstreamError, UpstreamTimeout
from broker.trackunit import MAX_TOKEN_REPLY_BYTES, TokenClient
from tests.test_appinstall import token_reply

TIMEOUT = 1.0
TOKEN_JSON = json.dumps(token_reply("tok-limits")).encode()
# Reply writers stop after this long, so a client that never hangs up cannot keep a
# server thread alive past the test.
_MAX_WRITER_SECONDS = 4.0


class _TokenHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - the name is fixed by http.server
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            self.server.request_count += 1
            self.server.client_ports.add(self.client_address[1])
        try:
            self.server.reply(self)
        except OSError:
            return

    def send_json_headers(self, length: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


class TokenServer(ThreadingHTTPServer):
    """A token endpoint on 127.0.0.1 whose reply is written by `reply(handler)`."""

    daemon_threads = True

    def __init__(self, reply: Callable[[_TokenHandler], None]):
        super().__init__(("127.0.0.1", 0), _TokenHandler)
        self.reply = reply
        self.lock = threading.Lock()
        self.request_count = 0
        self.client_ports: set[int] = set()
        self.release = threading.Event()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="token"
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/apptoken"

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


def reply_normally(handler: _TokenHandler) -> None:
    handler.send_json_headers(len(TOKEN_JSON))
    handler.wfile.write(TOKEN_JSON)


def reply_dripping(handler: _TokenHandler) -> None:
    """Send the token JSON one byte every 0.2 s, each byte well within a read timeout."""
    handler.send_json_headers(len(TOKEN_JSON))
    started = time.monotonic()
    for byte in TOKEN_JSON:
        if time.monotonic() - started > _MAX_WRITER_SECONDS:
            return
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(0.2)


def reply_one_byte_then_silence(handler: _TokenHandler) -> None:
    """Send the headers, one body byte 0.8 s later, then nothing until the test ends."""
    handler.send_json_headers(len(TOKEN_JSON))
    time.sleep(0.8)
    handler.wfile.write(TOKEN_JSON[:1])
    handler.wfile.flush()
    handler.server.release.wait(_MAX_WRITER_SECONDS)


def reply_one_megabyte(handler: _TokenHandler) -> None:
    """Send 128 KiB of a 1 MB body, then hold the rest until the test ends.

    A client that tried to read the whole body would wait for the rest and time out.
    """
    size = 1024 * 1024
    head = 128 * 1024
    handler.send_json_headers(size)
    handler.wfile.write(b" " * head)
    handler.wfile.flush()
    handler.server.release.wait(_MAX_WRITER_SECONDS)
    handler.wfile.write(b" " * (size - head))


@pytest.fixture
def serve():
    """Start a TokenServer with the given reply writer. Every server stops after the test."""
    servers: list[TokenServer] = []

    def start(reply: Callable[[_TokenHandler], None]) -> TokenServer:
        server = TokenServer(reply)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def session():
    with requests.Session() as session:
        yield session


def make_client(url: str, session: requests.Session) -> TokenClient:
    return TokenClient(
        url,
        timeout=TIMEOUT,
        max_retries=2,
        max_retry_after=1,
        default_lifetime=3600,
        max_lifetime=86400,
        session=session,
        sleep=lambda seconds: None,
    )


def fetch(client: TokenClient):
    return client.fetch("account-1", "client-1", "secret-1", ("asset.view",))


def test_normal_reply_issues_token(serve, session):
    server = serve(reply_normally)

    issued = fetch(make_client(server.url, session))

    assert issued.access_token == "tok-limits"
    assert issued.expires_in == 3600


def test_normal_replies_reuse_connection(serve, session):
    server = serve(reply_normally)
    client = make_client(server.url, session)

    fetch(client)
    fetch(client)

    assert server.request_count == 2
    assert len(server.client_ports) == 1


def test_dripping_reply_times_out(serve, session):
    server = serve(reply_dripping)
    started = time.monotonic()

    with pytest.raises(UpstreamTimeout) as raised:
        fetch(make_client(server.url, session))

    elapsed = time.monotonic() - started
    assert elapsed < 2.5
    assert raised.value.status == 504
    assert server.request_count == 1


def test_silent_body_stops_at_deadline(serve, session):
    # The byte at 0.8 s restarts the socket's read timeout. Only a read capped at the
    # deadline ends before 0.8 + TIMEOUT seconds.
    server = serve(reply_one_byte_then_silence)
    started = time.monotonic()

    with pytest.raises(UpstreamTimeout):
        fetch(make_client(server.url, session))

    elapsed = time.monotonic() - started
    assert elapsed < 1.5
    assert server.request_count == 1


def test_oversized_reply_is_invalid(serve, session):
    server = serve(reply_one_megabyte)
    started = time.monotonic()

    with pytest.raises(UpstreamError) as raised:
        fetch(make_client(server.url, session))

    elapsed = time.monotonic() - started
    assert type(raised.value) is UpstreamError
    assert raised.value.status == 502
    assert "invalid response" in raised.value.message
    assert f"larger than {MAX_TOKEN_REPLY_BYTES} bytes" in raised.value.message
    assert elapsed < TIMEOUT
    assert server.request_count == 1

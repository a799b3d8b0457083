"""A local stand-in for Trackunit's `apptoken` endpoint, for offline runs and end-to-end tests.

It follows the documented contract: a form-encoded POST with grant_type=client_credentials,
client_id, client_secret and a space-separated scope; a JSON reply with token_type Bearer,
expires_in, access_token and the granted scope; OAuth 2.0 errors (invalid_client,
invalid_scope, unsupported_grant_type) otherwise. Clients are registered in memory with the
scopes they may receive. Tokens are random opaque strings, not signed JWTs.

It also serves `GET /jwks`: the public key that signs the sandbox's install callbacks
(see sandbox/callback_signing.py), in place of Trackunit's marketplace JWKS.

Run it alone with:
    python sandbox/trackunit_standin.py --port 8081 --client ID:SECRET:scope1,scope2
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox.callback_signing import DEFAULT_KEY_DIR, load_or_create


@dataclass
class RegisteredClient:
    """An OAuth client the stand-in accepts, with the scopes it may be granted."""

    client_secret: str = field(repr=False)
    scopes: frozenset[str]


@dataclass
class StandinState:
    """Registered clients, the token lifetime, the JWKS, and request counts for tests to read.

    Fault injection for tests: script() queues canned responses that the next requests
    get instead of the normal ones, and hang() makes requests wait without a response
    until release() or `max_hang` seconds, whichever comes first.
    """

    clients: dict[str, RegisteredClient] = field(default_factory=dict)
    expires_in: int = 3600
    request_count: int = 0
    max_hang: float = 30.0
    jwks: dict | None = None
    jwks_request_count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    scripted: deque[tuple[int, dict]] = field(default_factory=deque)
    released: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.released.set()

    def register(self, client_id: str, client_secret: str, scopes: set[str] | frozenset[str]) -> None:
        """Accept this client from now on, granting at most `scopes`."""
        with self.lock:
            self.clients[client_id] = RegisteredClient(client_secret, frozenset(scopes))

    def script(self, *responses: tuple[int, dict]) -> None:
        """Queue (status, JSON body) pairs that the next requests get, one each, in order."""
        with self.lock:
            self.scripted.extend(responses)

    def hang(self) -> None:
        """Make every request from now on wait without a response until release()."""
        self.released.clear()

    def release(self) -> None:
        """Let waiting and later requests proceed normally."""
        self.released.set()


class _Handler(BaseHTTPRequestHandler):
    server: "StandinServer"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the name is fixed by http.server
        state = self.server.state
        with state.lock:
            state.jwks_request_count += 1
            jwks = state.jwks
        if self.path.split("?")[0] != "/jwks" or jwks is None:
            self._reply(404, {"error": "not_found"})
            return
        self._reply(200, jwks)

    def do_POST(self) -> None:  # noqa: N802 - the name is fixed by http.server
        state = self.server.state
        with state.lock:
            state.request_count += 1
        state.released.wait(state.max_hang)
        with state.lock:
            canned = state.scripted.popleft() if state.scripted else None
        if canned is not None:
            self._drain_body()
            self._reply(*canned)
            return

        if self.path.split("?")[0] != "/apptoken":
            self._reply(404, {"error": "not_found"})
            return
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            self._reply(400, {"error": "invalid_request", "error_description": "form encoding required"})
            return

        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        if form.get("grant_type") != "client_credentials":
            self._reply(400, {"error": "unsupported_grant_type", "error_description": "use client_credentials"})
            return

        with state.lock:
            client = state.clients.get(form.get("client_id", ""))
            lifetime = state.expires_in
        if client is None or not secrets.compare_digest(
            client.client_secret.encode(), form.get("client_secret", "").encode()
        ):
            self._reply(401, {"error": "invalid_client", "error_description": "client authentication failed"})
            return

        requested = set(form.get("scope", "").split()) or set(client.scopes)
        if not requested <= client.scopes:
            self._reply(400, {"error": "invalid_scope", "error_description": "scope not granted to this client"})
            return

        self._reply(
            200,
            {
                "token_type": "Bearer",
                "expires_in": lifetime,
                "access_token": "standin." + secrets.token_urlsafe(48),
                "scope": " ".join(sorted(requested)),
            },
        )

    def _drain_body(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the console quiet. The request line contains no secret, but it adds noise."""


class StandinServer(ThreadingHTTPServer):
    """The stand-in HTTP server. `state` is shared with the code that started it."""

    daemon_threads = True
    # socketserver's default backlog of 5 drops connections when many clients connect at
    # once, and a dropped SYN is retried only after about 1 s, which looks like a timeout.
    request_queue_size = 128

    def handle_error(self, request, client_address) -> None:
        """Stay quiet when a client gave up before the reply, as a timed-out caller does."""
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)

    def __init__(self, address: tuple[str, int], state: StandinState | None = None):
        super().__init__(address, _Handler)
        self.state = state or StandinState()

    @property
    def token_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/apptoken"

    @property
    def jwks_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/jwks"


def start_in_thread(state: StandinState | None = None, port: int = 0) -> StandinServer:
    """Start a stand-in on 127.0.0.1 in a daemon thread and return it. Call shutdown() to stop."""
    server = StandinServer(("127.0.0.1", port), state)
    threading.Thread(target=server.serve_forever, daemon=True, name="trackunit-standin").start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Offline stand-in for Trackunit's apptoken endpoint.")
    parser.add_argument("--port", type=int, default=8081, help="port on 127.0.0.1")
    parser.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="ID:SECRET:SCOPES",
        help="register a client; SCOPES is comma-separated. May repeat.",
    )
    parser.add_argument("--expires-in", type=int, default=3600, help="token lifetime in seconds")
    parser.add_argument(
        "--signing-key-dir",
        type=Path,
        default=DEFAULT_KEY_DIR,
        help="directory of the callback signing key whose public half /jwks serves "
        "(created when missing; default .local/sandbox)",
    )
    args = parser.parse_args(argv)

    signing_key = load_or_create(args.signing_key_dir)
    state = StandinState(expires_in=args.expires_in, jwks=signing_key.jwks())
    for spec in args.client:
        client_id, client_secret, scopes = spec.split(":", 2)
        state.register(client_id, client_secret, set(scopes.replace(",", " ").split()))

    server = StandinServer(("127.0.0.1", args.port), state)
    print(f"Trackunit stand-in serving {server.token_url} and {server.jwks_url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

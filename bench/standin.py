"""Run the Trackunit stand-in for the benchmark, with realistic tokens and a request counter.

It is sandbox/trackunit_standin.py with three changes that only the benchmark needs.
Access tokens are padded to --token-bytes characters, because the stand-in's own are 72
characters and a signed JWT access token is closer to 1 KB (an estimate). `GET /stats`
returns how many token requests (POSTs) the stand-in has received, so the benchmark can
count upstream calls. Nagle's algorithm is off, as the handler class explains.

    python -m bench.standin --port 8081 --clients-file clients.json --token-bytes 1024

The clients file maps each client_id to [client_secret, "space-separated scopes"].
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sandbox.trackunit_standin import StandinServer, StandinState, _Handler  # noqa: E402


class _BenchHandler(_Handler):
    server: "BenchStandinServer"
    # http.server writes the headers and the body in two sends. With Nagle's algorithm on,
    # the body then waits for the client's delayed ACK, about 40 ms on Linux, which would
    # make every token POST look that slow. Real token endpoints do not add that delay.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 - the name is fixed by http.server
        if self.path != "/stats":
            self._reply(404, {"error": "not_found"})
            return
        with self.server.state.lock:
            count = self.server.state.request_count
        self._reply(200, {"token_requests": count})

    def _reply(self, status: int, body: dict) -> None:
        token = body.get("access_token")
        if isinstance(token, str) and len(token) < self.server.token_bytes:
            padding = secrets.token_urlsafe(self.server.token_bytes)
            body = {**body, "access_token": (token + padding)[: self.server.token_bytes]}
        super()._reply(status, body)


class BenchStandinServer(StandinServer):
    """The stand-in with _BenchHandler and a fixed access-token length."""

    def __init__(self, address: tuple[str, int], state: StandinState, token_bytes: int):
        super().__init__(address, state)
        self.RequestHandlerClass = _BenchHandler
        self.token_bytes = token_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Trackunit stand-in for the benchmark.")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--clients-file", type=Path, required=True, help="JSON client registry")
    parser.add_argument("--token-bytes", type=int, default=1024, help="access token length")
    parser.add_argument("--expires-in", type=int, default=3600, help="token lifetime in seconds")
    args = parser.parse_args(argv)

    state = StandinState(expires_in=args.expires_in)
    for client_id, (client_secret, scopes) in json.loads(args.clients_file.read_text()).items():
        state.register(client_id, client_secret, set(scopes.split()))

    server = BenchStandinServer(("127.0.0.1", args.port), state, args.token_bytes)
    print(f"Trackunit stand-in serving {server.token_url} with {len(state.clients)} clients", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

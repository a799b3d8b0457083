"""Test helpers for the Trackunit-Identity check: real keys, signed tokens, a loopback JWKS.

Keys are generated per test session with `cryptography`. JwksServer serves whatever key
set a test puts in it over real HTTP on 127.0.0.1, and counts the requests it gets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

APP_ID = "@acme/fleet-insights"


@dataclass
class KeyPair:
    """A private key, its kid and the algorithm the tests sign with."""

    private_key: object
    kid: str
    algorithm: str

    def public_jwk(self, **extra: object) -> dict[str, object]:
        """Return the public JWK with kid and use, plus any `extra` members (such as alg)."""
        algorithm = jwt.get_algorithm_by_name(self.algorithm)
        jwk = json.loads(algorithm.to_jwk(self.private_key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig"}, **extra)
        return jwk

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: dict[str, object], headers: dict[str, object] | None = None) -> str:
        """Sign `claims` with this key. `headers` replaces the default {"kid": self.kid}.

        The token is assembled by hand so tests can send headers PyJWT will not encode,
        such as a null kid.
        """
        header = {"kid": self.kid} if headers is None else dict(headers)
        header = {"alg": self.algorithm, "typ": "JWT", **header}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        algorithm = jwt.get_algorithm_by_name(self.algorithm)
        signature = algorithm.sign(signing_input.encode(), self.private_key)
        return f"{signing_input}.{_b64(signature)}"


def _b64(part: bytes) -> str:
    return base64.urlsafe_b64encode(part).rstrip(b"=").decode()


_RSA_CACHE: dict[int, rsa.RSAPrivateKey] = {}


def rsa_pair(kid: str | None = None, algorithm: str = "RS256", *, slot: int = 0) -> KeyPair:
    """Return an RSA-2048 key pair. Keys are generated once per `slot` to keep tests fast."""
    if slot not in _RSA_CACHE:
        _RSA_CACHE[slot] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return KeyPair(_RSA_CACHE[slot], kid or f"rsa-{slot}", algorithm)


def ec_pair(kid: str | None = None, algorithm: str = "ES256") -> KeyPair:
    """Return a fresh EC key pair on the curve `algorithm` needs."""
    curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}[algorithm]
    return KeyPair(ec.generate_private_key(curve), kid or f"ec-{uuid.uuid4().hex[:8]}", algorithm)


def ed25519_pair(kid: str | None = None) -> KeyPair:
    """Return a fresh Ed25519 key pair (algorithm EdDSA)."""
    return KeyPair(ed25519.Ed25519PrivateKey.generate(), kid or "ed-1", "EdDSA")


def claims_for(
    account_id: str,
    /,
    *,
    app_id: str | None = APP_ID,
    issued_at: int | None = None,
    lifetime: int = 300,
    **extra: object,
) -> dict[str, object]:
    """Return the claims of a valid token for this account, issued now by default."""
    now = int(time.time()) if issued_at is None else issued_at
    claims: dict[str, object] = {"iat": now, "nbf": now, "exp": now + lifetime}
    claims["accountId"] = account_id
    if app_id is not None:
        claims["irisAppId"] = app_id
    claims.update(extra)
    return claims


def hs256_token(secret: bytes, claims: dict[str, object], kid: str) -> str:
    """Build an HS256 token by hand, because PyJWT refuses to use a PEM key as HMAC secret."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = _b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def unsigned_token(claims: dict[str, object], kid: str) -> str:
    """Build an `alg: none` token with an empty signature."""
    return jwt.encode(claims, None, algorithm="none", headers={"kid": kid})


@dataclass
class JwksState:
    """The key set a JwksServer serves, a failure switch, a response delay in seconds and a
    request count."""

    keys: list[dict[str, object]] = field(default_factory=list)
    raw_body: bytes | None = None
    status: int = 200
    delay: float = 0.0
    request_count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _JwksHandler(BaseHTTPRequestHandler):
    server: "JwksServer"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the name is fixed by http.server
        state = self.server.state
        with state.lock:
            state.request_count += 1
            status = state.status
            body = state.raw_body or json.dumps({"keys": list(state.keys)}).encode()
            delay = state.delay
        time.sleep(delay)
        if status != 200:
            body = b'{"error": "unavailable"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


class JwksServer(ThreadingHTTPServer):
    """A JWKS endpoint on 127.0.0.1 in a daemon thread. Call stop() when done."""

    daemon_threads = True

    def __init__(self, keys: list[dict[str, object]] | None = None):
        super().__init__(("127.0.0.1", 0), _JwksHandler)
        self.state = JwksState(keys=list(keys or []))
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="jwks"
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/jwks"

    @property
    def request_count(self) -> int:
        with self.state.lock:
            return self.state.request_count

    def publish(self, *jwks: dict[str, object]) -> None:
        """Replace the served key set."""
        with self.state.lock:
            self.state.keys = list(jwks)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


class SilentServer:
    """A loopback port that accepts connections and never responds, like a hung JWKS host."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)

    @property
    def url(self) -> str:
        host, port = self._socket.getsockname()
        return f"http://{host}:{port}/jwks"

    def close(self) -> None:
        self._socket.close()


class _DripHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the name is fixed by http.server
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        # One byte per 0.1 s: each read gets data well within a read timeout, so only an
        # overall deadline stops the client. Bounded to 100 bytes (10 s).
        for _ in range(100):
            try:
                self.wfile.write(b" ")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.1)

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


class DripServer(ThreadingHTTPServer):
    """A JWKS host on 127.0.0.1 that sends its body one byte at a time. Call stop()."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _DripHandler)
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="drip"
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/jwks"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)

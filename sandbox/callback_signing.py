"""The offline sandbox's stand-in for the key Trackunit signs install callbacks with.

One EC P-256 key is kept in `<key dir>/callback-signing-key.pem` (mode 0600, created on
first use). The Trackunit stand-in serves its public half as a JWKS, and
sandbox/send_callback.py signs callbacks with it, so the service can run with
REQUIRE_TRACKUNIT_IDENTITY on. The key only signs sandbox callbacks and is worth nothing
outside them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_KEY_DIR = ROOT / ".local" / "sandbox"
KEY_FILE_NAME = "callback-signing-key.pem"
ALGORITHM = "ES256"
ISSUER = "trackunit-standin"


@dataclass(frozen=True)
class SigningKey:
    """A private key and the kid its public half is published under."""

    private_key: ec.EllipticCurvePrivateKey
    kid: str

    def jwks(self) -> dict[str, object]:
        """Return the JWKS document ({"keys": [...]}) with the public half of this key."""
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private_key.public_key()))
        public.update({"kid": self.kid, "use": "sig", "alg": ALGORITHM})
        return {"keys": [public]}

    def sign_callback(
        self, body: dict[str, object], *, lifetime: int = 300, issued_at: int | None = None
    ) -> str:
        """Return a Trackunit-Identity token for this callback body, valid for `lifetime` s.

        The token names the body's accountId and irisAppId, so the service's claim check
        runs in the sandbox too.
        """
        now = int(time.time()) if issued_at is None else issued_at
        claims = {"iss": ISSUER, "iat": now, "nbf": now, "exp": now + lifetime}
        for name in ("accountId", "irisAppId"):
            if body.get(name) is not None:
                claims[name] = body[name]
        return jwt.encode(
            claims, self.private_key, algorithm=ALGORITHM, headers={"kid": self.kid}
        )


def load_or_create(key_dir: Path = DEFAULT_KEY_DIR) -> SigningKey:
    """Load the sandbox signing key from `key_dir`, creating it (0600) when it is missing."""
    path = Path(key_dir) / KEY_FILE_NAME
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        private_key = ec.generate_private_key(ec.SECP256R1())
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # O_EXCL: when two processes create the key at once, the second one loads the first's.
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_or_create(key_dir)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pem)

    private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} does not hold an EC private key; delete it to make a new one")
    return SigningKey(private_key, _key_id(private_key))


def _key_id(private_key: ec.EllipticCurvePrivateKey) -> str:
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sandbox-" + hashlib.sha256(der).hexdigest()[:16]

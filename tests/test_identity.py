"""Unit tests of the Trackunit-Identity verifier and the JWKS cache.

Keys are real RSA, EC and Ed25519 keys, and the JWKS is served over loopback HTTP. The
JWKS cache runs on a fake monotonic clock, so TTL and refetch limits are driven by hand.
Token times are wall-clock Unix seconds, as PyJWT checks them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from broker.config import ConfigError, load_settings
from broker.errors import IdentityRejected, IdentityUnavailable
from broker.identity import IdentityVerifier
from broker.install import InstallEvent
from broker.jwks import JwksCache
from tests.conftest import FakeClock, free_port
from tests.identity_support import (
    APP_ID,
    DripServer,
    JwksServer,
    KeyPair,
    SilentServer,
    claims_for,
    ec_pair,
    ed25519_pair,
    hs256_token,
    rsa_pair,
    unsigned_token,
)

ACCOUNT = "6b5cb246-7945-4bb6-bec5-2a1413ffd1b3"
OTHER_ACCOUNT = "0d9b7a0c-8a5e-4d37-9d1b-2f1b0c6f4e21"
TTL = 300
REFETCH_INTERVAL = 30
# Generous for fetches that should succeed, so a loaded CI machine does not fail them.
# Tests of hung or unreachable hosts use FAILURE_TIMEOUT and measure how long they take.
TIMEOUT = 5.0
FAILURE_TIMEOUT = 0.5


@pytest.fixture(scope="module")
def rsa_key():
    return rsa_pair("rsa-main")


@pytest.fixture(scope="module")
def ec_key():
    return ec_pair("ec-main")


@pytest.fixture
def jwks(rsa_key, ec_key):
    """A loopback JWKS that publishes rsa_key and ec_key."""
    server = JwksServer([rsa_key.public_jwk(), ec_key.public_jwk()])
    yield server
    server.stop()


@pytest.fixture
def cache_clock() -> FakeClock:
    return FakeClock()


def make_verifier(
    url: str, clock: FakeClock, *, timeout: float = TIMEOUT, **options
) -> IdentityVerifier:
    cache = JwksCache(
        url, timeout=timeout, ttl=TTL, min_refetch_interval=REFETCH_INTERVAL, clock=clock
    )
    return IdentityVerifier(cache, leeway=options.pop("leeway", 30), **options)


@pytest.fixture
def verifier(jwks, cache_clock) -> IdentityVerifier:
    return make_verifier(jwks.url, cache_clock)


def install_event(account_id: str = ACCOUNT, app_id: str | None = APP_ID) -> InstallEvent:
    return InstallEvent(
        type="INSTALLED",
        account_id=account_id,
        iris_app_id=app_id,
        client_id="client-1",
        client_secret="secret-1",
    )


def rejection_reason(verifier: IdentityVerifier, token: str | None) -> str:
    with pytest.raises(IdentityRejected) as caught:
        verifier.verify(token, install_event())
    return caught.value.reason


# Valid tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_key",
    [
        pytest.param(lambda: rsa_pair("rsa-rs256", "RS256"), id="RS256"),
        pytest.param(lambda: rsa_pair("rsa-ps256", "PS256"), id="PS256"),
        pytest.param(lambda: rsa_pair("rsa-rs512", "RS512"), id="RS512"),
        pytest.param(lambda: ec_pair("ec-256", "ES256"), id="ES256"),
        pytest.param(lambda: ec_pair("ec-384", "ES384"), id="ES384"),
        pytest.param(lambda: ed25519_pair("ed-1"), id="EdDSA"),
    ],
)
def test_valid_token_verifies(jwks, verifier, make_key):
    key = make_key()
    jwks.publish(key.public_jwk())
    claims = claims_for(ACCOUNT)

    identity = verifier.verify(key.sign(claims), install_event())

    assert identity.issued_at == claims["iat"]
    assert identity.expires_at == claims["exp"]
    assert identity.key_id == key.kid
    assert identity.algorithm == key.algorithm


def test_valid_token_with_bearer_prefix(verifier, rsa_key):
    token = rsa_key.sign(claims_for(ACCOUNT))

    identity = verifier.verify(f"Bearer {token}", install_event())

    assert identity.key_id == rsa_key.kid


def test_token_without_binding_claims_verifies(verifier, ec_key):
    now = int(time.time())
    token = ec_key.sign({"iat": now, "exp": now + 60})

    identity = verifier.verify(token, install_event())

    assert identity.claim_names == ("exp", "iat")


def test_jwk_alg_member_must_match_token(jwks, verifier, rsa_key):
    jwks.publish(rsa_key.public_jwk(alg="RS256"))
    token = rsa_pair("rsa-main", "PS256").sign(claims_for(ACCOUNT))

    assert rejection_reason(verifier, token) == "algorithm_not_allowed"


def test_configured_issuer_and_audience_accepted(jwks, cache_clock, ec_key):
    verifier = make_verifier(
        jwks.url, cache_clock, issuer="https://iris.trackunit.com", audience=APP_ID
    )
    claims = claims_for(ACCOUNT, iss="https://iris.trackunit.com", aud=APP_ID)

    identity = verifier.verify(ec_key.sign(claims), install_event())

    assert identity.key_id == ec_key.kid


# Rejections --------------------------------------------------------------------------------


def test_missing_header_rejected(verifier):
    assert rejection_reason(verifier, None) == "missing_header"


def test_empty_header_rejected(verifier):
    assert rejection_reason(verifier, "  ") == "missing_header"


@pytest.mark.parametrize(
    "garbage",
    ["garbage", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.%%%.sig", "x" * 9000],
    ids=["one word", "three junk parts", "bad base64 payload", "oversized"],
)
def test_garbage_token_rejected(verifier, garbage):
    assert rejection_reason(verifier, garbage) == "malformed_token"


def test_token_without_kid_rejected_without_fetch(jwks, verifier, rsa_key):
    token = rsa_key.sign(claims_for(ACCOUNT), headers={})

    assert rejection_reason(verifier, token) == "unknown_key"
    assert jwks.request_count == 0


def test_token_with_null_kid_rejected_without_fetch(jwks, verifier, rsa_key):
    token = rsa_key.sign(claims_for(ACCOUNT), headers={"kid": None})

    assert rejection_reason(verifier, token) == "malformed_token"
    assert jwks.request_count == 0


def test_unknown_kid_rejected(verifier, rsa_key):
    token = rsa_key.sign(claims_for(ACCOUNT), headers={"kid": "no-such-key"})

    assert rejection_reason(verifier, token) == "unknown_key"


def test_token_signed_by_wrong_key_rejected(verifier, rsa_key):
    impostor = rsa_pair(rsa_key.kid, slot=1)

    assert rejection_reason(verifier, impostor.sign(claims_for(ACCOUNT))) == "bad_signature"


def test_tampered_claims_rejected(verifier, ec_key):
    header, _, signature = ec_key.sign(claims_for(ACCOUNT)).split(".")
    other = ec_key.sign(claims_for(ACCOUNT, lifetime=86400)).split(".")[1]

    assert rejection_reason(verifier, f"{header}.{other}.{signature}") == "bad_signature"


def test_alg_none_rejected(jwks, verifier, rsa_key):
    token = unsigned_token(claims_for(ACCOUNT), rsa_key.kid)

    assert rejection_reason(verifier, token) == "algorithm_not_allowed"
    assert jwks.request_count == 0


def test_hs256_with_public_key_as_secret_rejected(verifier, rsa_key):
    token = hs256_token(rsa_key.public_pem(), claims_for(ACCOUNT), rsa_key.kid)

    assert rejection_reason(verifier, token) == "algorithm_not_allowed"


def test_weak_rsa_key_rejected(jwks, verifier):
    weak = KeyPair(rsa.generate_private_key(public_exponent=65537, key_size=1024), "weak", "RS256")
    jwks.publish(weak.public_jwk())

    assert rejection_reason(verifier, weak.sign(claims_for(ACCOUNT))) == "unknown_key"


def test_rsa_kid_with_ec_algorithm_rejected(verifier, rsa_key):
    forged = ec_pair(rsa_key.kid)

    assert rejection_reason(verifier, forged.sign(claims_for(ACCOUNT))) == "algorithm_not_allowed"


def test_expired_token_rejected(verifier, ec_key):
    past = int(time.time()) - 3600
    token = ec_key.sign(claims_for(ACCOUNT, issued_at=past, lifetime=300))

    assert rejection_reason(verifier, token) == "expired"


def test_expiry_within_leeway_accepted(verifier, ec_key):
    issued = int(time.time()) - 310
    token = ec_key.sign(claims_for(ACCOUNT, issued_at=issued, lifetime=300))

    assert verifier.verify(token, install_event()).expires_at == issued + 300


def test_future_nbf_rejected(verifier, ec_key):
    future = int(time.time()) + 600
    token = ec_key.sign(claims_for(ACCOUNT, nbf=future, exp=future + 300))

    assert rejection_reason(verifier, token) == "not_yet_valid"


def test_future_iat_rejected(verifier, ec_key):
    future = int(time.time()) + 600
    token = ec_key.sign(claims_for(ACCOUNT, issued_at=future, nbf=int(time.time())))

    assert rejection_reason(verifier, token) == "not_yet_valid"


@pytest.mark.parametrize("claim", ["exp", "iat"])
def test_token_without_required_claim_rejected(verifier, ec_key, claim):
    claims = claims_for(ACCOUNT)
    del claims[claim]

    assert rejection_reason(verifier, ec_key.sign(claims)) == "missing_claim"


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"accountId": OTHER_ACCOUNT}, id="accountId of another account"),
        pytest.param({"account_id": OTHER_ACCOUNT}, id="account_id of another account"),
        pytest.param({"accountId": 42}, id="accountId not a string"),
        pytest.param({"irisAppId": "@evil/app"}, id="irisAppId of another app"),
        pytest.param({"iris_app_id": "@evil/app"}, id="iris_app_id of another app"),
    ],
)
def test_claim_mismatch_rejected(verifier, ec_key, claims):
    token = ec_key.sign(claims_for(ACCOUNT, **claims))

    assert rejection_reason(verifier, token) == "claim_mismatch"


def test_account_claim_compared_as_uuid(verifier, ec_key):
    token = ec_key.sign(claims_for(ACCOUNT.upper()))

    assert verifier.verify(token, install_event()).key_id == ec_key.kid


def test_app_claim_without_body_app_rejected(verifier, ec_key):
    token = ec_key.sign(claims_for(ACCOUNT))

    with pytest.raises(IdentityRejected) as caught:
        verifier.verify(token, install_event(app_id=None))
    assert caught.value.reason == "claim_mismatch"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        pytest.param(
            {"iss": "https://evil.example", "aud": APP_ID}, "claim_mismatch", id="wrong issuer"
        ),
        pytest.param(
            {"iss": "https://iris.trackunit.com", "aud": "@evil/app"},
            "claim_mismatch",
            id="wrong audience",
        ),
        pytest.param({"aud": APP_ID}, "missing_claim", id="no issuer"),
        pytest.param({"iss": "https://iris.trackunit.com"}, "missing_claim", id="no audience"),
    ],
)
def test_configured_issuer_or_audience_mismatch_rejected(jwks, cache_clock, ec_key, claims, reason):
    verifier = make_verifier(
        jwks.url, cache_clock, issuer="https://iris.trackunit.com", audience=APP_ID
    )

    assert rejection_reason(verifier, ec_key.sign(claims_for(ACCOUNT, **claims))) == reason


# Logging -----------------------------------------------------------------------------------


def test_rejection_logs_one_line_with_account_and_reason(verifier, ec_key, caplog):
    caplog.set_level(logging.DEBUG, logger="broker")
    token = ec_key.sign(claims_for(ACCOUNT, issued_at=int(time.time()) - 3600))

    with pytest.raises(IdentityRejected):
        verifier.verify(token, install_event())

    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert ACCOUNT in warnings[0].getMessage()
    assert "expired" in warnings[0].getMessage()


def test_debug_log_names_claims_but_not_signature(verifier, ec_key, caplog):
    caplog.set_level(logging.DEBUG, logger="broker")
    token = ec_key.sign(claims_for(ACCOUNT))

    verifier.verify(token, install_event())

    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "accountId, exp, iat, irisAppId, nbf" in logged
    assert token.split(".")[2] not in logged
    assert token not in logged


# Key set handling --------------------------------------------------------------------------


def test_keys_fetched_once_within_ttl(jwks, verifier, ec_key, cache_clock):
    for _ in range(5):
        verifier.verify(ec_key.sign(claims_for(ACCOUNT)), install_event())
        cache_clock.advance(TTL / 10)

    assert jwks.request_count == 1


def test_keys_refetched_after_ttl(jwks, verifier, ec_key, cache_clock):
    verifier.verify(ec_key.sign(claims_for(ACCOUNT)), install_event())
    cache_clock.advance(TTL + 1)

    verifier.verify(ec_key.sign(claims_for(ACCOUNT)), install_event())

    assert jwks.request_count == 2


def test_new_key_accepted_after_one_refetch(jwks, verifier, rsa_key, ec_key, cache_clock):
    verifier.verify(rsa_key.sign(claims_for(ACCOUNT)), install_event())
    rotated = ec_pair("ec-rotated")
    jwks.publish(rsa_key.public_jwk(), ec_key.public_jwk(), rotated.public_jwk())
    cache_clock.advance(REFETCH_INTERVAL)

    identity = verifier.verify(rotated.sign(claims_for(ACCOUNT)), install_event())

    assert identity.key_id == "ec-rotated"
    assert jwks.request_count == 2


def test_removed_key_rejected_after_refetch(jwks, verifier, rsa_key, ec_key, cache_clock):
    verifier.verify(ec_key.sign(claims_for(ACCOUNT)), install_event())
    jwks.publish(rsa_key.public_jwk())
    cache_clock.advance(TTL + 1)

    assert rejection_reason(verifier, ec_key.sign(claims_for(ACCOUNT))) == "unknown_key"


def test_random_kids_fetch_jwks_rarely(jwks, verifier, rsa_key, cache_clock):
    for _ in range(100):
        token = rsa_key.sign(claims_for(ACCOUNT), headers={"kid": uuid.uuid4().hex})
        assert rejection_reason(verifier, token) == "unknown_key"
        cache_clock.advance(0.5)

    # 100 kids over 50 fake seconds: the first fetch plus one refetch per 30 s interval.
    assert jwks.request_count == 2


def test_cached_key_verifies_while_jwks_down(jwks, verifier, ec_key, cache_clock):
    verifier.verify(ec_key.sign(claims_for(ACCOUNT)), install_event())
    jwks.stop()
    cache_clock.advance(TTL + 1)

    identity = verifier.verify(ec_key.sign(claims_for(ACCOUNT)), install_event())

    assert identity.key_id == ec_key.kid


def test_cached_key_skips_wait_for_running_fetch(jwks, verifier, ec_key, cache_clock):
    verifier.verify(ec_key.sign(claims_for(ACCOUNT)), install_event())
    cache_clock.advance(TTL + 1)
    jwks.state.delay = 0.4
    refresher = threading.Thread(
        target=verifier.verify, args=(ec_key.sign(claims_for(ACCOUNT)), install_event())
    )
    refresher.start()
    deadline = time.monotonic() + 2
    while jwks.request_count < 2 and time.monotonic() < deadline:
        time.sleep(0.01)

    started = time.monotonic()
    identity = verifier.verify(ec_key.sign(claims_for(ACCOUNT)), install_event())
    elapsed = time.monotonic() - started
    refresher.join(timeout=5)

    assert jwks.request_count == 2
    assert identity.key_id == ec_key.kid
    assert elapsed < 0.2


def test_cached_key_verifies_while_jwks_errors(jwks, verifier, ec_key, cache_clock):
    verifier.verify(ec_key.sign(claims_for(ACCOUNT)), install_event())
    jwks.state.status = 500
    cache_clock.advance(TTL + 1)

    identity = verifier.verify(ec_key.sign(claims_for(ACCOUNT)), install_event())

    assert identity.key_id == ec_key.kid
    assert jwks.request_count == 2


def test_unknown_kid_while_jwks_down_is_unavailable(jwks, verifier, ec_key, cache_clock):
    verifier.verify(ec_key.sign(claims_for(ACCOUNT)), install_event())
    jwks.state.status = 503
    cache_clock.advance(REFETCH_INTERVAL)
    token = ec_pair("ec-new").sign(claims_for(ACCOUNT))

    with pytest.raises(IdentityUnavailable):
        verifier.verify(token, install_event())


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"keys": "nope"}', b'{"keys": [{"kty": "RSA"}]}'],
    ids=["not JSON", "keys not an array", "no key with a kid"],
)
def test_broken_jwks_document_keeps_cached_keys(jwks, verifier, ec_key, cache_clock, body):
    verifier.verify(ec_key.sign(claims_for(ACCOUNT)), install_event())
    jwks.state.raw_body = body
    cache_clock.advance(TTL + 1)

    identity = verifier.verify(ec_key.sign(claims_for(ACCOUNT)), install_event())

    assert identity.key_id == ec_key.kid


def test_closed_port_is_unavailable_quickly(cache_clock, ec_key):
    url = f"http://127.0.0.1:{free_port()}/jwks"
    verifier = make_verifier(url, cache_clock, timeout=FAILURE_TIMEOUT)
    started = time.monotonic()

    with pytest.raises(IdentityUnavailable) as caught:
        verifier.verify(ec_key.sign(claims_for(ACCOUNT)), install_event())

    assert time.monotonic() - started < FAILURE_TIMEOUT * 2
    assert caught.value.retry_after == REFETCH_INTERVAL


def test_hung_jwks_is_unavailable_within_timeout(cache_clock, ec_key):
    silent = SilentServer()
    verifier = make_verifier(silent.url, cache_clock, timeout=FAILURE_TIMEOUT)
    started = time.monotonic()
    try:
        with pytest.raises(IdentityUnavailable):
            verifier.verify(ec_key.sign(claims_for(ACCOUNT)), install_event())
        elapsed = time.monotonic() - started
    finally:
        silent.close()

    assert elapsed < FAILURE_TIMEOUT * 2 + 0.5


def test_dripping_jwks_is_unavailable_within_deadline(cache_clock, ec_key):
    drip = DripServer()
    verifier = make_verifier(drip.url, cache_clock, timeout=FAILURE_TIMEOUT)
    started = time.monotonic()
    try:
        with pytest.raises(IdentityUnavailable):
            verifier.verify(ec_key.sign(claims_for(ACCOUNT)), install_event())
        elapsed = time.monotonic() - started
    finally:
        drip.stop()

    assert elapsed < FAILURE_TIMEOUT * 2 + 0.5


def test_failed_fetch_not_retried_within_interval(cache_clock, ec_key):
    silent = SilentServer()
    verifier = make_verifier(silent.url, cache_clock, timeout=FAILURE_TIMEOUT)
    token = ec_key.sign(claims_for(ACCOUNT))
    try:
        with pytest.raises(IdentityUnavailable):
            verifier.verify(token, install_event())
        started = time.monotonic()
        with pytest.raises(IdentityUnavailable):
            verifier.verify(token, install_event())
        elapsed = time.monotonic() - started
    finally:
        silent.close()

    assert elapsed < FAILURE_TIMEOUT / 2
    assert verifier.keys.fetch_count == 1


def test_concurrent_cold_lookups_share_one_fetch(jwks, verifier, ec_key):
    token = ec_key.sign(claims_for(ACCOUNT))
    results: list[str] = []

    def verify() -> None:
        results.append(verifier.verify(token, install_event()).key_id)

    threads = [threading.Thread(target=verify) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert results == [ec_key.kid] * 8
    assert jwks.request_count == 1


# Settings ----------------------------------------------------------------------------------


def test_identity_settings_defaults(base_env):
    env = {k: v for k, v in base_env.items() if k != "REQUIRE_TRACKUNIT_IDENTITY"}

    settings = load_settings(env)

    assert settings.require_trackunit_identity is True
    assert settings.trackunit_jwks_url == "https://iris.trackunit.com/api/marketplace/jwks"
    assert settings.trackunit_identity_leeway == 30


@pytest.mark.parametrize(
    ("raw", "expected"), [("true", True), ("1", True), ("FALSE", False), ("0", False)]
)
def test_require_identity_accepts_booleans(base_env, raw, expected):
    settings = load_settings({**base_env, "REQUIRE_TRACKUNIT_IDENTITY": raw})

    assert settings.require_trackunit_identity is expected


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("REQUIRE_TRACKUNIT_IDENTITY", "maybe"),
        ("TRACKUNIT_JWKS_URL", "ftp://example.test/jwks"),
        ("TRACKUNIT_IDENTITY_LEEWAY", "3600"),
        ("TRACKUNIT_JWKS_TIMEOUT", "0"),
        ("TRACKUNIT_JWKS_MIN_REFETCH_INTERVAL", "0"),
    ],
)
def test_invalid_identity_setting_names_variable(base_env, name, raw):
    with pytest.raises(ConfigError, match=name):
        load_settings({**base_env, name: raw})

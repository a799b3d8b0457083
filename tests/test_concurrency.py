"""Single-flight fetching and a cache under heavy churn, against the real OpenBao."""

import itertools
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import TOKEN_URL, with_settings
from tests.test_appinstall import ACCOUNT, DOCUMENTED_MESSAGE, token_reply
from tests.test_token_route import OTHER_ACCOUNT


def test_cold_stampede_makes_one_upstream_call(app, trackunit, auth_header):
    setup = app.test_client()
    setup.post("/appinstall", json=DOCUMENTED_MESSAGE)
    setup.post("/appinstall", json={**DOCUMENTED_MESSAGE, "accountId": OTHER_ACCOUNT, "clientId": "other"})
    release = threading.Event()
    upstream_calls = {"first": 0, "other": 0}

    def answer(request, context):
        if "client_id=other" in request.text:
            upstream_calls["other"] += 1
            return token_reply("other-token")
        upstream_calls["first"] += 1
        assert release.wait(timeout=20), "the stampede fetch was never released"
        return token_reply("shared-token")

    trackunit.register_uri("POST", TOKEN_URL, json=answer)
    start = threading.Barrier(51)

    def fetch_first():
        client = app.test_client()
        start.wait(timeout=10)
        return client.get(f"/token/{ACCOUNT}", headers=auth_header).json["access_token"]

    with ThreadPoolExecutor(max_workers=50) as pool:
        futures = [pool.submit(fetch_first) for _ in range(50)]
        start.wait(timeout=10)
        # The stampede's fetch is blocked upstream, yet another account is served.
        other = app.test_client().get(f"/token/{OTHER_ACCOUNT}", headers=auth_header)
        release.set()
        tokens = [future.result(timeout=30) for future in futures]

    assert other.json["access_token"] == "other-token"
    assert upstream_calls["first"] == 1
    assert tokens == ["shared-token"] * 50


def test_churning_cache_raises_nothing(make_app, settings, trackunit, auth_header):
    """32 threads make 500 lookups each over 50 accounts while tokens expire every few lookups."""
    ticks = itertools.count()
    lock = threading.Lock()

    def ticking_clock():
        with lock:
            return next(ticks) * 0.0002

    # Real background threads: requests join the refreshes they start.
    app = make_app(with_settings(settings, token_expiry_margin=0), clock=ticking_clock, executor=None)
    setup = app.test_client()
    accounts = [str(uuid.uuid4()) for _ in range(50)]
    for account in accounts:
        setup.post("/appinstall", json={**DOCUMENTED_MESSAGE, "accountId": account})
    trackunit.register_uri("POST", TOKEN_URL, json=token_reply(expires_in=1))

    def lookups(worker):
        client = app.test_client()
        statuses = set()
        for index in range(500):
            account = accounts[(worker + index) % len(accounts)]
            statuses.add(client.get(f"/token/{account}", headers=auth_header).status_code)
        return statuses

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(lookups, range(32)))

    assert set().union(*results) == {200}
    assert trackunit.call_count > len(accounts)

"""The benchmark's pure helpers: wrk output parsing, medians, ratios, targets and profiles.

The benchmark itself (scripts/bench) is not part of the test suite: it takes minutes and
its numbers depend on the machine.
"""

from __future__ import annotations

import json

import pytest

from bench import pyspy
from bench.report import check_targets, render_markdown, round_ratio, summarise
from bench.wrk import LoadResult, parse_output

WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:8080
  1 threads and 32 connections
BENCH_JSON {"requests": 50000, "duration_us": 10000000, "bytes": 123, "errors": {"connect": 0, "read": 1, "write": 0, "status": 2, "timeout": 0}, "latency_us": {"p50": 4200, "p90": 6100, "p99": 12500, "max": 40000, "mean": 4500.5}}
"""


def load(throughput: float, p99_ms: float = 10.0) -> LoadResult:
    return LoadResult(
        requests=int(throughput * 10), seconds=10, errors=0,
        p50_ms=1.0, p90_ms=2.0, p99_ms=p99_ms, max_ms=50.0,
    )


def test_parse_output_reads_counts():
    result = parse_output(WRK_OUTPUT)

    assert result.requests == 50000
    assert result.seconds == 10
    assert result.throughput == 5000
    assert result.errors == 3


def test_parse_output_converts_latency_to_ms():
    result = parse_output(WRK_OUTPUT)

    assert result.p50_ms == 4.2
    assert result.p99_ms == 12.5
    assert result.max_ms == 40.0


def test_parse_output_without_summary_line():
    with pytest.raises(ValueError, match="BENCH_JSON"):
        parse_output("Running 10s test @ http://127.0.0.1:8080\n")


def test_summarise_takes_medians():
    summary = summarise([load(100, 5), load(300, 9), load(200, 7)])

    assert summary.throughput == 200
    assert summary.p99_ms == 7


def test_round_ratio_pairs_rounds_in_order():
    hot = [load(90), load(200), load(95)]
    limit = [load(100), load(100), load(100)]

    assert round_ratio(hot, limit, "throughput") == pytest.approx(0.95)


def test_round_ratio_rejects_unequal_rounds():
    with pytest.raises(ValueError):
        round_ratio([load(1)], [load(1), load(2)], "throughput")


def results(**changes) -> dict:
    base = {
        "settings": {"workers": 2, "threads": 4},
        "scenarios": {
            name: {"throughput": 1000.0, "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0}
            for name in ("hot", "limit", "naive")
        },
        "ratios": {
            "hot_vs_limit_throughput": 0.95,
            "hot_vs_limit_p99": 1.1,
            "hot_vs_naive_throughput": 12.0,
        },
        "cold_path": {
            "accounts": 10, "cold_get_ms": 5.0, "hot_get_ms": 1.0, "vault_read_ms": 2.0,
            "token_post_ms": 1.5, "overhead_ms": 1.5, "overhead_p90_ms": 3.0,
        },
        "stampedes": [{"concurrency": 50, "succeeded": 50, "upstream_calls": 2}],
        "memory": {
            "accounts": 100, "token_bytes": 1024, "rss_before_mib": 30.0, "rss_after_mib": 31.0,
            "bytes_per_account": 1700.0, "bytes_per_account_beyond_token": 676.0,
        },
    }
    for key, value in changes.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) else value
    return base


def test_targets_all_met():
    assert all(target.met for target in check_targets(results()))


@pytest.mark.parametrize(
    "changes, missed",
    [
        ({"ratios": {"hot_vs_limit_throughput": 0.8}}, "hot path throughput vs. limit (a/b)"),
        ({"ratios": {"hot_vs_limit_p99": 1.5}}, "hot path p99 vs. limit p99"),
        ({"ratios": {"hot_vs_naive_throughput": 9.9}}, "hot path throughput vs. naive (a/c)"),
        ({"cold_path": {"overhead_ms": 2.1}}, "cold-path overhead (median)"),
        (
            {"stampedes": [{"concurrency": 50, "succeeded": 50, "upstream_calls": 3}]},
            "upstream calls per stampede (worst)",
        ),
        (
            {"memory": {"bytes_per_account_beyond_token": 2600.0}},
            "memory per cached account beyond the token",
        ),
    ],
    ids=["slow hot path", "slow p99", "near naive", "slow cold path", "stampede", "memory"],
)
def test_targets_report_the_one_missed(changes, missed):
    unmet = [target.name for target in check_targets(results(**changes)) if not target.met]

    assert unmet == [missed]


def test_markdown_marks_missed_target():
    text = render_markdown(results(ratios={"hot_vs_naive_throughput": 9.0}))

    assert "| hot path throughput vs. naive (a/c) | 9.0 | >= 10 | NO |" in text


def test_markdown_is_json_safe_input():
    # The orchestrator renders from the dict it also writes to results.json.
    data = json.loads(json.dumps(results()))

    assert "a/b throughput | 0.95" in render_markdown(data)


def test_pyspy_summary_counts_inclusive_and_self():
    collapsed = "\n".join([
        "main (a.py:1);handle (b.py:10);log (c.py:5) 3",
        "main (a.py:1);handle (b.py:12) 1",
        "main (a.py:2);idle (d.py:1) 4",
    ])

    total, rows = pyspy.summarise(collapsed)
    by_name = {name: (inclusive, own) for name, inclusive, own in rows}

    assert total == 8
    assert by_name["main (a.py)"] == (100.0, 0.0)
    assert by_name["handle (b.py)"] == (50.0, 12.5)
    assert by_name["log (c.py)"] == (37.5, 37.5)


def test_pyspy_summary_of_empty_profile():
    assert pyspy.summarise("") == (0, [])

"""Summarise interleaved wrk rounds, check the targets and render the results as Markdown.

Everything here is pure: it takes measured numbers and returns numbers or text, so the
tests can check it without starting a server.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .wrk import LoadResult

# Frames of thread and process start-up, which every sample contains, left out of the table.
_START_UP_FRAMES = (
    "(threading.py)",
    "(concurrent/futures/thread.py)",
    "(<frozen runpy>)",
    "(gunicorn/arbiter.py)",
    "(gunicorn/app/base.py)",
    "(gunicorn/app/wsgiapp.py)",
    "(gunicorn/__main__.py)",
    "(gunicorn/workers/base.py)",
)

# Targets for the default set-up on a 2-core machine.
HOT_THROUGHPUT_VS_LIMIT = 0.9
HOT_P99_VS_LIMIT = 1.2
HOT_VS_NAIVE = 10.0
COLD_OVERHEAD_MS = 2.0
MEMORY_BYTES_PER_ACCOUNT = 2500


@dataclass(frozen=True)
class Summary:
    """Medians over the rounds of one scenario."""

    throughput: float
    p50_ms: float
    p99_ms: float
    errors: int


def summarise(results: list[LoadResult]) -> Summary:
    """Return the median throughput and latencies of a scenario's rounds and total errors."""
    return Summary(
        throughput=statistics.median(r.throughput for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        errors=sum(r.errors for r in results),
    )


def round_ratio(top: list[LoadResult], bottom: list[LoadResult], metric: str) -> float:
    """Return the median over rounds of top[i].metric / bottom[i].metric.

    Pairing each round with its neighbour in time cancels slow drift of the machine.
    """
    ratios = [getattr(t, metric) / getattr(b, metric) for t, b in zip(top, bottom, strict=True)]
    return statistics.median(ratios)


@dataclass(frozen=True)
class Target:
    """One target: what was measured, the limit, and whether it is met."""

    name: str
    measured: str
    limit: str
    met: bool


def check_targets(results: dict) -> list[Target]:
    """Return each target with whether the results dict that bench/run.py builds meets it."""
    ratios = results["ratios"]
    cold = results["cold_path"]
    stampedes = results["stampedes"]
    workers = results["settings"]["workers"]
    memory = results["memory"]
    worst_stampede = max(s["upstream_calls"] for s in stampedes)

    return [
        Target(
            "hot path throughput vs. limit (a/b)",
            f"{ratios['hot_vs_limit_throughput']:.2f}",
            f">= {HOT_THROUGHPUT_VS_LIMIT}",
            ratios["hot_vs_limit_throughput"] >= HOT_THROUGHPUT_VS_LIMIT,
        ),
        Target(
            "hot path p99 vs. limit p99",
            f"{ratios['hot_vs_limit_p99']:.2f}",
            f"<= {HOT_P99_VS_LIMIT}",
            ratios["hot_vs_limit_p99"] <= HOT_P99_VS_LIMIT,
        ),
        Target(
            "hot path throughput vs. naive (a/c)",
            f"{ratios['hot_vs_naive_throughput']:.1f}",
            f">= {HOT_VS_NAIVE:g}",
            ratios["hot_vs_naive_throughput"] >= HOT_VS_NAIVE,
        ),
        Target(
            "cold-path overhead (median)",
            f"{cold['overhead_ms']:.2f} ms",
            f"<= {COLD_OVERHEAD_MS:g} ms",
            cold["overhead_ms"] <= COLD_OVERHEAD_MS,
        ),
        Target(
            "upstream calls per stampede (worst)",
            f"{worst_stampede}",
            f"<= {workers} (one per worker)",
            worst_stampede <= workers,
        ),
        Target(
            "memory per cached account beyond the token",
            f"{memory['bytes_per_account_beyond_token']:.0f} B",
            f"<= {MEMORY_BYTES_PER_ACCOUNT} B",
            memory["bytes_per_account_beyond_token"] <= MEMORY_BYTES_PER_ACCOUNT,
        ),
    ]


def render_markdown(results: dict) -> str:
    """Render the results dict as the Markdown tables of docs/benchmarks.md."""
    lines = ["| scenario | throughput (req/s) | p50 (ms) | p99 (ms) | errors |", "|---|---:|---:|---:|---:|"]
    labels = {
        "hot": "a. `GET /token`, token cached",
        "limit": "b. `GET /healthz` (the limit)",
        "naive": "c. naive: Vault read per request",
    }
    for key, label in labels.items():
        s = results["scenarios"][key]
        lines.append(
            f"| {label} | {s['throughput']:,.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['errors']} |"
        )

    ratios = results["ratios"]
    lines += [
        "",
        "| ratio (median of per-round ratios) | value |",
        "|---|---:|",
        f"| a/b throughput | {ratios['hot_vs_limit_throughput']:.2f} |",
        f"| a/b p99 latency | {ratios['hot_vs_limit_p99']:.2f} |",
        f"| a/c throughput | {ratios['hot_vs_naive_throughput']:.1f} |",
    ]

    cold = results["cold_path"]
    lines += [
        "",
        f"Cold path, median over {cold['accounts']} accounts (ms):",
        "",
        "| first `GET /token` | own Vault read | own token POST | overhead | overhead p90 | second `GET /token` |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {cold['cold_get_ms']:.2f} | {cold['vault_read_ms']:.2f} | {cold['token_post_ms']:.2f} "
        f"| {cold['overhead_ms']:.2f} | {cold['overhead_p90_ms']:.2f} | {cold['hot_get_ms']:.2f} |",
    ]

    workers = results["settings"]["workers"]
    calls = ", ".join(str(s["upstream_calls"]) for s in results["stampedes"])
    first = results["stampedes"][0]
    memory = results["memory"]
    lines += [
        "",
        f"Stampede: {first['concurrency']} concurrent first requests for one account, "
        f"{len(results['stampedes'])} times; upstream token calls: {calls} "
        f"({workers} worker processes).",
        "",
        f"Memory: {memory['accounts']:,} cached accounts with {memory['token_bytes']}-character "
        f"tokens grew the resident size from {memory['rss_before_mib']:.1f} MiB to "
        f"{memory['rss_after_mib']:.1f} MiB: {memory['bytes_per_account']:.0f} B per account, "
        f"{memory['bytes_per_account_beyond_token']:.0f} B beyond the token.",
        "",
        "| target | measured | limit | met |",
        "|---|---:|---:|:---:|",
    ]
    for target in check_targets(results):
        lines.append(f"| {target.name} | {target.measured} | {target.limit} | {'yes' if target.met else 'NO'} |")

    profile = results.get("profile")
    if profile and profile.get("functions"):
        lines += [
            "",
            f"py-spy profile of one worker under hot-path load ({profile['samples']} samples "
            "holding the GIL), functions by share of samples:",
            "",
            "| function | inclusive % | self % |",
            "|---|---:|---:|",
        ]
        for function in profile["functions"]:
            if function["name"].endswith(_START_UP_FRAMES):
                continue
            lines.append(f"| `{function['name']}` | {function['inclusive_pct']} | {function['self_pct']} |")
    return "\n".join(lines) + "\n"

"""Run wrk with bench/load.lua and turn its output into a LoadResult.

wrk (4.x, from Debian's `wrk` package) keeps a fixed number of keep-alive connections
busy for a fixed time, so it measures closed-loop throughput and the latency seen at
that concurrency. Its latency percentiles come from its own histogram, read in the Lua
`done()` hook.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

LUA_SCRIPT = Path(__file__).resolve().parent / "load.lua"
_MARKER = "BENCH_JSON "


@dataclass(frozen=True)
class LoadResult:
    """One wrk run: throughput in requests per second, latencies in milliseconds."""

    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def throughput(self) -> float:
        """Return completed requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0


def parse_output(stdout: str) -> LoadResult:
    """Read the BENCH_JSON line that load.lua prints, raising ValueError when it is missing."""
    for line in stdout.splitlines():
        if line.startswith(_MARKER):
            data = json.loads(line[len(_MARKER):])
            break
    else:
        raise ValueError("wrk output has no BENCH_JSON line; was it run with bench/load.lua?")

    latency = data["latency_us"]
    return LoadResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        errors=sum(data["errors"].values()),
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
    )


def run_wrk(
    url: str,
    path: str,
    *,
    seconds: float,
    connections: int,
    threads: int,
    api_key: str,
    accounts_file: Path | None = None,
) -> LoadResult:
    """Load url+path for `seconds` and return the result. Raises RuntimeError if wrk fails."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed: run 'apt-get install -y wrk' or scripts/bench")

    command = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout", "10s",
        "-s", str(LUA_SCRIPT),
        url,
        "--",
        path,
    ]
    if accounts_file is not None:
        command.append(str(accounts_file))

    env = {**os.environ, "BENCH_API_KEY": api_key}
    completed = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=seconds + 60, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"wrk exited with {completed.returncode}: {completed.stderr.strip()}")
    return parse_output(completed.stdout)

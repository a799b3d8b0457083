"""Benchmark the token path end to end on loopback and report it against its targets.

    python -m bench.run [--seconds 10] [--rounds 3] [--profile 10]

scripts/bench installs wrk and the Python packages and then runs this. It starts OpenBao,
the Trackunit stand-in, the service and the naive design (both under gunicorn.conf.py),
seeds accounts through the install callback, and then measures the following.

  a, b, c  wrk rounds interleaved as a, b, c, a, b, c, ... so drift hits all three alike.
           a is GET /token with the token cached, b is GET /healthz, c is the naive design.
  d        Each cold account's first GET /token against its own Vault read plus token POST.
  e        Stampedes of concurrent first requests for one account, counting token POSTs.
  f        Resident memory per cached account, in a fresh process (bench/memory.py).

It writes results.json and results.md to --output and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import hvac

from . import pyspy, services
from .paths import SCOPES, make_accounts, measure_cold_path, seed, stampede
from .report import check_targets, render_markdown, round_ratio, summarise
from .wrk import run_wrk

log = logging.getLogger("bench")

VAULT_PREFIX = "iris-token-broker/accounts"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line. The defaults make a run of about 3 minutes."""
    parser = argparse.ArgumentParser(description="Benchmark iris-token-broker's token path.")
    parser.add_argument("--seconds", type=float, default=5, help="length of each wrk run (s)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved a,b,c rounds")
    parser.add_argument("--connections", type=int, default=32, help="wrk keep-alive connections")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--hot-accounts", type=int, default=100, help="accounts a and c spread over")
    parser.add_argument("--cold-accounts", type=int, default=200, help="accounts timed in d")
    parser.add_argument("--stampedes", type=int, default=3, help="stampedes in e, one account each")
    parser.add_argument("--concurrency", type=int, default=50, help="concurrent requests per stampede")
    parser.add_argument("--memory-accounts", type=int, default=100_000, help="accounts cached in f")
    parser.add_argument("--token-bytes", type=int, default=1024, help="access token length")
    parser.add_argument("--workers", type=int, help="GUNICORN_WORKERS for both servers")
    parser.add_argument("--threads", type=int, help="GUNICORN_THREADS for both servers")
    parser.add_argument(
        "--profile", type=float, default=10, metavar="SECONDS",
        help="also record a py-spy profile of one worker under hot-path load (0 = off)",
    )
    parser.add_argument(
        "--output", type=Path, default=services.ROOT / ".local" / "bench", help="results folder"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    work_dir = args.output / "work"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)

    started = time.monotonic()
    processes = []
    try:
        results = _run(args, work_dir, processes)
    finally:
        for process in reversed(processes):
            services.stop(process)
    results["elapsed_seconds"] = round(time.monotonic() - started)

    (args.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = render_markdown(results)
    (args.output / "results.md").write_text(markdown)
    print()
    print(markdown)
    log.info("Finished in %d s; results are in %s", results["elapsed_seconds"], args.output)
    return 0 if all(target.met for target in check_targets(results)) else 1


def _run(args: argparse.Namespace, work_dir: Path, processes: list) -> dict:
    api_key = secrets.token_urlsafe(32)
    hot = make_accounts(args.hot_accounts)
    cold = make_accounts(args.cold_accounts)
    herd = make_accounts(args.stampedes)
    everyone = hot + cold + herd

    log.info("Starting OpenBao, the Trackunit stand-in and two gunicorn servers")
    vault = services.start_vault(work_dir)
    processes.append(vault.process)
    clients = {a.client_id: (a.client_secret, SCOPES) for a in everyone}
    standin = services.start_standin(work_dir, clients, args.token_bytes)
    processes.append(standin.process)
    token_url = f"{standin.url}/apptoken"

    env = _server_env(args, vault, api_key, token_url)
    service = services.start_gunicorn("service", "wsgi:app", work_dir, env, "/healthz")
    processes.append(service.process)
    naive = services.start_gunicorn("naive", "bench.naive_app:app", work_dir, env, "/healthz")
    processes.append(naive.process)
    workers = len(service.worker_pids())

    log.info("Installing %d accounts through POST /appinstall", len(everyone))
    seed(service.url, everyone)
    accounts_file = work_dir / "hot-accounts.txt"
    accounts_file.write_text("".join(f"{a.account_id}\n" for a in hot))

    scenarios = {
        "hot": (service.url, "/token/", accounts_file),
        "limit": (service.url, "/healthz", None),
        "naive": (naive.url, "/token/", accounts_file),
    }

    def load(name: str, seconds: float):
        url, path, accounts = scenarios[name]
        return run_wrk(
            url, path, seconds=seconds, connections=args.connections,
            threads=args.wrk_threads, api_key=api_key, accounts_file=accounts,
        )

    log.info("Warming up: 2 s of each scenario fills every worker's cache")
    for name in scenarios:
        load(name, 2)

    rounds: dict[str, list] = {name: [] for name in scenarios}
    for round_number in range(1, args.rounds + 1):
        for name in scenarios:
            result = load(name, args.seconds)
            rounds[name].append(result)
            log.info(
                "Round %d %-5s: %8.0f req/s  p50 %.2f ms  p99 %.2f ms  errors %d",
                round_number, name, result.throughput, result.p50_ms, result.p99_ms, result.errors,
            )

    log.info("Timing the cold path for %d accounts", len(cold))
    vault_client = hvac.Client(url=vault.addr, token=vault.token, timeout=10)
    cold_result = measure_cold_path(service.url, api_key, vault_client, VAULT_PREFIX, token_url, cold)

    log.info("Running %d stampedes of %d requests", len(herd), args.concurrency)
    stampedes = [
        stampede(service.url, api_key, f"{standin.url}/stats", account, args.concurrency)
        for account in herd
    ]

    profile = _profile(args, service, lambda: load("hot", args.profile)) if args.profile else None

    log.info("Measuring memory for %d cached accounts in a fresh process", args.memory_accounts)
    memory = _memory(args)

    return {
        "machine": _machine(),
        "settings": {
            "workers": workers,
            "threads": int(env.get("GUNICORN_THREADS") or _configured("threads")),
            "seconds": args.seconds,
            "rounds": args.rounds,
            "connections": args.connections,
            "wrk_threads": args.wrk_threads,
            "hot_accounts": args.hot_accounts,
            "token_bytes": args.token_bytes,
        },
        "rounds": {name: [asdict(r) | {"throughput": r.throughput} for r in rs] for name, rs in rounds.items()},
        "scenarios": {name: asdict(summarise(rs)) for name, rs in rounds.items()},
        "ratios": {
            "hot_vs_limit_throughput": round_ratio(rounds["hot"], rounds["limit"], "throughput"),
            "hot_vs_limit_p99": round_ratio(rounds["hot"], rounds["limit"], "p99_ms"),
            "hot_vs_naive_throughput": round_ratio(rounds["hot"], rounds["naive"], "throughput"),
        },
        "cold_path": asdict(cold_result),
        "stampedes": [asdict(s) for s in stampedes],
        "memory": memory,
        "profile": profile,
    }


def _server_env(args: argparse.Namespace, vault: services.Vault, api_key: str, token_url: str) -> dict[str, str]:
    """Build the environment of both servers from scratch, so the caller's shell leaks nothing."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "VAULT_ADDR": vault.addr,
        "VAULT_TOKEN": vault.token,
        "VAULT_KV_PREFIX": VAULT_PREFIX,
        "INTERNAL_API_KEYS": api_key,
        "TRACKUNIT_SCOPES": SCOPES,
        "TRACKUNIT_TOKEN_URL": token_url,
        # Seeding posts unsigned install callbacks, because nothing local can sign them as Trackunit does.
        "REQUIRE_TRACKUNIT_IDENTITY": "false",
        # As in the container image, where one gunicorn runs per pod.
        "GUNICORN_REUSE_PORT": "true",
    }
    if args.workers:
        env["GUNICORN_WORKERS"] = str(args.workers)
    if args.threads:
        env["GUNICORN_THREADS"] = str(args.threads)
    return env


def _configured(name: str) -> str:
    """Return a setting of gunicorn.conf.py as it reads with an empty environment."""
    code = f"import runpy; print(runpy.run_path('gunicorn.conf.py')[{name!r}])"
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=services.ROOT, env={"PATH": os.environ.get("PATH", "")},
        capture_output=True, text=True, check=True,
    )
    return completed.stdout.strip()


def _profile(args: argparse.Namespace, service: services.Server, load) -> dict:
    """Record one worker with py-spy during an extra hot-path run and summarise the samples."""
    pid = service.worker_pids()[0]
    output = args.output / "profile-hot.txt"
    log.info("Profiling worker %d for %g s under hot-path load", pid, args.profile)
    recorder = pyspy.record(pid, args.profile, output)
    load()
    _, error = recorder.communicate(timeout=args.profile + 60)
    if recorder.returncode != 0:
        log.warning("py-spy failed with exit code %d: %s", recorder.returncode, error.strip())
        return {"error": error.strip()}
    total, rows = pyspy.summarise(output.read_text())
    return {
        "file": str(output),
        "samples": total,
        "functions": [{"name": n, "inclusive_pct": round(i, 1), "self_pct": round(s, 1)} for n, i, s in rows],
    }


def _memory(args: argparse.Namespace) -> dict:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--accounts", str(args.memory_accounts),
         "--token-bytes", str(args.token_bytes)],
        cwd=services.ROOT, capture_output=True, text=True, check=True, timeout=300,
    )
    return json.loads(completed.stdout)


def _machine() -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "gunicorn": version("gunicorn"),
        "flask": version("flask"),
        "wrk": wrk_version.strip(),
    }


if __name__ == "__main__":
    raise SystemExit(main())

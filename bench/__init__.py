"""Benchmark of the token path: see docs/benchmarks.md and scripts/bench."""

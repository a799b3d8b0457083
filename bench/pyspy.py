"""Profile a gunicorn worker with py-spy while wrk loads it, and summarise where time goes.

py-spy samples the worker's Python stacks from outside the process, so the worker runs
unmodified. It needs ptrace permission on the worker (root, or CAP_SYS_PTRACE).
The raw output has one line per distinct stack, `frame;frame;... count`, with frames
like `get (broker/tokens.py:101)`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

_LINE_NUMBER = re.compile(r":\d+\)$")


def record(pid: int, seconds: float, output: Path, rate: int = 200) -> subprocess.Popen:
    """Start `py-spy record` on pid in raw (collapsed) format and return the process.

    --gil keeps only samples of the thread holding the GIL, so the profile shows where
    the worker spends CPU in Python, not where its idle threads wait.
    """
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [
        py_spy, "record",
        "--pid", str(pid),
        "--duration", str(max(1, round(seconds))),
        "--rate", str(rate),
        "--format", "raw",
        "--nonblocking",
        "--gil",
        "--output", str(output),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _frame_name(frame: str) -> str:
    """Drop the line number, so all samples in one function count together."""
    return _LINE_NUMBER.sub(")", frame.strip())


def summarise(collapsed: str, top: int = 40) -> tuple[int, list[tuple[str, float, float]]]:
    """Return total samples and the `top` functions as (name, inclusive %, self %).

    Inclusive counts a sample once per function even when the function recurses.
    """
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(frame) for frame in stack.split(";")]
        total += count
        for name in set(frames):
            inclusive[name] += count
        own[frames[-1]] += count

    if total == 0:
        return 0, []
    rows = [
        (name, 100 * samples / total, 100 * own[name] / total)
        for name, samples in inclusive.most_common(top)
    ]
    return total, rows

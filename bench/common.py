"""Helpers shared by the benchmarks: timing loops and a result table."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HOOK = ROOT / "hooks" / "nhrpbridge-updown"

ROWS: list[tuple[str, str, str, str]] = []


def row(name: str, value: str, ratio: str = "", goal: str = "") -> None:
    ROWS.append((name, value, ratio, goal))
    print(f"  {name:<52} {value:>16} {ratio:>14} {goal}", flush=True)


def shell_loop_seconds(command: str, n: int, env: dict[str, str]) -> float:
    """Seconds per iteration of `command` run n times by one sh loop (fork+exec each)."""
    script = f'i=0; while [ $i -lt {n} ]; do {command}; i=$((i+1)); done'
    best = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run(["/bin/sh", "-c", script], env=env, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best.append((time.perf_counter() - start) / n)
    return min(best)


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def median(values):
    return statistics.median(values)

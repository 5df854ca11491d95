#!/usr/bin/env python3
"""`make bench`: every benchmark, one table. Ratios compare figures from this run.

A figure that misses its goal says MISSED and the run still exits 0; a benchmark that
fails (an exception, a daemon that did not start) is named with its step and cause,
the others still run, and the run exits 1.
"""
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROWS, STEP, fmt

SECTIONS = ["hook", "logparse", "logstart", "latency", "initiate", "scale", "dump", "storm"]


def main() -> int:
    start = time.monotonic()
    only = set(sys.argv[1:])
    unknown = only - set(SECTIONS)
    if unknown:
        print(f"bench: unknown section(s) {', '.join(sorted(unknown))}; "
              f"known: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    failed = []
    for name in SECTIONS:
        if only and name not in only:
            continue
        print(f"\n== {name}", flush=True)
        STEP[0] = "import"
        try:
            __import__(name).run()
        except Exception as exc:         # name the step and the cause, go on with the rest
            cause = f"{type(exc).__name__}: {exc}"
            failed.append(f"{name}: {STEP[0]}: {cause}")
            ROWS.append((f"{name} FAILED at '{STEP[0]}'", "", "", cause[:120]))
            print(f"  FAILED at step '{STEP[0]}': {cause}", flush=True)
            traceback.print_exc()
    print(f"\n== summary ({time.monotonic() - start:.0f} s)")
    print(fmt("figure", "value", "anchor/ratio", "goal"))
    for name, value, ratio, goal in ROWS:
        print(fmt(name, value, ratio, goal))
    missed = sum("MISSED" in r[3] for r in ROWS)
    print(f"\n{len(ROWS)} figures, {missed} goals missed, {len(failed)} benchmarks failed")
    for f in failed:
        print(f"FAILED {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""`make bench`: every benchmark, one table. Ratios compare figures from this run."""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hook
from common import ROWS

SECTIONS = [("hook", hook.run)]

for extra in ("logparse", "latency", "scale", "storm"):
    try:
        SECTIONS.append((extra, __import__(extra).run))
    except ImportError:
        pass


def main() -> int:
    start = time.monotonic()
    only = set(sys.argv[1:])
    for name, run in SECTIONS:
        if only and name not in only:
            continue
        print(f"\n== {name}")
        run()
    print(f"\n== summary ({time.monotonic() - start:.0f} s)")
    for name, value, ratio, goal in ROWS:
        print(f"  {name:<52} {value:>16} {ratio:>14} {goal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Start-up with a big pluto log: no saved offset, a saved offset, a long catch-up.

The follower and the daemon's own line sink (parse, interpret, apply) run in this
process, as `serve` runs them; the log is 1 GB of real lab lines on disk.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from common import row, step
from logparse import generate

from nhrpbridge.config import Config
from nhrpbridge.daemon import Daemon
from nhrpbridge.sources.logfollow import FileFollower


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _follow(d: Daemon, log: Path, pos: dict | None) -> tuple[float, float, int, float]:
    """(seconds, longest single read+apply, lines, peak RSS growth MB) until caught up."""
    f = FileFollower(str(log))
    rss0 = peak = _rss_mb()
    start = time.perf_counter()
    f.restore(pos)
    longest = 0.0
    n = 0
    while True:
        t0 = time.perf_counter()
        lines = f.read_available()
        if lines:
            d.apply_log_lines(lines, True)
        longest = max(longest, time.perf_counter() - t0)
        n += len(lines)
        peak = max(peak, _rss_mb())
        if not f.more:
            break
    took = time.perf_counter() - start
    f.stop()
    return took, longest, n, peak - rss0


def run(size: int = 1 << 30, catch_up: int = 100 << 20) -> None:
    print(f"pluto log at start-up: a {size >> 20} MB log file on disk")
    tmp = Path(tempfile.mkdtemp(prefix="nb-logstart.", dir="/var/tmp"))
    try:
        with step("generate the log"):
            block = tmp / "block.log"
            generate(block, 200_000)
            log = tmp / "pluto.log"
            with open(log, "wb") as out, open(block, "rb") as src:
                data = src.read()
                while out.tell() < size:
                    out.write(data)
            total = log.stat().st_size
        d = Daemon(replace(Config.for_state_dir(tmp / "state")))
        d.load_state()
        st = os.stat(log)
        with step("first start, no saved offset"):
            took, _, n, _ = _follow(d, log, None)
            row("first start, no saved offset (starts at the end)", f"{took * 1e3:.2f} ms",
                f"{n} lines read", "goal <= 100 ms", took <= 0.1)
        with step("restart from a saved offset"):
            pos = {"backend": "file", "path": str(log), "inode": st.st_ino,
                   "offset": total - (1 << 20)}
            took, longest, n, _ = _follow(d, log, pos)
            row("restart, saved offset 1 MB before the end", f"{took * 1e3:.0f} ms",
                f"{n:,} lines", "goal <= 500 ms", took <= 0.5)
        with step("catch-up"):
            t0 = time.perf_counter()
            subprocess.run(["sh", "-c", f"tail -c {catch_up} {log} | wc -l"],
                           stdout=subprocess.DEVNULL)
            anchor = time.perf_counter() - t0
            pos["offset"] = total - catch_up
            took, longest, n, grew = _follow(d, log, pos)
            row(f"catch-up: {catch_up >> 20} MB written while down", f"{took:.1f} s",
                f"{n / took:,.0f} lines/s")
            row("  tail | wc -l over the same bytes (anchor)", f"{anchor:.2f} s",
                f"{took / anchor:.0f}x anchor")
            row("  longest hold of the loop by one chunk", f"{longest * 1e3:.0f} ms", "",
                "goal <= 100 ms", longest <= 0.1)
            row("  memory growth during the catch-up", f"{grew:.0f} MB", "", "goal <= 50 MB",
                grew <= 50)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run()

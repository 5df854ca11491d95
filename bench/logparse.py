"""Pluto log parse throughput on a generated 1,000,000-line mixed log, vs grep."""
from __future__ import annotations

import random
import subprocess
import tempfile
import time
from pathlib import Path

from common import ROOT, row

from nhrpbridge.loginterp import LogInterpreter
from nhrpbridge.plutolog import parse_line


def generate(path: Path, n: int) -> None:
    """Real lines from the lab logs (noise and events), with serials and peers varied."""
    lab = ROOT / "samples" / "lab"
    base = []
    for name in ("initiate-hub-pluto.log", "initiate-spoke1-pluto.log"):
        base += (lab / name).read_text().splitlines()
    events = [l for l in base if '"' in l and "#" in l]
    rnd = random.Random(1)
    with open(path, "w") as f:
        for i in range(n):
            line = rnd.choice(events) if i % 4 == 0 else rnd.choice(base)
            f.write(line.replace("#1:", f"#{i % 9000 + 1}:").replace(".11 ", f".{i % 200 + 20} ")
                    + "\n")


def run(n: int = 1_000_000) -> None:
    print(f"pluto log parsing ({n:,} generated lines: real lab lines, 1 in 4 an SA event)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pluto.log"
        generate(path, n)
        start = time.perf_counter()
        subprocess.run(["grep", "-c", "established", str(path)], capture_output=True)
        grep = time.perf_counter() - start
        row("grep -c established (anchor)", f"{n / grep:,.0f} lines/s")
        lines = path.read_text().splitlines()
        start = time.perf_counter()
        hits = sum(1 for l in lines if parse_line(l) is not None)
        parse = time.perf_counter() - start
        row("parse_line", f"{n / parse:,.0f} lines/s", f"{grep / parse:.3f}x grep",
            "goal >= 200,000 lines/s", n / parse >= 200_000)
        it = LogInterpreter()
        start = time.perf_counter()
        for l in lines:
            p = parse_line(l)
            if p is not None:
                it.feed(p)
        full = time.perf_counter() - start
        row("parse_line + interpretation", f"{n / full:,.0f} lines/s", f"{grep / full:.3f}x grep")
        print(f"  ({hits:,} lines recognised)")


if __name__ == "__main__":
    run()

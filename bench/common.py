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
from nhrpbridge.protocol.record import encode_record

HOOK = ROOT / "hooks" / "nhrpbridge-updown"

ROWS: list[tuple[str, str, str, str]] = []
STEP = ["start"]            # what the running benchmark is doing: named if it fails


class step:
    """`with step("..."):` names the part of a benchmark that runs (for its failure)."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self) -> None:
        STEP[0] = self.what

    def __exit__(self, *exc: object) -> None:
        return None


def fmt(name: str, value: str, ratio: str, goal: str) -> str:
    return f"  {name:<56} {value:>16} {ratio:>16} {goal}"


def row(name: str, value: str, ratio: str = "", goal: str = "", met: bool | None = None) -> None:
    """One figure; `met` False prints MISSED next to the goal (the run still exits 0)."""
    if goal and met is not None:
        goal = f"{goal}: {'met' if met else 'MISSED'}"
    ROWS.append((name, value, ratio, goal))
    print(fmt(name, value, ratio, goal), flush=True)


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


class Daemon:
    """`nhrpbridge serve --state-dir` for a benchmark (VICI on, no pluto)."""

    def __init__(self, state: Path, vici: bool = True, extra: list[str] | None = None):
        self.state = Path(state)
        self.extra = extra or []
        self.vici = str(self.state / "charon.vici") if vici else None
        self.proc = None

    def start(self, wait: float = 60.0) -> Daemon:
        # BENCH_PROFILE=FILE: the daemon runs under cProfile, its profile written to FILE
        prof = os.environ.get("BENCH_PROFILE")
        args = [sys.executable, *(["-m", "cProfile", "-o", prof] if prof else []),
                "-m", "nhrpbridge", "serve", "--state-dir", str(self.state),
                "--no-pluto", "--log-level", "warning"]
        if self.vici:
            args += ["--vici-socket", self.vici]
        args += self.extra
        self.proc = subprocess.Popen(args, cwd=ROOT, stderr=open(self.state.parent / "daemon.log", "a"))
        end = time.monotonic() + wait
        target = Path(self.vici or self.state / "api.sock")
        while not target.exists():
            if time.monotonic() > end or self.proc.poll() is not None:
                log = self.state.parent / "daemon.log"
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"daemon did not start (rc {self.proc.poll()}): "
                                   + " | ".join(tail))
            time.sleep(0.01)
        return self

    @property
    def api(self) -> str:
        return str(self.state / "api.sock")

    def cpu_s(self) -> tuple[float, float]:
        """User and system CPU seconds the daemon used so far."""
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        tck = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tck, int(fields[12]) / tck

    def rss_mb(self) -> float:
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def record_bytes(env: dict) -> bytes:
    """Exactly what the hook writes (dash `export -p` quoting plus the trailer)."""
    return encode_record(dict(sorted(env.items())))


def write_record(spool: Path, seq: int, env: dict) -> None:
    (spool / f"{1000000000000 + seq}-{os.getpid()}.rec").write_bytes(record_bytes(env))


def spoke_env(i: int, verb: str = "up-host") -> dict:
    peer = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
    return {"PLUTO_VERB": verb, "PLUTO_CONNECTION": "dmvpn", "PLUTO_ME": "198.51.100.1",
            "PLUTO_PEER": peer, "PLUTO_MY_ID": "C=XX, O=DMVPN Lab, CN=hub.dmvpn.example",
            "PLUTO_PEER_ID": f"C=XX, O=DMVPN Lab, CN=spoke{i}.dmvpn.example",
            "PLUTO_CONNECTION_TYPE": "transport", "PLUTO_SA_TYPE": "ESP", "PLUTO_SA_REQID": str(16384 + 4 * i),
            "SPI_IN": hex(0x10000000 + i), "SPI_OUT": hex(0x20000000 + i),
            "PLUTO_MY_CLIENT": "198.51.100.1/32", "PLUTO_PEER_CLIENT": f"{peer}/32"}

"""Shared fixtures: short socket paths, a real daemon in a subprocess, hook runs."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from nhrpbridge.protocol.record import encode_record

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "hooks" / "nhrpbridge-updown"
SAMPLES = ROOT / "samples"
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def sockdir():
    """A directory under /tmp: unix socket paths must stay under 108 bytes."""
    d = tempfile.mkdtemp(prefix="nb.", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def wait_until(cond, timeout=10.0, step=0.02, what="condition"):
    end = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step)


async def until(cond, timeout=10.0, step=0.01, what="condition"):
    """wait_until for coroutines: poll `cond` without blocking the loop."""
    import asyncio
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(step)


class DaemonProc:
    """`nhrpbridge serve --state-dir DIR` as a real process."""

    def __init__(self, state_dir: Path, *extra: str, pluto: bool = False):
        self.state_dir = Path(state_dir)
        self.extra = list(extra)
        self.pluto = pluto          # False: --no-pluto (no whack at all)
        self.proc: subprocess.Popen | None = None
        self.log = self.state_dir.parent / (self.state_dir.name + ".log")

    @property
    def socket(self) -> str:
        return str(self.state_dir / "api.sock")

    def start(self, wait: bool = True) -> DaemonProc:
        sock = Path(self.socket)
        if sock.exists():
            sock.unlink()
        args = [sys.executable, "-m", "nhrpbridge", "serve", "--state-dir", str(self.state_dir),
                *([] if self.pluto else ["--no-pluto"]), "--log-level", "debug", *self.extra]
        self.proc = subprocess.Popen(args, cwd=ROOT, stderr=open(self.log, "a"),
                                     stdin=subprocess.DEVNULL)
        if wait:
            wait_until(lambda: sock.exists() or self.proc.poll() is not None, what="api socket")
            assert self.proc.poll() is None, self.log.read_text()
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def memd(sockdir):
    """The assembled daemon in this process, clients over socketpair() (tests/memory.py)."""
    from memory import MemoryDaemon

    from nhrpbridge.config import Config
    d = MemoryDaemon(Config.for_state_dir(sockdir / "state"))
    yield d
    d.stop()


@pytest.fixture
def daemon(sockdir):
    d = DaemonProc(sockdir / "state")
    yield d
    d.kill9()
    if d.log.exists():   # pytest shows this only when the test failed
        print("---- daemon log (tail) ----\n" + "\n".join(d.log.read_text().splitlines()[-40:]))


def run_hook(env: dict, spool, *args: str, shell: str = "/bin/sh") -> subprocess.CompletedProcess:
    """Run the hook the way pluto does: a fresh environment, no stdin."""
    full = {"PATH": os.environ["PATH"]}
    full.update({k: v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v
                 for k, v in env.items()})
    return subprocess.run([shell, str(HOOK), "--spool", str(spool), *args], env=full,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=20)


def up_env(peer="198.51.100.11", spi_in="0xa102364e", spi_out="0x57e50fc", verb="up-host",
           conn="dmvpn", me="198.51.100.1", peer_id=None, **extra) -> dict:
    env = {"PLUTO_VERB": verb, "PLUTO_CONNECTION": conn, "PLUTO_ME": me, "PLUTO_PEER": peer,
           "PLUTO_MY_ID": "@hub", "PLUTO_PEER_ID": peer_id or f"@{peer}",
           "PLUTO_CONNECTION_TYPE": "transport", "PLUTO_SA_TYPE": "ESP",
           "PLUTO_SA_REQID": "16396", "SPI_IN": spi_in, "SPI_OUT": spi_out,
           "PLUTO_MY_CLIENT": f"{me}/32", "PLUTO_PEER_CLIENT": f"{peer}/32"}
    env.update(extra)
    return env


def write_record(spool, seq: int, env: dict) -> str:
    """Write one record exactly as the hook would (dash quoting, end trailer)."""
    name = f"{1000000000000 + seq}-{os.getpid()}.rec"
    (Path(spool) / name).write_bytes(encode_record(dict(sorted(env.items()))))
    return name

"""Replay recorded updown calls through the real hook (demo, tests, operators).

Input: the lab's updown log lines (reference lab `updown-log.sh` format):
    VERB=up-host CONN=dmvpn ME=198.51.100.1 PEER=198.51.100.11 | PLUTO_X=... ...
Each line becomes the environment pluto would have passed, and the hook script
is executed with it (argv, no shell), exactly as pluto runs it.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

__all__ = ["default_hook", "parse_updown_log_line", "replay_file", "run_hook"]

_SHORT = {"VERB": "PLUTO_VERB", "CONN": "PLUTO_CONNECTION", "ME": "PLUTO_ME", "PEER": "PLUTO_PEER"}


def parse_updown_log_line(line: str) -> dict[str, str]:
    """One lab updown log line -> the PLUTO_* environment it recorded."""
    env: dict[str, str] = {}
    for word in line.split():
        if word == "|" or "=" not in word:
            continue
        key, value = word.split("=", 1)
        env[_SHORT.get(key, key)] = value
    if "PLUTO_VERB" not in env:
        raise ValueError(f"not an updown log line: {line[:60]!r}")
    return env


def default_hook() -> Path:
    """The hook script: next to the source checkout, or installed under libexec."""
    here = Path(__file__).resolve().parents[1] / "hooks" / "nhrpbridge-updown"
    if here.exists():
        return here
    import sysconfig
    return Path(sysconfig.get_path("data")) / "libexec" / "nhrpbridge" / "nhrpbridge-updown"


def run_hook(env: dict[str, str], spool: str | Path, hook: str | Path | None = None,
             chain: list[str] | None = None) -> int:
    """Run the hook like pluto does; return its exit status."""
    args = ["/bin/sh", str(hook or default_hook()), "--spool", str(spool)]
    args += ["--chain", " ".join(chain)] if chain else ["--no-chain"]
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    return subprocess.run(args, env=full, stdin=subprocess.DEVNULL).returncode


def replay_file(path: str | Path, spool: str | Path, delay: float = 0.0) -> int:
    """Replay every line of a lab updown log; return how many calls ran."""
    count = 0
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        run_hook(parse_updown_log_line(line), spool)
        count += 1
        if delay:
            time.sleep(delay)
    return count

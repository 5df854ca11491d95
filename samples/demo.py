#!/usr/bin/env python3
"""`make demo`: the whole path with real recorded data, in a temp directory.

Starts `nhrpbridge serve --state-dir TMP`, subscribes with `nhrpbridge events`,
feeds the hub's real updown calls from a user-mode-linux lab run (libreswan 4.10)
through the real hook script, and shows `nhrpbridge status` with both spokes up,
then after they went down, then the event stream that a subscriber received.
"""
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from nhrpbridge.replay import parse_updown_log_line, run_hook

NB = [sys.executable, "-m", "nhrpbridge"]


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def wait_for(path: Path, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > end:
            sys.exit(f"demo: {path} did not appear")
        time.sleep(0.05)


def phase(title: str, lines: list[str], state: Path) -> None:
    """Run recorded hook calls the way pluto would, then show `nhrpbridge status`."""
    banner(title)
    for line in lines:
        env = parse_updown_log_line(line)
        print(f"  hook {env['PLUTO_VERB']:<13} {env['PLUTO_PEER']}")
        run_hook(env, state / "spool")
    time.sleep(0.8)
    banner("nhrpbridge status")
    subprocess.run(NB + ["status", "--state-dir", str(state)], cwd=ROOT)


def main() -> int:
    lines = [l for l in (HERE / "lab" / "initiate-hub-updown.log").read_text().splitlines() if l]
    with tempfile.TemporaryDirectory(prefix="nhrpbridge-demo.", dir="/tmp") as tmp:
        state = Path(tmp)
        banner(f"starting: nhrpbridge serve --state-dir {state}")
        daemon = subprocess.Popen(NB + ["serve", "--state-dir", tmp, "--no-pluto"], cwd=ROOT,
                                  stderr=open(state / "daemon.log", "w"))
        try:
            wait_for(state / "api.sock")
            events = subprocess.Popen(NB + ["events", "--state-dir", tmp], cwd=ROOT,
                                      stdout=subprocess.PIPE, text=True)
            time.sleep(0.5)
            ups = [l for l in lines if "VERB=down" not in l and "VERB=unroute" not in l]
            downs = [l for l in lines if l not in ups]
            phase(f"pluto runs the hook {len(ups)} times (up-host, prepare-host, route-host "
                  "for spoke1 and spoke2)", ups, state)
            phase("spoke1 and spoke2 go down (down-host, unroute-host)", downs, state)
            banner("what `nhrpbridge events` printed meanwhile")
            events.terminate()
            print(events.communicate()[0], end="")
        finally:
            daemon.terminate()
            daemon.wait(10)
        banner("daemon log")
        print((state / "daemon.log").read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

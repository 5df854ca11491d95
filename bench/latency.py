"""Latency from hook exit to the event on an API subscriber and on a VICI listener.

The hook runs as pluto runs it (fork+exec of sh, 500 a second, up then down per
peer); the daemon checkpoints as in production. Each watcher is its own process
(threads of the process that spawns the hooks would share its GIL and measure it);
times are CLOCK_MONOTONIC, the same clock in every process. The anchor is this
machine's floor for the same path: a bare process that only waits on inotify for the
hook's record to be closed (no daemon, no parsing, no socket). Its p50 can be below
zero: the hook closes its record before it exits, and the exit is stamped when this
process's wait for the hook returns.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import HOOK, ROOT, Daemon, percentile, row, spoke_env, step

API = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall(b'{"op":"subscribe","id":1}\n')
want = int(sys.argv[2]); seen = {}
f = s.makefile("rb")
print("ready", flush=True)
for line in f:
    t = time.monotonic()
    if b'"child-' not in line:
        continue
    msg = json.loads(line)
    if msg.get("type") in ("child-up", "child-down"):
        seen[msg["type"] + " " + msg["child-sa"]["remote-host"]] = t
        if len(seen) >= want:
            break
print(json.dumps(seen), flush=True)
"""

VICI = r"""
import json, socket, sys, time
sys.path.insert(0, sys.argv[3])
from nhrpbridge.protocol.vici import Decoder, Packet, PacketType, encode_packet
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
for ev in ("child-state-installed", "child-state-destroying"):
    s.sendall(encode_packet(Packet(PacketType.EVENT_REGISTER, ev)))
want = int(sys.argv[2]); seen = {}; d = Decoder()
print("ready", flush=True)
while len(seen) < want:
    data = s.recv(1 << 16)
    t = time.monotonic()
    if not data:
        break
    d.feed(data)
    while (p := d.next_packet()) is not None:
        if p.type == PacketType.EVENT:
            kind = "child-up" if p.name == "child-state-installed" else "child-down"
            seen[kind + " " + p.message["dmvpn"]["remote-host"].decode()] = t
print(json.dumps(seen), flush=True)
"""


ANCHOR = r"""
import ctypes, json, os, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
libc.inotify_add_watch(fd, os.fsencode(sys.argv[1]), 0x8)      # IN_CLOSE_WRITE
want = int(sys.argv[2]); seen = []; names = set()
print("ready", flush=True)
while len(seen) < want:
    data = os.read(fd, 1 << 16)
    t = time.monotonic()
    pos = 0
    while pos < len(data):
        _, mask, _, size = struct.unpack_from("iIII", data, pos)
        name = data[pos + 16:pos + 16 + size].rstrip(b"\0")
        pos += 16 + size
        if name.endswith(b".rec") and name not in names:
            names.add(name); seen.append(t)
print(json.dumps(seen), flush=True)
"""


def run(rate: int = 500, seconds: float = 10.0) -> None:
    n = int(rate * seconds)
    print(f"latency, hook exit -> event ({n} hook calls at {rate}/s, up then down per peer; "
          "replace-hold 0)")
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        with step("start the daemon"):
            # replace-hold 0: the end of a link's last Child SA is otherwise held 5 s on
            # purpose (a rekey's replacement may follow); that wait is not latency
            conf = Path(tmp) / "latency.yaml"
            conf.write_text("pluto:\n  replace-hold: 0\n")
            d = Daemon(Path(tmp) / "s", extra=["-c", str(conf)]).start()
        try:
            with step("start the watchers"):
                watchers = {
                    "API subscriber": subprocess.Popen([sys.executable, "-c", API, d.api, str(n)],
                                                       stdout=subprocess.PIPE, text=True),
                    "VICI listener": subprocess.Popen(
                        [sys.executable, "-c", VICI, d.vici, str(n), str(ROOT)],
                        stdout=subprocess.PIPE, text=True),
                    "anchor": subprocess.Popen(
                        [sys.executable, "-c", ANCHOR, str(d.state / "spool"), str(n)],
                        stdout=subprocess.PIPE, text=True)}
                for w in watchers.values():
                    if w.stdout.readline().strip() != "ready":
                        raise RuntimeError("a watcher did not start")
                time.sleep(0.5)
            with step("run the hooks"):
                exits: dict[str, float] = {}
                order: list[str] = []
                spool = d.state / "spool"
                base = {"PATH": os.environ["PATH"]}
                start = time.monotonic()
                for i in range(n):
                    verb = "up-host" if i % 2 == 0 else "down-host"
                    env = spoke_env(i // 2, verb)
                    subprocess.run(["/bin/sh", str(HOOK), "--spool", str(spool), "--no-chain"],
                                   env={**base, **env})
                    kind = "child-up" if verb == "up-host" else "child-down"
                    exits[f"{kind} {env['PLUTO_PEER']}"] = time.monotonic()
                    order.append(f"{kind} {env['PLUTO_PEER']}")
                    delay = start + (i + 1) / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                achieved = n / (time.monotonic() - start)
            with step("collect what the watchers saw"):
                seen = {}
                for label, w in watchers.items():
                    try:
                        out, _ = w.communicate(timeout=20)
                    except subprocess.TimeoutExpired:
                        w.kill()
                        out, _ = w.communicate()
                    lines = out.strip().splitlines()
                    seen[label] = json.loads(lines[-1]) if lines and lines[-1] != "ready" else {}
            anchor = seen.pop("anchor")                 # the k-th record closed, in order
            lat = [t - exits[k] for k, t in zip(order, anchor, strict=False)]
            floor = percentile(lat, 99) if lat else float("nan")
            row("anchor: hook exit -> inotify in a bare process, p50",
                f"{percentile(lat, 50) * 1e3:.2f} ms" if lat else "none")
            row("anchor: the same, p99", f"{floor * 1e3:.2f} ms")
            for label, got in seen.items():
                lat = [got[k] - exits[k] for k in exits if k in got]
                missing = len(exits) - len(lat)
                if not lat:
                    row(f"latency to {label}", "no events", "", "goal p99 <= 3 ms", False)
                    continue
                p99 = percentile(lat, 99)
                row(f"latency to {label} p50", f"{percentile(lat, 50) * 1e3:.2f} ms",
                    f"{achieved:.0f} calls/s")
                row(f"latency to {label} p99", f"{p99 * 1e3:.2f} ms",
                    f"{missing} missing, +{(p99 - floor) * 1e3:.2f} ms over anchor",
                    "goal p99 <= 3 ms, none missing", p99 <= 0.003 and not missing)
        finally:
            d.stop()


if __name__ == "__main__":
    run()

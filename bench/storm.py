"""Reconnect storm: 30,000 hook records at once while 3 subscribers and 1 VICI listener watch.

Each watcher is its own process, as real subscribers are (threads of one Python
process share a GIL and fall behind together). A subscriber checks on raw lines
that seqs arrive 1, 2, 3, ... without gap or repeat.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, Daemon, record_bytes, row, spoke_env

SUBSCRIBER = r"""
import socket, sys, time, json
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall(b'{"op":"subscribe","id":1}\n')
expected = int(sys.argv[2]); buf = b""; synced = False; nxt = 1; bad = 0; n = 0; end = "all"
print("ready", flush=True)
s.settimeout(15)              # nothing for 15 s: report what came instead of hanging
while nxt <= expected:
    try:
        data = s.recv(1 << 20)
    except socket.timeout:
        end = "nothing for 15 s"
        break
    except OSError as exc:
        end = str(exc)
        break
    if not data:
        end = "closed by the daemon"
        break
    buf += data
    lines = buf.split(b"\n"); buf = lines.pop()
    for line in lines:
        if not synced:
            synced = b'"type":"synced"' in line
            continue
        i = line.find(b'"seq":')
        if i < 0:
            continue
        seq = int(line[i + 6:line.index(b",", i)] if b"," in line[i:] else line[i + 6:line.index(b"}", i)])
        n += 1
        if seq != nxt:
            bad += 1
        nxt = seq + 1
print(json.dumps({"count": n, "bad": bad, "next": nxt, "end": end, "t": time.perf_counter(),
                  "cpu": time.process_time()}), flush=True)
"""

VICI = r"""
import socket, sys, time, json
sys.path.insert(0, sys.argv[3])
from nhrpbridge.protocol.vici import Packet, PacketType, encode_packet
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
for ev in ("child-state-installed", "child-state-destroying"):
    s.sendall(encode_packet(Packet(PacketType.EVENT_REGISTER, ev)))
# counts framed EVENT packets by their headers only: nhrpd decodes in C, a full Python
# decode here took 3 s of CPU on the same 2 cores as the daemon it measures
want = int(sys.argv[2]); n = 0; buf = b""; EVENT = PacketType.EVENT.value
print("ready", flush=True)
while n < want:
    data = s.recv(1 << 20)
    if not data:
        break
    buf += data; pos = 0
    while len(buf) - pos >= 5:
        size = int.from_bytes(buf[pos:pos + 4], "big")
        if len(buf) - pos < 4 + size:
            break
        n += buf[pos + 4] == EVENT
        pos += 4 + size
    buf = buf[pos:]
print(json.dumps({"count": n, "t": time.perf_counter(), "cpu": time.process_time()}), flush=True)
"""


def run(records: int = 30_000) -> None:
    spokes = records // 3
    print(f"reconnect storm: {records:,} records ({spokes:,} spokes: up, down, up) "
          "with 3 API subscribers and 1 VICI listener (separate processes); replace-hold 0")
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        # replace-hold 0: otherwise the end of a link's last Child SA waits 5 s for a
        # replacement, and whether a peer's second `up` comes within those 5 s (then its
        # down and up merge into fewer events) depends on the daemon's speed: the count
        # every subscriber must see would not be fixed (a faster daemon made it 86,692-89,576)
        conf = Path(tmp) / "storm.yaml"
        conf.write_text("pluto:\n  replace-hold: 0\n")
        d = Daemon(Path(tmp) / "s", extra=["-c", str(conf)]).start()
        expected = spokes * 9              # 3 events per change, 3 changes per spoke
        try:
            watchers = [subprocess.Popen([sys.executable, "-c", SUBSCRIBER, d.api, str(expected)],
                                         stdout=subprocess.PIPE, text=True) for _ in range(3)]
            watchers.append(subprocess.Popen([sys.executable, "-c", VICI, d.vici, str(spokes * 3),
                                              str(ROOT)], stdout=subprocess.PIPE, text=True))
            for w in watchers:
                w.stdout.readline()           # "ready"
            time.sleep(0.3)
            spool = d.state / "spool"
            pid = os.getpid()
            start = time.perf_counter()
            cpu0 = d.cpu_s()
            seq = 0
            for verb_round in ("up-host", "down-host", "up-host"):
                for i in range(spokes):
                    seq += 1
                    env = spoke_env(i, verb_round)
                    if verb_round == "up-host" and seq > spokes:
                        env["SPI_IN"] = hex(0x30000000 + i)      # the new SA after the reconnect
                        env["SPI_OUT"] = hex(0x40000000 + i)
                    (spool / f"{1000000000000 + seq}-{pid}.rec").write_bytes(record_bytes(env))
            written = time.perf_counter() - start
            results = []
            deadline = time.monotonic() + 60        # make bench must finish whatever happens
            for w in watchers:
                try:
                    out, _ = w.communicate(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    w.kill()
                    out, _ = w.communicate()
                lines = out.strip().splitlines() if out else []
                try:
                    results.append(json.loads(lines[-1]) if lines else {})
                except ValueError:
                    results.append({})
            subs, vici = results[:3], results[3]
            drain = max(r.get("t", start) for r in results) - start
            (user0, sys0), (user1, sys1) = cpu0, d.cpu_s()
            cpu = user1 - user0 + sys1 - sys0
            ok = all(r.get("count") == expected and r.get("bad") == 0 for r in subs)
            row(f"storm: {records:,} records written", f"{written:.2f} s",
                f"{records / written:,.0f} rec/s")
            row("storm: drain time until every watcher saw the last event", f"{drain:.2f} s",
                f"{records / drain:,.0f} rec/s", "goal <= 10 s", drain <= 10)
            row("storm: every subscriber saw every seq exactly once", "yes" if ok else "NO",
                f"{[(r.get('count'), r.get('end')) for r in subs] if not ok else [r.get('count') for r in subs]}", f"goal: all {expected:,}", ok)
            if not ok:       # name the cause: the daemon's own words (dropped clients, errors)
                why = [ln for ln in (Path(tmp) / "daemon.log").read_text(errors="replace")
                       .splitlines() if any(w in ln.lower() for w in ("drop", "error", "trace"))][:6]
                print("  storm: subscribers incomplete; daemon log:", *why or ["(nothing)"],
                      sep="\n    ")
            row("storm: VICI listener events", f"{vici.get('count', 0):,}", f"expected {spokes * 3:,}")
            row("storm: daemon CPU time (user + system)", f"{cpu:.2f} s",
                f"{cpu / records * 1e3:.3f} ms/record, system {sys1 - sys0:.2f} s")
            row("storm: the 4 watchers' own CPU time (same 2 cores)",
                f"{sum(r.get('cpu', 0) for r in results):.2f} s",
                " + ".join(f"{r.get('cpu', 0):.1f}" for r in results))
            row("daemon RSS after the storm", f"{d.rss_mb():.0f} MB")
        finally:
            d.stop()


if __name__ == "__main__":
    run()

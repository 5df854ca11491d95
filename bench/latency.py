"""Latency from hook exit to the event on an API subscriber and on a VICI listener."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from common import HOOK, Daemon, percentile, row, spoke_env

from nhrpbridge.protocol.vici import Decoder, Packet, PacketType, encode_packet


def run(rate: int = 500, seconds: float = 4.0) -> None:
    n = int(rate * seconds)
    print(f"latency, hook exit -> event ({n} hook calls at {rate}/s, up then down per peer)")
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        d = Daemon(Path(tmp) / "s").start()
        try:
            exits: dict[tuple[str, str], float] = {}
            api_at: dict[tuple[str, str], float] = {}
            vici_at: dict[tuple[str, str], float] = {}
            done = threading.Event()

            def api_reader():
                s = socket.socket(socket.AF_UNIX)
                s.connect(d.api)
                s.sendall(b'{"op":"subscribe","id":1}\n')
                f = s.makefile("rb")
                for line in f:
                    msg = json.loads(line)
                    if msg.get("type") in ("child-up", "child-down"):
                        api_at[(msg["type"], msg["child-sa"]["remote-host"])] = time.perf_counter()
                    if done.is_set() and len(api_at) >= n:
                        break

            def vici_reader():
                s = socket.socket(socket.AF_UNIX)
                s.connect(d.vici)
                for ev in ("child-state-installed", "child-state-destroying"):
                    s.sendall(encode_packet(Packet(PacketType.EVENT_REGISTER, ev)))
                dec = Decoder()
                while len(vici_at) < n:
                    dec.feed(s.recv(1 << 16))
                    while (p := dec.next_packet()) is not None:
                        if p.type == PacketType.EVENT:
                            kind = "child-up" if p.name == "child-state-installed" else "child-down"
                            remote = p.message["dmvpn"]["remote-host"].decode()
                            vici_at[(kind, remote)] = time.perf_counter()

            threads = [threading.Thread(target=api_reader, daemon=True),
                       threading.Thread(target=vici_reader, daemon=True)]
            for t in threads:
                t.start()
            time.sleep(0.5)
            spool = d.state / "spool"
            base = {"PATH": os.environ["PATH"]}
            start = time.perf_counter()
            for i in range(n):
                verb = "up-host" if i % 2 == 0 else "down-host"
                env = spoke_env(i // 2, verb)
                subprocess.run(["/bin/sh", str(HOOK), "--spool", str(spool), "--no-chain"],
                               env={**base, **env})
                exits[("child-up" if verb == "up-host" else "child-down", env["PLUTO_PEER"])] = \
                    time.perf_counter()
                delay = start + (i + 1) / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            achieved = n / (time.perf_counter() - start)
            done.set()
            for t in threads:
                t.join(15)
            for label, got in (("API subscriber", api_at), ("VICI listener", vici_at)):
                lat = [got[k] - exits[k] for k in exits if k in got]
                missing = len(exits) - len(lat)
                if not lat:
                    row(f"latency to {label}", "no events")
                    continue
                row(f"latency to {label} p50", f"{percentile(lat, 50) * 1e3:.2f} ms",
                    f"{achieved:.0f} calls/s")
                row(f"latency to {label} p99", f"{percentile(lat, 99) * 1e3:.2f} ms",
                    f"{missing} missing", "goal p99 <= 5 ms")
        finally:
            d.stop()


if __name__ == "__main__":
    run()

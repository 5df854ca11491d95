"""Reconnect storm: 30,000 hook records at once while 3 subscribers and 1 VICI listener watch."""
from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

from common import Daemon, record_bytes, row, spoke_env

from nhrpbridge.protocol.vici import Decoder, Packet, PacketType, encode_packet


def run(records: int = 30_000) -> None:
    spokes = records // 3
    print(f"reconnect storm: {records:,} records ({spokes:,} spokes: up, down, up) "
          "with 3 API subscribers and 1 VICI listener")
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        d = Daemon(Path(tmp) / "s").start()
        expected = spokes * 9              # 3 events per change, 3 changes per spoke
        seqs: list[list[int]] = [[], [], []]
        vici_events = [0]
        finished: dict[int, float] = {}

        def sub(k: int) -> None:
            s = socket.socket(socket.AF_UNIX)
            s.connect(d.api)
            s.sendall(b'{"op":"subscribe","id":1}\n')
            for line in s.makefile("rb"):
                msg = json.loads(line)
                if "seq" in msg and msg["type"] not in ("synced", "reply"):
                    seqs[k].append(msg["seq"])
                    if msg["seq"] >= expected:
                        finished[k] = time.perf_counter()
                        return

        def vici_listener() -> None:
            s = socket.socket(socket.AF_UNIX)
            s.connect(d.vici)
            for ev in ("child-state-installed", "child-state-destroying"):
                s.sendall(encode_packet(Packet(PacketType.EVENT_REGISTER, ev)))
            dec = Decoder()
            while vici_events[0] < spokes * 3:
                dec.feed(s.recv(1 << 20))
                while (p := dec.next_packet()) is not None:
                    if p.type == PacketType.EVENT:
                        vici_events[0] += 1
            finished[3] = time.perf_counter()

        threads = [threading.Thread(target=sub, args=(k,), daemon=True) for k in range(3)]
        threads.append(threading.Thread(target=vici_listener, daemon=True))
        for t in threads:
            t.start()
        time.sleep(0.5)
        spool = d.state / "spool"
        pid = os.getpid()
        start = time.perf_counter()
        seq = 0
        for verb_round in ("up-host", "down-host", "up-host"):
            for i in range(spokes):
                seq += 1
                env = spoke_env(i, verb_round)
                if verb_round == "up-host" and seq > spokes:
                    env["SPI_IN"] = hex(0x30000000 + i)          # the new SA after the reconnect
                    env["SPI_OUT"] = hex(0x40000000 + i)
                (spool / f"{1000000000000 + seq}-{pid}.rec").write_bytes(record_bytes(env))
        written = time.perf_counter() - start
        for t in threads:
            t.join(120)
        drain = max(finished.values(), default=time.perf_counter()) - start
        ok = all(s == list(range(1, expected + 1)) for s in seqs)
        row(f"storm: {records:,} records written", f"{written:.2f} s",
            f"{records / written:,.0f} rec/s")
        row("storm: drain time until every watcher saw the last event", f"{drain:.2f} s",
            f"{records / drain:,.0f} rec/s", "goal <= 10 s")
        row("storm: every subscriber saw every seq exactly once", "yes" if ok else "NO",
            f"{[len(s) for s in seqs]}", f"expected {expected:,}")
        row("storm: VICI listener events", f"{vici_events[0]:,}", f"expected {spokes * 3:,}")
        row("daemon RSS after the storm", f"{d.rss_mb():.0f} MB")
        d.stop()


if __name__ == "__main__":
    run()

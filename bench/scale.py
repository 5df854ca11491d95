"""A hub with 10,000 spokes (20,000 SAs) loaded through the real ingest path."""
from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

from common import Daemon, row, spoke_env, write_record

from nhrpbridge.protocol.vici import Packet, PacketType, encode_packet


def _recv_until_response(s: socket.socket) -> bytes:
    """Raw bytes of a list-sas stream, up to and including the CMD_RESPONSE."""
    buf = bytearray()
    pos = 0
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
        while len(buf) - pos >= 4:
            length = int.from_bytes(buf[pos:pos + 4], "big")
            if len(buf) - pos - 4 < length:
                break
            ptype = buf[pos + 4]
            pos += 4 + length
            if ptype == PacketType.CMD_RESPONSE:
                return bytes(buf[:pos])


def run(spokes: int = 10_000) -> None:
    import vici.protocol as vp
    print(f"hub scale: {spokes:,} spokes = {2 * spokes:,} SAs, loaded through the spool")
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        state = Path(tmp) / "s"
        (state / "spool").mkdir(parents=True)
        for i in range(spokes):
            write_record(state / "spool", i + 1, spoke_env(i))
        start = time.perf_counter()
        d = Daemon(state).start(wait=300)
        ingest = time.perf_counter() - start
        try:
            row(f"start-up applying {spokes:,} spool records", f"{ingest:.2f} s",
                f"{spokes / ingest:,.0f} rec/s")
            # VICI list-sas, as nhrpd asks on connect
            s = socket.socket(socket.AF_UNIX)
            s.connect(d.vici)
            s.sendall(encode_packet(Packet(PacketType.EVENT_REGISTER, "list-sa")))
            s.recv(16)
            t0 = time.perf_counter()
            s.sendall(encode_packet(Packet(PacketType.CMD_REQUEST, "list-sas")))
            raw = _recv_until_response(s)
            served = time.perf_counter() - t0
            s.close()
            t0 = time.perf_counter()
            pos = n = 0
            while pos < len(raw):          # what vici.Session does for each packet it reads
                length = int.from_bytes(raw[pos:pos + 4], "big")
                packet = vp.Packet.parse(raw[pos + 4:pos + 4 + length])
                if packet.response_type == PacketType.EVENT:
                    vp.Message.deserialize(packet.payload)
                    n += 1
                pos += 4 + length
            decode = time.perf_counter() - t0
            row("VICI list-sas full dump (server, wall)", f"{served:.3f} s",
                f"{served / decode:.2f}x decode", "goal <= 1 s, <= 1x decode",
                served <= 1 and served <= decode)
            row("strongSwan vici client decoding the same bytes", f"{decode:.3f} s",
                f"{n:,} list-sa, {len(raw) / 1e6:.1f} MB")
            # API subscribe dump
            s = socket.socket(socket.AF_UNIX)
            s.connect(d.api)
            t0 = time.perf_counter()
            s.sendall(b'{"op":"subscribe","id":1}\n')
            buf = bytearray()
            while b'"type":"synced"' not in buf[-200:]:
                buf += s.recv(1 << 20)
            dump = time.perf_counter() - t0
            s.close()
            row("API subscribe full dump", f"{dump:.3f} s", f"{len(buf) / 1e6:.1f} MB", "goal <= 1 s",
                dump <= 1)
            rss = d.rss_mb()
            row("daemon RSS with the hub loaded", f"{rss:.0f} MB", "", "goal <= 200 MB", rss <= 200)
        finally:
            d.stop()


if __name__ == "__main__":
    run()

"""A hundred initiates at once over VICI, as nhrpd sends them after a burst of shortcuts.

The daemon is the assembled one, in this process, its VICI socket real; only whack
is a stand-in (no pluto here): every call takes 200 ms, as a loaded pluto does, and
answers like an idle pluto.
"""
from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from common import row, step

from nhrpbridge.assemble import Options, build_daemon
from nhrpbridge.config import Config
from nhrpbridge.pluto import Result
from nhrpbridge.protocol.vici import Decoder, Packet, PacketType, encode_packet

CALL = 0.2


class SlowWhack:
    """Stand-in for whack/addconn (no pluto here): 200 ms per call; counts the attempts
    running at once (an attempt's own calls: addconn, --initiate)."""

    def __init__(self) -> None:
        self.running = self.peak = 0
        self.initiated: list[float] = []

    async def __call__(self, argv: list[str], timeout: float) -> Result:
        own = "addconn" in argv or "--initiate" in argv
        self.running += own
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(CALL)
        finally:
            self.running -= own
        if "--version" in argv:
            return Result(0, "Libreswan 4.10\n", "")
        if "--initiate" in argv:
            self.initiated.append(time.perf_counter())
        return Result(0, "", "")


def _ask(path: str, peers: list[str]) -> float:
    """Send one initiate per peer back to back (nhrpd pipelines); seconds until all answered."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    start = time.perf_counter()
    s.sendall(b"".join(encode_packet(Packet(PacketType.CMD_REQUEST, "initiate", {
        "child": b"dmvpn", "other-host": p.encode(), "async": b"1", "init-limits": b"1"}))
        for p in peers))
    dec, got = Decoder(), 0
    while got < len(peers):
        data = s.recv(1 << 16)
        if not data:
            raise ConnectionError(f"VICI closed after {got} answers")
        dec.feed(data)
        while (p := dec.next_packet()) is not None:
            if p.type == PacketType.CMD_RESPONSE:
                if p.message.get("success") != b"yes":
                    raise RuntimeError(f"initiate refused: {p.message.get('errmsg')!r}")
                got += 1
    took = time.perf_counter() - start
    s.close()
    return took


def run(n: int = 100) -> None:
    print(f"initiates: {n} to {n} different peers at once over VICI, whack stand-in "
          f"{CALL * 1e3:.0f} ms per call")
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        cfg = replace(Config.for_state_dir(Path(tmp) / "s"), vici_socket=f"{tmp}/vici.sock",
                      vici_protected_users=())
        with step("start the daemon"):
            daemon = build_daemon(cfg, Options())
            whack = SlowWhack()
            daemon.controller.run_cmd = whack             # type: ignore[union-attr]
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                loop.run_until_complete(daemon.run(ready.set, signals=False))
                rest = asyncio.all_tasks(loop)          # clients' tasks: end them
                for task in rest:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
                loop.close()
            thread = threading.Thread(target=serve, daemon=True)
            thread.start()
            if not ready.wait(30):
                raise RuntimeError("daemon not ready in 30 s")
        try:
            with step("one initiate alone (anchor)"):
                whack.initiated.clear()
                t0 = time.perf_counter()
                alone = _ask(cfg.vici_socket, ["198.51.100.200"])
                while not whack.initiated:
                    time.sleep(0.01)
                attempt = whack.initiated[0] - t0
            with step(f"{n} initiates at once"):
                whack.initiated.clear()
                whack.peak = 0
                peers = [f"198.51.100.{i + 1}" for i in range(n)]
                t0 = time.perf_counter()
                answered = _ask(cfg.vici_socket, peers)
                end = time.monotonic() + 60
                while len(whack.initiated) < n and time.monotonic() < end:
                    time.sleep(0.01)
                done = (max(whack.initiated) - t0) if whack.initiated else float("nan")
            row("one initiate: attempt (whack calls) until --initiate", f"{attempt:.2f} s",
                f"answered {alone:.2f} s")
            row(f"{n} initiates at once: all answered", f"{answered:.2f} s",
                f"{answered / attempt:.2f}x one attempt", "goal <= 1 s", answered <= 1.0)
            row(f"{n} initiates at once: all whack --initiate sent", f"{done:.2f} s",
                f"{done / attempt:.1f}x one attempt", f"goal: all {n}, <= 10 s",
                len(whack.initiated) == n and done <= 10)
            row("  attempts running at once, at most", f"{whack.peak}", "",
                "goal: bounded (16 attempts)", whack.peak <= 16)
        finally:
            loop.call_soon_threadsafe(daemon.stop)
            thread.join(20)


if __name__ == "__main__":
    run()

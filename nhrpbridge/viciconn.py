"""One VICI client connection: its decoder, its queue of requests, its output backlog.

Requests are answered in order by one worker task per connection, so pipelined
requests (nhrpd sends 5 packets on connect) keep their order and a slow `initiate`
never delays another client. Consecutive `initiate` requests (nhrpd asks for many
peers at once after a burst of shortcuts) are worked on side by side and answered
in order. Writes never await; a client that stops reading is
dropped alone (backlog.py), unless it is protected (nhrpd: see ViciServer).
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .backlog import SOFT, Backlog
from .errors import RemoteProtocolError
from .protocol.vici import Decoder, Packet, PacketType, encode_packet
from .unixsock import PeerCred

if TYPE_CHECKING:
    from .viciserver import ViciServer

__all__ = ["BATCH", "ViciConnection"]

log = logging.getLogger("nhrpbridge.vici")
BATCH = 256           # consecutive initiates worked on together, at most


def _side_by_side(packet: Packet) -> bool:
    return packet.type == PacketType.CMD_REQUEST and packet.name == "initiate"


class ViciConnection:
    def __init__(self, server: ViciServer, writer: asyncio.StreamWriter, cred: PeerCred):
        self.server = server
        self.writer = writer
        self.cred = cred
        self.decoder = Decoder()
        self.events: set[str] = set()
        self.queue: asyncio.Queue[Packet] = asyncio.Queue()
        self.protected = cred.uid == 0 or cred.uid in server.protected_uids
        self.backlog = Backlog(writer.transport, self._drop, server.pool, self.protected)
        self.reader: asyncio.StreamReader | None = None
        self.working = False
        self.fdname = ""                 # its name in systemd's fd store, if stored
        self.closed = False

    def send(self, packet: Packet | bytes) -> None:
        if self.closed:
            return
        self.backlog.write(packet if isinstance(packet, bytes) else encode_packet(packet))

    def _drop(self, why: str) -> None:
        log.warning("VICI client pid=%d does not read (%s): dropped", self.cred.pid, why)
        self.close(abort=True)

    def event(self, name: str, message: dict[str, Any] | bytes) -> None:
        """Send an event if registered; `message` may be the packet already encoded."""
        if name in self.events:
            self.send(message if isinstance(message, bytes)
                      else Packet(PacketType.EVENT, name, message))

    def close(self, abort: bool = False, handed_over: bool = False) -> None:
        if self.closed:
            return
        if not abort:
            self.backlog.flush()
        self.closed = True
        self.backlog.cancel()
        self.server.connections.discard(self)
        if not handed_over:
            self.server.unstore(self)    # systemd's copy must not keep it open
        if abort:
            self.writer.transport.abort()
        else:
            self.writer.close()

    async def serve(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        worker = asyncio.get_running_loop().create_task(self._work())
        try:
            data = b""                   # an adopted connection may hold requests already
            while not self.closed:
                self.decoder.feed(data)
                while True:
                    packet = self.decoder.next_packet()
                    if packet is None:
                        break
                    self.queue.put_nowait(packet)
                data = await reader.read(65536)
                if not data:
                    break
        except RemoteProtocolError as exc:
            log.warning("VICI client pid=%d uid=%d: %s; closing", self.cred.pid, self.cred.uid, exc)
        except (ConnectionError, OSError):
            pass
        finally:
            # answer what was already received before closing, unless the peer is gone
            if not self.closed:
                try:
                    await asyncio.wait_for(self.queue.join(), 5)
                except TimeoutError:
                    pass
            worker.cancel()
            self.close()

    def _batch(self, first: Packet) -> list[Packet]:
        """`first`, and the initiates queued right behind it (and the packet after them)."""
        batch = [first]
        while _side_by_side(batch[-1]) and len(batch) < BATCH and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return batch

    async def _work(self) -> None:
        while True:
            batch = self._batch(await self.queue.get())
            if self.protected and self.backlog.buffered() > SOFT:
                # behind (nhrpd busy): answer its next request once it caught up, so no
                # dump piles on top; events still go out meanwhile
                try:
                    await self.writer.drain()
                except ConnectionError:
                    pass
            self.working = True
            try:
                together = [p for p in batch if _side_by_side(p)]     # a prefix of it
                if len(together) > 1:
                    replies = await asyncio.gather(
                        *(self.server.answer(self, p) for p in together), return_exceptions=True)
                    for reply in replies:
                        if isinstance(reply, BaseException):
                            log.error("VICI initiate failed", exc_info=reply)
                            reply = _internal_error()
                        self.send(reply)
                for packet in batch[len(together) if len(together) > 1 else 0:]:
                    await self._one(packet)
            finally:
                self.working = False
                for _ in batch:
                    self.queue.task_done()

    async def _one(self, packet: Packet) -> None:
        try:
            await self.server.handle(self, packet)
        except RemoteProtocolError as exc:
            log.warning("VICI client pid=%d: %s; closing", self.cred.pid, exc)
            self.close()
        except Exception:
            log.exception("VICI %s %s failed", packet.type.name, packet.name)
            if packet.type == PacketType.CMD_REQUEST:
                self.send(_internal_error())


def _internal_error() -> Packet:
    return Packet(PacketType.CMD_RESPONSE, None, {"success": "no", "errmsg": "internal error"})

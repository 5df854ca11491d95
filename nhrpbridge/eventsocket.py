"""nhrpd's event socket (`nhrp event socket PATH`): nhrpd connects and asks us to
authorize each registration (`authorize-binding`); the Authorizer decides.

Strategy:
- Every event gets an answer at once. Malformed blocks with an eventid are
  rejected and logged; blocks without one cannot be answered and are logged.
- The codec is protocol/nhrpevent.py; this module is the thin I/O loop around it.
  A connection that does not read its answers is dropped (backlog.py).
"""
from __future__ import annotations

import asyncio
import logging
import socket

from .authorize import Authorizer
from .backlog import Backlog, Pool
from .bus import Listen, NhrpdWatch
from .errors import RemoteProtocolError
from .handover import Passed, inheritable_dup, pause_reading, settled, unread
from .protocol.nhrpevent import Decoder, encode_reply
from .systemd import FdStore
from .unixsock import peer_cred

__all__ = ["NhrpEventServer"]

log = logging.getLogger("nhrpbridge.authorize")


class NhrpEventServer:
    """Listens on `nhrp event socket PATH`; nhrpd connects and asks."""

    def __init__(self, authorizer: Authorizer, listen: Listen, path: str, mode: int, group: str,
                 pool: Pool | None = None, fdstore: FdStore | None = None,
                 watch: NhrpdWatch | None = None):
        self.authorizer = authorizer
        self.listen = listen
        self.path, self.mode, self.group = path, mode, group
        self.pool = pool
        self.stats = {"events": 0, "accepted": 0, "rejected": 0, "malformed": 0}
        self.live: dict[asyncio.StreamWriter, tuple[asyncio.StreamReader, Decoder]] = {}
        self._adopted: set[asyncio.Task[None]] = set()
        self.fdstore = fdstore
        self._serial = 0
        self.fdnames: dict[asyncio.StreamWriter, str] = {}
        self.watch = watch             # registration recovery (recovery.py)

    # ---- restarts (handover.py): every question is answered at once, so settling is
    # only flushing the answers

    kind = "nhrp-events"

    def pause(self) -> None:
        for writer in self.live:
            pause_reading(writer)

    async def settle(self, deadline: float) -> None:
        await settled(lambda: any(w.transport.get_write_buffer_size() for w in self.live),
                      deadline)

    def export(self) -> list[Passed]:
        out = []
        for writer, (reader, dec) in list(self.live.items()):
            del self.live[writer]
            if not writer.transport.get_write_buffer_size():
                sock = writer.get_extra_info("socket")
                out.append(Passed(self.kind, inheritable_dup(sock.fileno()),
                                  {"fdname": self.fdnames.pop(writer, "")},
                                  unread(reader) + dec.buffered()))
            writer.transport.abort()
        return out

    async def adopt(self, passed: Passed) -> None:
        sock = socket.socket(fileno=passed.fd)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        dec = Decoder()
        dec.feed(passed.data)
        task = asyncio.get_running_loop().create_task(
            self._client(reader, writer, dec, str(passed.state.get("fdname", ""))))
        self._adopted.add(task)
        task.add_done_callback(self._adopted.discard)

    async def start(self) -> None:
        await self.listen(self.path, self.mode, self.group, self._client)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      dec: Decoder | None = None, fdname: str = "") -> None:
        cred = peer_cred(writer.get_extra_info("socket"))
        log.info("nhrpd event socket: connection from pid=%d uid=%d", cred.pid, cred.uid)
        if self.watch is not None:
            self.watch.event_socket(True)
        dec = dec or Decoder()
        self.live[writer] = (reader, dec)
        if self.fdstore is not None and not fdname:
            self._serial += 1
            fdname = f"nhrp-events.{self._serial}"
            self.fdstore.add(fdname, writer.get_extra_info("socket").fileno())
        self.fdnames[writer] = fdname

        def drop(why: str) -> None:
            log.warning("nhrpd event socket: pid=%d does not read its answers (%s): dropped",
                        cred.pid, why)
            writer.transport.abort()
        backlog = Backlog(writer.transport, drop, self.pool)
        try:
            data = b""                   # an adopted connection may hold a question already
            while True:
                dec.feed(data)
                while (block := dec.next_block()) is not None:
                    reply = self.handle(block)
                    if reply and not writer.transport.is_closing():
                        writer.write(reply)
                        backlog.wrote(len(reply))
                data = await reader.read(65536)
                if not data:
                    break
        except RemoteProtocolError as exc:
            log.warning("nhrpd event socket: %s; closing", exc)
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            mine = self.live.pop(writer, None) is not None     # else: handed over
            if self.watch is not None:
                self.watch.event_socket(False)
            self.fdnames.pop(writer, None)
            if mine and dec.pending:
                log.warning("nhrpd event socket: connection closed in the middle of a block "
                            "(%d bytes dropped, nothing to answer)", dec.pending)
            backlog.cancel()
            if mine:
                if fdname and self.fdstore is not None:
                    self.fdstore.remove(fdname)
                    try:                 # the peer sees the end even if a copy lingers
                        writer.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                writer.close()

    def handle(self, block: dict[str, str]) -> bytes | None:
        self.stats["events"] += 1
        try:
            eventid = int(block.get("eventid", ""))
        except ValueError:
            self.stats["malformed"] += 1
            log.warning("nhrpd event without a usable eventid (cannot answer): %s",
                        {k: v[:40] for k, v in block.items()})
            return None
        if block.get("event") != "authorize-binding":
            return encode_reply(eventid, "default")     # as the reference handler does
        remote_nbma, gre = block.get("remote_nbma", ""), block.get("remote_addr", "")
        if not remote_nbma or not gre:
            self.stats["malformed"] += 1
            self.stats["rejected"] += 1
            log.warning("authorize-binding %d without remote_nbma/remote_addr: rejected "
                        "(nhrpd sends them only once the peer has a VC)", eventid)
            return encode_reply(eventid, "reject")
        cert = None
        if block.get("remote_cert"):
            try:
                cert = bytes.fromhex(block["remote_cert"])
            except ValueError:
                cert = None
        result = self.authorizer.authorize(None, remote_nbma, gre, block.get("local_nbma") or None,
                                           cert)
        self.authorizer.record(result)
        if result["accept"] and self.watch is not None:
            self.watch.registered(remote_nbma, result["connection"], block)
        self.stats["accepted" if result["accept"] else "rejected"] += 1
        return encode_reply(eventid, "accept" if result["accept"] else "reject")

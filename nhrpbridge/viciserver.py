"""A VICI-compatible socket so an unmodified FRR nhrpd (and swanctl) work with libreswan.

Strategy:
- Each connection has its own Decoder and a queue of requests worked off by one
  task, so pipelined requests (nhrpd sends 5 packets on connect) are answered in
  order, and a slow `initiate` never delays another client. Writes never await;
  a client that stops reading is dropped alone (backlog.py).
- Events go only to connections registered for them (charon's rule; the vici
  client would take an unexpected event for a command response). Registration
  of a name we do not know gets EVENT_UNKNOWN.
- SA messages and events come from wire.py (the layout nhrpd parses); certificate
  data is looked up once per event, from memory.
- `list-sas` answers from the reconciled database (the daemon reconciles with
  pluto before this socket is bound): an empty list while pluto holds SAs
  would leave nhrpd offline for good (it asks only once, on connect).
"""
from __future__ import annotations

import asyncio
import logging
import os
import platform
import socket
import time
from collections.abc import Callable
from typing import Any

from . import __version__
from .backlog import Pool
from .bus import Control, Listen
from .errors import ControlError, LocalProtocolError, RemoteProtocolError
from .handover import Passed, inheritable_dup, pause_reading, settled, unread
from .protocol.vici import Packet, PacketType, encode_packet
from .sa import Event, IkeSa
from .sadb import SaDatabase
from .systemd import FdStore
from .unixsock import may_control, peer_cred
from .viciconn import ViciConnection
from .wire import NO_CERTS, Certs, ike_message, vici_events

__all__ = ["KNOWN_EVENTS", "ViciServer"]

log = logging.getLogger("nhrpbridge.vici")
KNOWN_EVENTS = frozenset({
    "ike-updown", "ike-rekey", "child-updown", "child-rekey", "child-state-installed",
    "child-state-rekeyed", "child-state-destroying", "list-sa", "control-log", "log",
})
CertLookup = Callable[[IkeSa], Certs]
STREAM_AHEAD = 1 << 20   # list-sas: bytes waiting in one socket before the dump waits
STREAM_YIELD = 256       # list-sas: IKE SAs encoded between two turns of the loop


class ViciServer:
    """A sink (events to registered connections) and a listener.

    Args:
        cert_lookup: (local DER, remote DER) for an IKE SA, from memory; never blocks.
        allowed_gids: the socket group may read; only these groups (and root, and our
            own uid) may initiate/terminate.
        clock: wall-clock seconds, for the ages VICI reports.
    """

    def __init__(self, db: SaDatabase, control: Control, listen: Listen, path: str, mode: int,
                 group: str, allowed_gids: frozenset[int], cert_lookup: CertLookup | None = None,
                 pool: Pool | None = None, clock: Callable[[], float] = time.time,
                 protected_uids: frozenset[int] = frozenset(), fdstore: FdStore | None = None,
                 on_nhrpd_session: Callable[[], None] | None = None):
        self.db = db
        self.control = control
        self.listen = listen
        self.path, self.mode, self.group = path, mode, group
        self.allowed_gids = allowed_gids
        self.protected_uids = protected_uids      # and root: never dropped for reading slowly
        self.cert_lookup = cert_lookup
        self.pool = pool
        self.clock = clock
        self.connections: set[ViciConnection] = set()
        self._adopted: set[asyncio.Task[None]] = set()
        self.fdstore = fdstore
        self._serial = 0
        self.on_nhrpd_session = on_nhrpd_session   # registration recovery (recovery.py)

    async def start(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        await self.listen(self.path, self.mode, self.group, self._client)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = ViciConnection(self, writer, peer_cred(writer.get_extra_info("socket")))
        self.connections.add(conn)
        self.store(conn)
        log.debug("VICI client connected: pid=%d uid=%d", conn.cred.pid, conn.cred.uid)
        try:
            await conn.serve(reader)
        except asyncio.CancelledError:      # shutdown
            pass

    # ---- systemd's fd store: a crash of this process does not close these

    def store(self, conn: ViciConnection) -> None:
        """(Re)name the connection in the store: the name carries its events."""
        if self.fdstore is None or conn.closed:
            return
        if conn.fdname:
            self.fdstore.remove(conn.fdname)
        self._serial += 1
        conn.fdname = f"vici.{self._serial}.{'+'.join(sorted(conn.events)) or '-'}"
        self.fdstore.add(conn.fdname, conn.writer.get_extra_info("socket").fileno())

    def unstore(self, conn: ViciConnection) -> None:
        if self.fdstore is None or not conn.fdname:
            return
        self.fdstore.remove(conn.fdname)
        try:                             # the peer sees the end even if a copy lingers
            conn.writer.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ---- restarts (handover.py)

    kind = "vici"

    def pause(self) -> None:
        for c in self.connections:
            if not c.closed:
                pause_reading(c.writer)

    @staticmethod
    def _unsettled(c: ViciConnection) -> bool:
        """A request queued or being answered, or output not flushed yet."""
        return not c.closed and bool(c.working or not c.queue.empty()
                                     or c.backlog.buffered())

    async def settle(self, deadline: float) -> None:
        await settled(lambda: any(map(self._unsettled, list(self.connections))), deadline)

    def export(self) -> list[Passed]:
        out = []
        for c in [c for c in self.connections if not c.closed]:
            if self._unsettled(c) or c.reader is None:
                log.warning("VICI client pid=%d not settled in time: closed, not handed over",
                            c.cred.pid)
                c.close(abort=True)
                continue
            sock = c.writer.get_extra_info("socket")
            out.append(Passed(self.kind, inheritable_dup(sock.fileno()),
                              {"events": sorted(c.events), "fdname": c.fdname},
                              unread(c.reader) + c.decoder.buffered()))
            c.close(abort=True, handed_over=True)
        return out

    async def adopt(self, passed: Passed) -> None:
        sock = socket.socket(fileno=passed.fd)
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 20)
        conn = ViciConnection(self, writer, peer_cred(sock))
        conn.events = {e for e in passed.state.get("events", []) if e in KNOWN_EVENTS}
        conn.fdname = str(passed.state.get("fdname", ""))
        conn.decoder.feed(passed.data)
        self.connections.add(conn)
        if not conn.fdname:                  # from the fd store after a crash: store it anew
            self.store(conn)
        log.info("VICI client pid=%d uid=%d kept across the restart (events: %s)", conn.cred.pid,
                 conn.cred.uid, ", ".join(sorted(conn.events)) or "none")
        task = asyncio.get_running_loop().create_task(conn.serve(reader))
        self._adopted.add(task)
        task.add_done_callback(self._adopted.discard)

    def certs(self, ike: IkeSa) -> Certs:
        return self.cert_lookup(ike) if self.cert_lookup else NO_CERTS

    # ---- events from the daemon

    def push_events(self, events: list[Event]) -> None:
        """One change's events: the registered names are gathered once for all of them."""
        wanted = set().union(*(c.events for c in self.connections))
        if wanted:
            for ev in events:
                self._push(ev, wanted)

    def push_event(self, ev: Event) -> None:
        self.push_events([ev])

    def _push(self, ev: Event, wanted: set[str]) -> None:
        if ev.ike_sa is None:
            return
        for name, msg in vici_events(ev, self.clock(), self.certs(ev.ike_sa), wanted):
            targets = [c for c in self.connections if name in c.events]
            if targets:
                try:
                    data = encode_packet(Packet(PacketType.EVENT, name, msg))   # once for all
                except LocalProtocolError as exc:
                    log.warning("VICI %s for seq %d not sent: %s", name, ev.seq, exc)
                    continue
                for conn in targets:
                    conn.event(name, data)

    def push_notice(self, msg: dict[str, Any]) -> None:
        pass

    # ---- requests

    async def handle(self, conn: ViciConnection, packet: Packet) -> None:
        t = packet.type
        if t == PacketType.EVENT_REGISTER:
            ok = packet.name in KNOWN_EVENTS
            if ok and packet.name is not None:
                conn.events.add(packet.name)
                self.store(conn)
                if packet.name == "child-state-installed":
                    self._new_session(conn)
            conn.send(Packet(PacketType.EVENT_CONFIRM if ok else PacketType.EVENT_UNKNOWN))
        elif t == PacketType.EVENT_UNREGISTER:
            ok = packet.name in conn.events
            conn.events.discard(packet.name)
            self.store(conn)
            conn.send(Packet(PacketType.EVENT_CONFIRM if ok else PacketType.EVENT_UNKNOWN))
        elif t == PacketType.CMD_REQUEST:
            conn.send(await self.answer(conn, packet))
        else:
            raise RemoteProtocolError(f"a client may not send {t.name}", fatal=True)

    async def answer(self, conn: ViciConnection, packet: Packet) -> Packet:
        """The reply to one CMD_REQUEST (sent by the caller, in request order)."""
        handler = getattr(self, "cmd_" + (packet.name or "").replace("-", "_"), None)
        if handler is None:
            return Packet(PacketType.CMD_UNKNOWN)
        return Packet(PacketType.CMD_RESPONSE, None, await handler(conn, packet.message))

    def _new_session(self, conn: ViciConnection) -> None:
        """nhrpd asks for child-state-installed first thing after it connects: from
        nhrpd's user, while no other connection has it, that is nhrpd's new session."""
        if (self.on_nhrpd_session is None or conn.cred.uid not in self.protected_uids
                or any("child-state-installed" in c.events for c in self.connections
                       if c is not conn and not c.closed)):
            return
        log.info("VICI: nhrpd (pid=%d uid=%d) began a new session", conn.cred.pid, conn.cred.uid)
        self.on_nhrpd_session()

    async def cmd_version(self, conn: ViciConnection, msg: dict[str, Any]) -> dict[str, Any]:
        u = platform.uname()
        return {"daemon": "nhrpbridge", "version": __version__, "sysname": u.system,
                "release": u.release, "machine": u.machine}

    async def cmd_list_sas(self, conn: ViciConnection, msg: dict[str, Any]) -> dict[str, Any]:
        """One `list-sa` event per IKE SA, streamed: at most STREAM_AHEAD bytes wait in
        the socket (20,000 SAs with 1.4 KB certificates: 39 MB), and the loop is let go
        every STREAM_YIELD SAs. Each SA is read from the database when its turn comes,
        so an event sent meanwhile is never contradicted by an older snapshot."""
        db = self.db
        want_ike = _text(msg.get("ike"))
        want_id = _int(msg.get("ike-id"))
        want_child = _text(msg.get("child"))
        for n, uniqueid in enumerate(list(db.ike_sas)):
            if conn.closed:
                break
            if n % STREAM_YIELD == STREAM_YIELD - 1:
                await asyncio.sleep(0)
            if conn.backlog.buffered() > STREAM_AHEAD:
                conn.backlog.flush()
                try:
                    await conn.writer.drain()
                except ConnectionError:
                    break
            ike = db.ike_sas.get(uniqueid)
            if ike is None:                  # gone meanwhile: its events went out
                continue
            if want_ike and ike.connection != want_ike and ike.conn_name != want_ike:
                continue
            if want_id is not None and ike.uniqueid != want_id:
                continue
            children = db.children_of_ike(ike.uniqueid)
            if want_child:
                children = [c for c in children if want_child in (c.connection, c.conn_name)]
                if not children:
                    continue
            try:
                data = encode_packet(Packet(PacketType.EVENT, "list-sa",
                                            ike_message(ike, children, self.clock(),
                                                        certs=self.certs(ike))))
            except LocalProtocolError as exc:    # one SA that cannot be sent hides no other
                log.warning("VICI list-sa: IKE SA %d (%s) skipped: %s", ike.uniqueid,
                            ike.remote_host, exc)
                continue
            conn.event("list-sa", data)
        return {}

    def _may_control(self, conn: ViciConnection, what: str) -> str | None:
        if may_control(conn.cred, self.allowed_gids):
            log.info("VICI %s from pid=%d uid=%d", what, conn.cred.pid, conn.cred.uid)
            return None
        log.warning("VICI %s refused to pid=%d uid=%d", what, conn.cred.pid, conn.cred.uid)
        return f"{what}: permission denied (uid {conn.cred.uid} is not in a control group)"

    def _control_log(self, conn: ViciConnection, text: str) -> None:
        conn.event("control-log", {"group": "CFG", "level": "1", "msg": text})

    async def cmd_initiate(self, conn: ViciConnection, msg: dict[str, Any]) -> dict[str, Any]:
        if (denied := self._may_control(conn, "initiate")) is not None:
            return {"success": "no", "errmsg": denied}
        profile = _text(msg.get("child")) or _text(msg.get("ike"))
        remote = _text(msg.get("other-host"))
        local = _text(msg.get("my-host")) or None
        if not profile or not remote:
            return {"success": "no", "errmsg": "initiate needs child (profile) and other-host: "
                    "libreswan conns are per peer, a bare profile cannot be initiated"}
        timeout_ms = _int(msg.get("timeout")) or 0
        asynchronous = _text(msg.get("async")) in ("1", "yes", "true") or timeout_ms < 0
        shortcut = _text(msg.get("init-limits")) == "1"     # nhrpd: not an NHS registration
        self._control_log(conn, f"initiating {profile} to {remote}")
        try:
            result = await self.control.initiate(
                profile, remote, local,
                None if asynchronous or timeout_ms == 0 else timeout_ms / 1000,
                wait=not asynchronous, shortcut=shortcut)
        except ControlError as exc:
            self._control_log(conn, str(exc))
            log.warning("VICI initiate %s -> %s failed: %s", profile, remote, exc)
            return {"success": "no", "errmsg": str(exc)}
        self._control_log(conn, f"{profile} to {remote}: {result.get('result')}")
        return {"success": "yes"}

    async def cmd_terminate(self, conn: ViciConnection, msg: dict[str, Any]) -> dict[str, Any]:
        if (denied := self._may_control(conn, "terminate")) is not None:
            return {"success": "no", "errmsg": denied}
        db = self.db
        ike_id = _int(msg.get("ike-id"))
        child_id = _int(msg.get("child-id"))
        name = _text(msg.get("ike")) or _text(msg.get("child"))
        if child_id is not None:
            child = db.child_sas.get(child_id)
            if child is None:
                return {"success": "no", "errmsg": f"no CHILD_SA with id {child_id}"}
            ike_id = child.ike_uniqueid
        try:
            if ike_id is not None:
                ike = db.ike_sas.get(ike_id)
                if ike is None:
                    return {"success": "no", "errmsg": f"no IKE_SA with id {ike_id}",
                            "matches": 0, "terminated": 0}
                result = await self.control.terminate(ike.connection, None, ike_id)
            elif name:
                result = await self.control.terminate(name, None, None)
            else:
                return {"success": "no", "errmsg": "terminate needs ike, child, ike-id or child-id"}
        except ControlError as exc:
            return {"success": "no", "errmsg": str(exc)}
        n = result.get("terminated", 0)
        return {"success": "yes", "matches": n, "terminated": n}


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int | None:
    try:
        return int(_text(value)) if value is not None else None
    except ValueError:
        return None

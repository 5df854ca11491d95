"""The JSON-lines event API (v1), one connection at a time. See docs/api.md.

Strategy:
- `ApiConnection.serve()` is the thin I/O loop: read(65536) -> jsonl.Decoder ->
  `handle()` -> write. Writes never await: a client that does not read fills
  its transport buffer and is dropped by the rule in backlog.py (no progress
  for 5 s past 8 MiB, or 64 MiB), so it can never slow the daemon or others.
- Subscribe atomicity: the dump and the registration for pushed events happen in
  one synchronous step of the event loop, so every event seq lands exactly once:
  either in the dump (seq <= synced.seq) or in the stream (seq > synced.seq).
- Control ops (initiate, terminate, resync) need SO_PEERCRED uid 0, the daemon's
  own uid, or a configured group; everybody else gets `permission-denied`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from . import __version__
from .authorize import Authorizer
from .backlog import Backlog, Pool
from .bus import Bus, Control, Listen
from .errors import ControlError, ErrorCode, RemoteProtocolError
from .eventjson import EventEncoder
from .handover import Passed, inheritable_dup, pause_reading, settled, unread
from .protocol import jsonl
from .sa import Event
from .sadb import SaDatabase
from .unixsock import PeerCred, may_control, peer_cred
from .wire import child_dict, connection_of, dump, ike_dict, link_dict

__all__ = ["CAPABILITIES", "ApiConnection", "ApiServer"]

log = logging.getLogger("nhrpbridge.api")
CAPABILITIES = ["list", "subscribe", "initiate", "terminate", "resync", "authorize", "reload",
                "restart", "bindings"]
CONTROL_OPS = {"initiate", "terminate", "resync", "reload", "restart"}


class ApiServer:
    """The API socket: what every connection shares."""

    def __init__(self, db: SaDatabase, bus: Bus, control: Control, authorizer: Authorizer,
                 listen: Listen, path: Path, mode: int, group: str,
                 allowed_gids: frozenset[int], pool: Pool | None = None):
        self.db = db
        self.bus = bus
        self.control = control
        self.authorizer = authorizer
        self.listen = listen
        self.path, self.mode, self.group = path, mode, group
        self.allowed_gids = allowed_gids     # control ops: root, our uid, or these groups
        self.pool = pool
        self.connections: set[ApiConnection] = set()
        self._recent: tuple[list[Event] | None, list[bytes]] = (None, [])
        self._encoder = EventEncoder()
        self._notice: tuple[dict[str, Any] | None, bytes] = (None, b"")
        self.started = time.time()   # `hello` tells a restarted program from the old one

    def encodings(self, events: list[Event]) -> list[bytes]:
        """One encoding per event, shared by every subscriber: the bus hands the same
        list (one change's events, thousands when held Child SAs are released at once)
        to each sink in turn."""
        if self._recent[0] is not events:
            self._recent = (events, [self._encoder.encode(ev) for ev in events])
        return self._recent[1]

    def encoded_notice(self, msg: dict[str, Any]) -> bytes:
        """Like encodings(): the bus hands the same notice to each subscriber."""
        if self._notice[0] is not msg:
            self._notice = (msg, jsonl.encode(msg))
        return self._notice[1]

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        await self.listen(str(self.path), self.mode, self.group, self.client)

    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = ApiConnection(self, writer, peer_cred(writer.get_extra_info("socket")))
        self.connections.add(conn)
        try:
            await conn.serve(reader)
        finally:
            self.connections.discard(conn)

    # ---- restarts (handover.py)

    kind = "api"

    def pause(self) -> None:
        for c in self.connections:
            if not c.closed:
                pause_reading(c.writer)

    @staticmethod
    def _unsettled(c: ApiConnection) -> bool:
        """A request still running, or output not flushed yet."""
        return not c.closed and bool(c.tasks or c.backlog.buffered())

    async def settle(self, deadline: float) -> None:
        await settled(lambda: any(map(self._unsettled, list(self.connections))), deadline)

    def export(self) -> list[Passed]:
        out = []
        for c in [c for c in self.connections if not c.closed]:
            if self._unsettled(c) or c.reader is None:
                log.warning("API client pid=%d not settled in time: closed, not handed over",
                            c.cred.pid)
                c.close(abort=True)
                continue
            sock = c.writer.get_extra_info("socket")
            out.append(Passed(self.kind, inheritable_dup(sock.fileno()),
                              {"subscribed": c.subscribed},
                              unread(c.reader) + c.decoder.buffered()))
            c.close(abort=True)
        return out

    async def adopt(self, passed: Passed) -> None:
        sock = socket.socket(fileno=passed.fd)
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 20)
        conn = ApiConnection(self, writer, peer_cred(sock))
        conn.decoder.feed(passed.data)
        subscribed = passed.state.get("subscribed", False)
        if subscribed is None or isinstance(subscribed, str):
            conn.subscribed = subscribed
            self.bus.add_sink(conn)
        self.connections.add(conn)
        task = asyncio.get_running_loop().create_task(conn.serve(reader))
        task.add_done_callback(lambda _t: self.connections.discard(conn))


class ApiConnection:
    def __init__(self, server: ApiServer, writer: asyncio.StreamWriter, cred: PeerCred):
        self.server = server
        self.writer = writer
        self.cred = cred
        self.decoder = jsonl.Decoder()
        self.subscribed: str | bool | None = False   # False, or the connection filter
        self.backlog = Backlog(writer.transport, self._drop, server.pool)
        self.reader: asyncio.StreamReader | None = None
        self.closed = False
        self.tasks: set[asyncio.Task] = set()

    # ---- output

    def send(self, msg: dict[str, Any]) -> None:
        self.send_bytes(jsonl.encode(msg))

    def send_bytes(self, data: bytes) -> None:
        if not self.closed:
            self.backlog.write(data)

    def _drop(self, why: str) -> None:
        log.warning("API client pid=%d uid=%d does not read (%s): dropped",
                    self.cred.pid, self.cred.uid, why)
        self.close(abort=True)

    def push_event(self, ev: Event) -> None:
        self.push_events([ev])

    def push_events(self, events: list[Event]) -> None:
        """The events of one change, in seq order, in one write (the bus prefers this)."""
        if self.subscribed is False:
            return
        encs = self.server.encodings(events)
        if self.subscribed is not None:
            encs = [e for ev, e in zip(events, encs, strict=True) if connection_of(ev) == self.subscribed]
        data = b"".join(encs)
        if data:
            self.send_bytes(data)

    def push_notice(self, msg: dict[str, Any]) -> None:
        """Operator notices (liveness timeout, revival, updown failure); no seq."""
        if self.subscribed is False:
            return
        if self.subscribed is not None and msg.get("connection") != self.subscribed:
            return
        self.send_bytes(self.server.encoded_notice(msg))

    def close(self, abort: bool = False) -> None:
        if self.closed:
            return
        if not abort:
            self.backlog.flush()
        self.closed = True
        self.backlog.cancel()
        self.server.bus.remove_sink(self)
        if abort:
            self.writer.transport.abort()
        else:
            self.writer.close()

    # ---- input

    async def serve(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        try:
            data = b""                   # an adopted connection may hold requests already
            while not self.closed:
                self.decoder.feed(data)
                while not self.closed:
                    try:
                        msg = self.decoder.next_message()
                    except RemoteProtocolError as exc:
                        self.send(jsonl.error_reply(None, exc.code, str(exc)))
                        if exc.fatal:
                            self.close()
                        continue
                    if msg is None:
                        break
                    self.handle(msg)
                data = await reader.read(65536)
                if not data:
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            for t in self.tasks:
                t.cancel()
            self.close()

    def handle(self, msg: dict[str, Any]) -> None:
        """Dispatch one request; every request gets exactly one reply."""
        req_id = msg.get("id")
        op = msg.get("op")
        handler = _OPS.get(op) if isinstance(op, str) else None
        if handler is None:
            self.send(jsonl.error_reply(req_id, ErrorCode.UNKNOWN_OP, f"unknown op {op!r}; "
                                        f"known: {', '.join(sorted(_OPS))}"))
            return
        if op in CONTROL_OPS and not may_control(self.cred, self.server.allowed_gids):
            log.warning("refused %s from pid=%d uid=%d", op, self.cred.pid, self.cred.uid)
            self.send(jsonl.error_reply(req_id, ErrorCode.PERMISSION_DENIED,
                                        f"{op} needs root or a member of the control groups"))
            return
        try:
            handler(self, req_id, msg)
        except RemoteProtocolError as exc:      # bad arguments in a well-formed request
            self.send(jsonl.error_reply(req_id, exc.code, str(exc)))

    def reply(self, req_id: Any, **body: Any) -> None:
        msg: dict[str, Any] = {"type": "reply", "ok": True, **body}
        if req_id is not None:
            msg["id"] = req_id
        self.send(msg)

    # ---- ops

    def op_hello(self, req_id: Any, msg: dict[str, Any]) -> None:
        version = msg.get("version", jsonl.PROTOCOL_VERSION)
        if version not in jsonl.SUPPORTED_VERSIONS:
            err = jsonl.error_reply(req_id, ErrorCode.UNSUPPORTED_VERSION,
                                    f"version {version!r} is not supported")
            err["supported"] = list(jsonl.SUPPORTED_VERSIONS)
            self.send(err)
            return
        body = {"type": "hello", "ok": True, "version": jsonl.PROTOCOL_VERSION,
                "server": f"nhrpbridge {__version__}", "capabilities": CAPABILITIES,
                "pid": os.getpid(), "started": self.server.started}
        if req_id is not None:
            body["id"] = req_id
        self.send(body)

    def op_list(self, req_id: Any, msg: dict[str, Any]) -> None:
        conn = _opt_str(msg, "connection")
        db = self.server.db
        self.reply(req_id, seq=db.seq, **dump(db, conn))

    def op_subscribe(self, req_id: Any, msg: dict[str, Any]) -> None:
        conn = _opt_str(msg, "connection")
        db = self.server.db
        self.reply(req_id, seq=db.seq)
        parts = []
        keep = (lambda r: True) if conn is None else (lambda r: r.connection == conn)
        for ike in db.ike_sas.values():
            if keep(ike):
                parts.append(jsonl.encode({"type": "ike-sa", "ike-sa": ike_dict(ike)}))
        for child in db.child_sas.values():
            if keep(child):
                parts.append(jsonl.encode({"type": "child-sa", "child-sa": child_dict(child)}))
        for link in db.links.values():
            if keep(link):
                parts.append(jsonl.encode({"type": "link", "link": link_dict(link)}))
        parts.append(jsonl.encode({"type": "synced", "seq": db.seq}))
        dump = b"".join(parts)
        self.backlog.allowance = len(dump)
        self.send_bytes(dump)
        self.subscribed = conn
        self.server.bus.add_sink(self)

    def op_unsubscribe(self, req_id: Any, msg: dict[str, Any]) -> None:
        self.subscribed = False
        self.server.bus.remove_sink(self)
        self.reply(req_id)

    def op_resync(self, req_id: Any, msg: dict[str, Any]) -> None:
        self._spawn(req_id, self.server.control.resync())

    def op_reload(self, req_id: Any, msg: dict[str, Any]) -> None:
        """Read the config file again (see reload.py); the reply says what changed."""
        self.reply(req_id, **self.server.control.reload())

    def op_restart(self, req_id: Any, msg: dict[str, Any]) -> None:
        """Exec the program on disk; this and every connection stay open (handover.py)."""
        self._spawn(req_id, self.server.control.restart())

    def op_initiate(self, req_id: Any, msg: dict[str, Any]) -> None:
        conn, remote = _req_str(msg, "connection"), _req_str(msg, "remote-host")
        local = _opt_str(msg, "local-host")
        timeout = msg.get("timeout")
        if timeout is not None and not isinstance(timeout, (int, float)):
            raise RemoteProtocolError("timeout must be a number of seconds")
        self._spawn(req_id, self.server.control.initiate(conn, remote, local, timeout))

    def op_terminate(self, req_id: Any, msg: dict[str, Any]) -> None:
        conn = _req_str(msg, "connection")
        remote = _opt_str(msg, "remote-host")
        ike_id = msg.get("ike-id")
        if ike_id is not None and (not isinstance(ike_id, int) or isinstance(ike_id, bool)):
            raise RemoteProtocolError("ike-id must be an integer")
        self._spawn(req_id, self.server.control.terminate(conn, remote, ike_id))

    def op_authorize(self, req_id: Any, msg: dict[str, Any]) -> None:
        """Dry run of the registration policy: what would nhrpd be told?"""
        auth = self.server.authorizer
        result = auth.authorize(_req_str(msg, "connection"), _req_str(msg, "remote-nbma"),
                                _req_str(msg, "gre-address"), _opt_str(msg, "local-nbma"))
        self.reply(req_id, **result)

    def op_bindings(self, req_id: Any, msg: dict[str, Any]) -> None:
        """The last registration decision per peer NBMA (for `status --peers`)."""
        self.reply(req_id, bindings=dict(self.server.authorizer.last))

    def _spawn(self, req_id: Any, coro: Coroutine[Any, Any, dict[str, Any]]) -> None:
        async def run() -> None:
            try:
                result = await coro
            except ControlError as exc:
                self.send(jsonl.error_reply(req_id, exc.code, str(exc)))
            except Exception as exc:  # a bug must not kill the connection silently
                log.exception("request %r failed", req_id)
                self.send(jsonl.error_reply(req_id, ErrorCode.INTERNAL_ERROR, str(exc)))
            else:
                self.reply(req_id, **(result or {}))
        task = asyncio.get_running_loop().create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def _req_str(msg: dict[str, Any], key: str) -> str:
    value = msg.get(key)
    if not isinstance(value, str) or not value:
        raise RemoteProtocolError(f"{key!r} is required and must be a non-empty string")
    return value


def _opt_str(msg: dict[str, Any], key: str) -> str | None:
    value = msg.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RemoteProtocolError(f"{key!r} must be a string")
    return value



_OPS = {name[3:]: fn for name, fn in vars(ApiConnection).items() if name.startswith("op_")}

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
from typing import TYPE_CHECKING, Any

from . import __version__
from .backlog import Backlog
from .errors import PlutoError, RemoteProtocolError
from .protocol import jsonl
from .sadb import Event, child_dict, event_dict, ike_dict, link_dict
from .unixsock import PeerCred, may_control

if TYPE_CHECKING:
    from .server import Daemon

__all__ = ["ApiConnection", "CAPABILITIES"]

log = logging.getLogger("nhrpbridge.api")
CAPABILITIES = ["list", "subscribe", "initiate", "terminate", "resync", "authorize"]
CONTROL_OPS = {"initiate", "terminate", "resync"}


class ApiConnection:
    def __init__(self, daemon: "Daemon", writer: asyncio.StreamWriter, cred: PeerCred):
        self.daemon = daemon
        self.writer = writer
        self.cred = cred
        self.decoder = jsonl.Decoder()
        self.subscribed: str | None | bool = False   # False, or the connection filter
        self.backlog = Backlog(writer.transport, self._drop)
        self.closed = False
        self.tasks: set[asyncio.Task] = set()

    # ---- output

    def send(self, msg: dict[str, Any]) -> None:
        self.send_bytes(jsonl.encode(msg))

    def send_bytes(self, data: bytes) -> None:
        if self.closed:
            return
        self.writer.transport.write(data)
        self.backlog.wrote(len(data))

    def _drop(self, why: str) -> None:
        log.warning("API client pid=%d uid=%d does not read (%s): dropped",
                    self.cred.pid, self.cred.uid, why)
        self.close(abort=True)

    def push_event(self, ev: Event) -> None:
        """Called by the daemon for every event, in seq order."""
        if self.subscribed is False:
            return
        if self.subscribed is not None and _connection_of(ev) != self.subscribed:
            return
        self.send_bytes(_encoded(ev))

    def push_notice(self, msg: dict[str, Any]) -> None:
        """Operator notices (liveness timeout, revival, updown failure); no seq."""
        if self.subscribed is False:
            return
        if self.subscribed is not None and msg.get("connection") != self.subscribed:
            return
        self.send(msg)

    def close(self, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.backlog.cancel()
        self.daemon.remove_sink(self)
        if abort:
            self.writer.transport.abort()
        else:
            self.writer.close()

    # ---- input

    async def serve(self, reader: asyncio.StreamReader) -> None:
        try:
            while not self.closed:
                data = await reader.read(65536)
                if not data:
                    break
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
            self.send(jsonl.error_reply(req_id, "unknown-op", f"unknown op {op!r}; "
                                        f"known: {', '.join(sorted(_OPS))}"))
            return
        if op in CONTROL_OPS and not may_control(self.cred, self.daemon.allowed_gids):
            log.warning("refused %s from pid=%d uid=%d", op, self.cred.pid, self.cred.uid)
            self.send(jsonl.error_reply(req_id, "permission-denied",
                                        f"{op} needs root or a member of the control groups"))
            return
        try:
            handler(self, req_id, msg)
        except _BadArgs as exc:
            self.send(jsonl.error_reply(req_id, "bad-request", str(exc)))

    def reply(self, req_id: Any, **body: Any) -> None:
        msg: dict[str, Any] = {"type": "reply", "ok": True, **body}
        if req_id is not None:
            msg["id"] = req_id
        self.send(msg)

    # ---- ops

    def op_hello(self, req_id: Any, msg: dict[str, Any]) -> None:
        version = msg.get("version", jsonl.PROTOCOL_VERSION)
        if version not in jsonl.SUPPORTED_VERSIONS:
            err = jsonl.error_reply(req_id, "unsupported-version",
                                    f"version {version!r} is not supported")
            err["supported"] = list(jsonl.SUPPORTED_VERSIONS)
            self.send(err)
            return
        body = {"type": "hello", "ok": True, "version": jsonl.PROTOCOL_VERSION,
                "server": f"nhrpbridge {__version__}", "capabilities": CAPABILITIES}
        if req_id is not None:
            body["id"] = req_id
        self.send(body)

    def op_list(self, req_id: Any, msg: dict[str, Any]) -> None:
        conn = _opt_str(msg, "connection")
        self.reply(req_id, seq=self.daemon.db.seq, **self.daemon.db.dump(conn))

    def op_subscribe(self, req_id: Any, msg: dict[str, Any]) -> None:
        conn = _opt_str(msg, "connection")
        db = self.daemon.db
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
        self.daemon.add_sink(self)

    def op_unsubscribe(self, req_id: Any, msg: dict[str, Any]) -> None:
        self.subscribed = False
        self.daemon.remove_sink(self)
        self.reply(req_id)

    def op_resync(self, req_id: Any, msg: dict[str, Any]) -> None:
        self._spawn(req_id, self.daemon.resync())

    def op_initiate(self, req_id: Any, msg: dict[str, Any]) -> None:
        conn, remote = _req_str(msg, "connection"), _req_str(msg, "remote-host")
        local = _opt_str(msg, "local-host")
        timeout = msg.get("timeout")
        if timeout is not None and not isinstance(timeout, (int, float)):
            raise _BadArgs("timeout must be a number of seconds")
        self._spawn(req_id, self.daemon.initiate(conn, remote, local, timeout))

    def op_terminate(self, req_id: Any, msg: dict[str, Any]) -> None:
        conn = _req_str(msg, "connection")
        remote = _opt_str(msg, "remote-host")
        ike_id = msg.get("ike-id")
        if ike_id is not None and (not isinstance(ike_id, int) or isinstance(ike_id, bool)):
            raise _BadArgs("ike-id must be an integer")
        self._spawn(req_id, self.daemon.terminate(conn, remote, ike_id))

    def op_authorize(self, req_id: Any, msg: dict[str, Any]) -> None:
        """Dry run of the registration policy: what would nhrpd be told?"""
        auth = self.daemon.authorizer
        result = auth.authorize(_req_str(msg, "connection"), _req_str(msg, "remote-nbma"),
                                _req_str(msg, "gre-address"), _opt_str(msg, "local-nbma"))
        self.reply(req_id, **result)

    def _spawn(self, req_id: Any, coro: Any) -> None:
        async def run() -> None:
            try:
                result = await coro
            except PlutoError as exc:
                self.send(jsonl.error_reply(req_id, exc.code, str(exc)))
            except Exception as exc:  # a bug must not kill the connection silently
                log.exception("request %r failed", req_id)
                self.send(jsonl.error_reply(req_id, "internal-error", str(exc)))
            else:
                self.reply(req_id, **(result or {}))
        task = asyncio.get_running_loop().create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class _BadArgs(Exception):
    pass


def _req_str(msg: dict[str, Any], key: str) -> str:
    value = msg.get(key)
    if not isinstance(value, str) or not value:
        raise _BadArgs(f"{key!r} is required and must be a non-empty string")
    return value


def _opt_str(msg: dict[str, Any], key: str) -> str | None:
    value = msg.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _BadArgs(f"{key!r} must be a string")
    return value


_last: list[Any] = [None, b""]


def _encoded(ev: Event) -> bytes:
    """One encoding per event, shared by every subscriber (the daemon hands each
    event to all sinks before the next one, so a one-entry cache is enough)."""
    if _last[0] is not ev:
        _last[0], _last[1] = ev, jsonl.encode(event_dict(ev))
    return _last[1]


def _connection_of(ev: Event) -> str | None:
    rec = ev.link or ev.child_sa or ev.ike_sa
    return rec.connection if rec is not None else None


_OPS = {name[3:]: fn for name, fn in vars(ApiConnection).items() if name.startswith("op_")}

"""Restart without dropping a client: the sockets go to the next program, with their state.

Strategy:
- `nhrpbridge restart` (API op `restart`): the daemon checks that the program on disk
  starts (it must import; otherwise nothing changes), stops ingesting, lets every
  front-end settle (stop reading, finish the requests in flight, flush what it wrote),
  checkpoints, writes STATE_DIR/handover.json (descriptors, what each connection had
  registered, bytes read and not decoded yet), clears close-on-exec on those
  descriptors and execs itself: the same pid, so systemd and pid files see no change.
- The new program loads state.json (the same seq and uniqueids), adopts the
  connections before it ingests anything, so every event after the old program's
  last one reaches the same subscribers exactly once, then serves the inherited
  listening sockets: a client that connects meanwhile waits in the listen backlog.
- The file is read only if it is a regular file owned by us with mode 0600, and it is
  removed at once: nobody else can hand this daemon descriptors.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol

from .errors import StateError

__all__ = ["HANDOVER_ENV", "HandsOver", "Handover", "Passed", "adopt", "collect", "exec_self",
           "from_store",
           "inheritable_dup", "pause_reading", "program_problem", "settled", "take", "unread",
           "write"]

log = logging.getLogger("nhrpbridge")
HANDOVER_ENV = "NHRPBRIDGE_HANDOVER"
VERSION = 1


@dataclass
class Passed:
    """One live connection on its way to the next process."""

    kind: str                    # "api", "vici", "nhrp-events"
    fd: int
    state: dict[str, Any] = field(default_factory=dict)
    data: bytes = b""            # read from the peer, not decoded yet


@dataclass
class Handover:
    listeners: dict[str, int] = field(default_factory=dict)     # socket path -> fd
    connections: list[Passed] = field(default_factory=list)

    def encode(self) -> str:
        return json.dumps({"version": VERSION, "listeners": self.listeners, "connections": [
            {"kind": p.kind, "fd": p.fd, "state": p.state,
             "data": base64.b64encode(p.data).decode()} for p in self.connections]})

    @classmethod
    def decode(cls, text: str) -> Handover:
        try:
            raw = json.loads(text)
            if raw.get("version") != VERSION:
                raise ValueError(f"version {raw.get('version')!r}")
            listeners = {str(k): int(v) for k, v in raw["listeners"].items()}
            conns = [Passed(str(c["kind"]), int(c["fd"]), dict(c["state"]),
                            base64.b64decode(c["data"], validate=True))
                     for c in raw["connections"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateError(f"handover file unusable: {exc}") from None
        return cls(listeners, conns)


class HandsOver(Protocol):
    """A front-end whose connections survive a restart."""

    kind: str

    def pause(self) -> None:
        """Read nothing more from any connection (at once: no request may slip through)."""

    async def settle(self, deadline: float) -> None:
        """Finish the requests in flight and flush, until `deadline`."""

    def export(self) -> list[Passed]:
        """Every live connection as a descriptor for the next process (then let go)."""

    async def adopt(self, passed: Passed) -> None:
        """Serve a connection the previous process had."""


def unread(reader: asyncio.StreamReader) -> bytes:
    """What the StreamReader holds and nobody read yet (asyncio keeps no public way)."""
    return bytes(getattr(reader, "_buffer", b""))


async def settled(busy: Callable[[], bool], deadline: float) -> None:
    """Wait until `busy()` is false or the monotonic `deadline` passed (what every
    front-end's settle() does with its own idea of busy)."""
    while busy() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def pause_reading(writer: asyncio.StreamWriter) -> None:
    """Read nothing more from this peer (what it sends waits in the socket)."""
    transport = writer.transport
    if isinstance(transport, asyncio.ReadTransport):
        transport.pause_reading()


def inheritable_dup(fd: int) -> int:
    """A copy of `fd` that survives exec (the original may be closed by its owner)."""
    new = os.dup(fd)
    os.set_inheritable(new, True)
    return new


def write(path: Path, handover: Handover) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(handover.encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def take(path: Path) -> Handover:
    """Read and remove the handover file; refuse one we did not write."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise StateError(f"{path}: not a private regular file of uid {os.geteuid()}")
        with os.fdopen(os.dup(fd)) as f:
            text = f.read(1 << 22)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return Handover.decode(text)


def program_problem() -> str | None:
    """Would the program on disk start? None if yes, else what it printed."""
    try:
        r = subprocess.run([sys.executable, "-c", "import nhrpbridge.cli"], capture_output=True,
                           text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    return None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["exit 1"])[-1]


def exec_self(path: Path) -> NoReturn:
    """Become the program on disk, with the same arguments, told where the handover is."""
    env = dict(os.environ, **{HANDOVER_ENV: str(path)})
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError as exc:           # checked before (program_problem): should not happen
        log.critical("restart: exec %s failed (%s); exiting", sys.executable, exc)
        os._exit(1)


async def collect(parts: dict[str, HandsOver], listeners: Any, settle: float) -> Handover:
    """Settle every front-end (until `settle` seconds from now), then take their connections
    and the listening sockets (`listeners`: a listen.Listeners, or None in tests)."""
    deadline = time.monotonic() + settle
    for part in parts.values():
        await part.settle(deadline)
    conns = [p for part in parts.values() for p in part.export()]
    return Handover(listeners.export() if listeners is not None else {}, conns)


def from_store(stored: list[tuple[int, str]]) -> Handover:
    """What systemd's fd store kept (names from systemd.FdStore users) as a Handover:
    after a crash there is no state file, only the names."""
    out = Handover()
    for fd, name in stored:
        kind, _, rest = name.partition(".")
        if name.startswith("listen/"):          # "listen" + the path it serves
            out.listeners[name[len("listen"):]] = fd
            continue
        if kind == "vici":
            events = rest.partition(".")[2]
            out.connections.append(Passed("vici", fd, {
                "events": [] if events in ("", "-") else events.split("+"), "fdname": name}))
            continue
        elif kind == "nhrp-events":
            out.connections.append(Passed("nhrp-events", fd, {"fdname": name}))
            continue
        log.warning("fd store: %r is nothing nhrpbridge stored; closed", name)
        os.close(fd)
    return out


async def adopt(handover: Handover, parts: dict[str, HandsOver], listeners: Any) -> int:
    """Give each front-end its connections back; return how many were adopted."""
    if listeners is not None:
        listeners.inherited.update(handover.listeners)
    else:
        for fd in handover.listeners.values():
            os.close(fd)
    adopted = 0
    for passed in handover.connections:
        part = parts.get(passed.kind)
        if part is None:
            log.warning("a %s connection was handed over but no such socket is configured "
                        "now: closed", passed.kind)
            os.close(passed.fd)
            continue
        try:
            await part.adopt(passed)
            adopted += 1
        except (OSError, ValueError) as exc:
            log.error("cannot adopt a %s connection: %s", passed.kind, exc)
    return adopted

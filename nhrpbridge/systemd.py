"""systemd's notify protocol (Type=notify) and logs the journal reads well. No libsystemd."""
from __future__ import annotations

import array
import logging
import os
import socket
import sys
from typing import ClassVar

__all__ = ["FdStore", "listen_fds", "sd_notify", "setup_logging"]

log = logging.getLogger("nhrpbridge")


def sd_notify(state: str, fds: list[int] | None = None) -> bool:
    """Send `state` (and `fds`, SCM_RIGHTS) to $NOTIFY_SOCKET; False outside systemd or if
    it failed."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            if fds:                  # (socket.send_fds ignores the address before 3.12)
                s.sendmsg([state.encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                              array.array("i", fds))], 0, addr)
            else:
                s.sendto(state.encode(), addr)
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)
        return False
    return True


class FdStore:
    """systemd's file-descriptor store (FileDescriptorStoreMax=): descriptors systemd keeps
    for the next process of this service if this one dies. nhrpd's VICI connection and
    the listening sockets go there, so a crash under systemd does not drop nhrpd; the
    name carries what the next process must know (the VICI events registered)."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))

    def add(self, name: str, fd: int) -> None:
        if self.enabled:
            sd_notify(f"FDSTORE=1\nFDNAME={name}", [fd])

    def remove(self, name: str) -> None:
        if self.enabled:
            sd_notify(f"FDSTOREREMOVE=1\nFDNAME={name}")


def listen_fds() -> list[tuple[int, str]]:
    """(fd, name) systemd passed at start (LISTEN_FDS, LISTEN_FDNAMES): after a crash, what
    the fd store kept. The variables are removed (they are for this process only)."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        count = 0
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    out = []
    for i in range(count):
        os.set_inheritable(3 + i, False)
        out.append((3 + i, names[i] if i < len(names) else "unknown"))
    return out


def setup_logging(level: str) -> None:
    """stderr; under systemd (JOURNAL_STREAM) with <N> priority prefixes instead of times."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("watchdog").setLevel(logging.WARNING)   # its debug is per inotify event


class _JournalFormatter(logging.Formatter):
    PRIO: ClassVar[dict[int, int]] = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
            logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self.PRIO.get(record.levelno, 6)}>{super().format(record)}"

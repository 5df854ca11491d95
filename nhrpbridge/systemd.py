"""systemd's notify protocol (Type=notify) and logs the journal reads well. No libsystemd."""
from __future__ import annotations

import logging
import os
import socket
import sys
from typing import ClassVar

__all__ = ["sd_notify", "setup_logging"]

log = logging.getLogger("nhrpbridge")


def sd_notify(state: str) -> bool:
    """Send `state` to $NOTIFY_SOCKET; False outside systemd or if it failed."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), addr)
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)
        return False
    return True


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

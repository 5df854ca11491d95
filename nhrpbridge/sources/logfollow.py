"""Follow pluto's log: a file (ipsec.conf logfile=, or rsyslog's auth.log) or journald.

Strategy (file):
- Position = (inode, offset), persisted with the daemon's checkpoint, so a restart
  continues exactly where the state it restored stopped: no line re-read past
  what was applied, none skipped. Without a saved position we start at the end
  (old history is not the present; reconciliation with whack covers it).
- watchdog watches the *directory*, so creation and rename are seen; a poll
  every POLL seconds is the safety net.
- rename+create rotation: the path's inode changes -> drain the old file to its
  end, then read the new one from 0. copytruncate: the size drops below our
  offset -> read again from 0. The file not existing yet: wait for it.
- A catch-up (a big log written while we were down) is read READ_LIMIT bytes at a
  time, each chunk handed to the sink before the next is read: the loop is never held
  for the whole file, and memory holds one chunk of lines, not the file.
- A partial last line waits for its newline. Lines are decoded as UTF-8 with
  replacement: garbage never stops the follower. Lines over MAX_LINE are cut.
Strategy (journald): `journalctl -o json -f SYSLOG_IDENTIFIER=pluto`, resuming
with `--after-cursor` from the persisted cursor.

Trust (any local user can write `pluto[N]:` lines with `logger -t pluto`):
- journald: an entry counts only if journald's own fields say pluto wrote it
  (`_UID=0` and `_COMM=pluto`, or `_SYSTEMD_UNIT=ipsec.service`); SYSLOG_IDENTIFIER is
  the sender's word and proves nothing. Other entries are skipped and counted.
- file: the sink is told whether the file is trusted (owned by root or us, writable by
  nobody else). Lines that came through syslog are never trusted; the daemon lets
  untrusted lines only annotate SAs that the hook or whack reported.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["FileFollower", "JournalFollower", "make_follower", "MAX_LINE"]

log = logging.getLogger("nhrpbridge.plutolog")
MAX_LINE = 64 * 1024
POLL = 1.0
READ_LIMIT = 1 << 19     # bytes per read: ~4,000 lines, ~60 ms of interpretation (bench)

LineSink = Callable[[list[str], bool], None]   # (lines, from a trusted source)


class FileFollower:
    def __init__(self, path: str, poll: float = POLL):
        self.path = Path(path)
        self.poll = poll
        self.fd: int | None = None
        self.inode: int | None = None
        self.offset = 0
        self.partial = b""
        self.more = False             # the last read stopped at READ_LIMIT
        self.sink: LineSink | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._watch: Any = None

    # -- position

    def position(self) -> dict[str, Any]:
        """Where the applied data ends (the partial line is not applied yet)."""
        return {"backend": "file", "path": str(self.path), "inode": self.inode,
                "offset": self.offset - len(self.partial)}

    def restore(self, pos: dict[str, Any] | None) -> None:
        """Open the file at the saved position, or at its end if there is none."""
        self._close()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            log.info("pluto log %s does not exist yet; waiting for it", self.path)
            return
        self._open()
        if pos and pos.get("backend") == "file" and pos.get("path") == str(self.path) \
                and pos.get("inode") == st.st_ino:
            self.offset = min(int(pos.get("offset", 0)), st.st_size)
            if int(pos.get("offset", 0)) > st.st_size:
                log.warning("pluto log %s was truncated while we were down; reading from 0",
                            self.path)
                self.offset = 0
        elif pos and pos.get("backend") == "file":
            log.warning("pluto log %s was rotated while we were down; reading the new file "
                        "from its start", self.path)
            self.offset = 0
        else:
            self.offset = st.st_size

    def _open(self) -> int:
        self.fd = fd = os.open(self.path, os.O_RDONLY)
        self.inode = os.fstat(fd).st_ino
        self.offset = 0
        self.partial = b""
        return fd

    def lag(self) -> int | None:
        """Bytes written to the log and not read yet (metrics)."""
        if self.fd is None:
            return None
        try:
            return max(0, os.fstat(self.fd).st_size - self.offset)
        except OSError:
            return None

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.fd = None

    # -- reading (synchronous, called from the loop; reads are small and local)

    def read_available(self) -> list[str]:
        """Every complete new line, handling rotation and truncation."""
        lines: list[str] = []
        fd = self.fd
        if fd is None:
            if not self.path.exists():
                return lines
            fd = self._open()
            log.info("pluto log %s appeared; following it", self.path)
        size = os.fstat(fd).st_size
        if size < self.offset:
            log.warning("pluto log %s was truncated (copytruncate); reading from 0", self.path)
            self.offset, self.partial = 0, b""
        lines += self._drain()
        if self.more:                        # the rest (and any rotation) on the next call
            return lines
        try:
            current = os.stat(self.path).st_ino
        except FileNotFoundError:
            current = None
        if current is not None and current != self.inode:
            if self.partial:                 # the old file's last line, never ended
                lines.append(self._decode(self.partial))
            log.info("pluto log %s was rotated; following the new file", self.path)
            self._close()
            self._open()
            lines += self._drain()
        return lines

    def _drain(self) -> list[str]:
        out: list[str] = []
        assert self.fd is not None            # only called with the file open
        read = 0
        while True:
            self.more = read >= READ_LIMIT
            chunk = b"" if self.more else os.pread(self.fd, 1 << 16, self.offset)
            if not chunk:
                return out
            read += len(chunk)
            self.offset += len(chunk)
            data = self.partial + chunk
            parts = data.split(b"\n")
            self.partial = parts.pop()
            if len(self.partial) > MAX_LINE:
                log.warning("pluto log line over %d bytes cut", MAX_LINE)
                out.append(self._decode(self.partial[:MAX_LINE]))
                self.partial = b""
            out.extend(self._decode(p) for p in parts)

    @staticmethod
    def _decode(raw: bytes) -> str:
        return raw[:MAX_LINE].decode("utf-8", "replace")

    # -- life cycle

    async def start(self, sink: LineSink, pos: dict[str, Any] | None) -> None:
        from .watch import DirectoryWatch
        self.sink = sink
        self.restore(pos)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._watch = DirectoryWatch(self.path.parent, self._wake)
        self._watch.start()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                lines = self.read_available()
            except OSError as exc:
                log.error("reading pluto log %s: %s", self.path, exc)
                self._close()
                continue
            if lines and self.sink:
                self.sink(lines, self.trusted())
            if self.more:                    # catching up: the next chunk after a yield
                self._wake.set()
                await asyncio.sleep(0)

    def trusted(self) -> bool:
        """Only root (pluto) or our own user can have written this file."""
        if self.fd is None:
            return False
        st = os.fstat(self.fd)
        return st.st_uid in (0, os.geteuid()) and not st.st_mode & 0o022

    def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self._watch:
            self._watch.stop()
        self._close()

    async def aclose(self) -> None:
        self.stop()


class JournalFollower:
    """pluto's messages from the systemd journal via journalctl (no libsystemd binding)."""

    def __init__(self, journalctl: str = "journalctl", identifier: str = "pluto"):
        self.journalctl = journalctl
        self.identifier = identifier
        self.cursor: str | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task | None = None
        self.forged = 0

    def position(self) -> dict[str, Any]:
        return {"backend": "journald", "cursor": self.cursor}

    @staticmethod
    def written_by_pluto(entry: dict[str, Any]) -> bool:
        """journald's trusted fields (the sender cannot set those starting with _)."""
        if entry.get("_SYSTEMD_UNIT") == "ipsec.service" and entry.get("_UID") == "0":
            return True
        return entry.get("_UID") == "0" and entry.get("_COMM") == "pluto"

    def argv(self) -> list[str]:
        args = [self.journalctl, "--output=json", "--follow", "--no-pager",
                f"SYSLOG_IDENTIFIER={self.identifier}"]
        args += [f"--after-cursor={self.cursor}"] if self.cursor else ["--lines=0"]
        return args

    @staticmethod
    def message_of(entry: dict[str, Any]) -> str | None:
        """MESSAGE is a string, or a list of byte values when it is not UTF-8."""
        msg = entry.get("MESSAGE")
        if isinstance(msg, list):
            try:
                return bytes(msg).decode("utf-8", "replace")
            except (TypeError, ValueError):
                return None
        return msg if isinstance(msg, str) else None

    async def start(self, sink: LineSink, pos: dict[str, Any] | None) -> None:
        if pos and pos.get("backend") == "journald":
            self.cursor = pos.get("cursor")
        if not shutil.which(self.journalctl):
            log.error("journalctl not found: cannot follow pluto's journal")
            return
        self._task = asyncio.get_running_loop().create_task(self._run(sink))

    async def _run(self, sink: LineSink) -> None:
        while True:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                limit=4 * MAX_LINE)
            assert self.proc.stdout is not None
            while True:
                try:
                    raw = await self.proc.stdout.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    log.warning("journal entry too long; skipped")
                    continue
                if not raw:
                    break
                try:
                    entry = json.loads(raw)
                except ValueError:
                    log.warning("journalctl printed a line that is not JSON; skipped")
                    continue
                if not isinstance(entry, dict):
                    continue
                msg = self.message_of(entry)
                if isinstance(entry.get("__CURSOR"), str):
                    self.cursor = entry["__CURSOR"]
                if msg is None:
                    continue
                if not self.written_by_pluto(entry):
                    self.forged += 1
                    if self.forged == 1 or self.forged % 100 == 0:
                        log.warning("journal entry tagged %s but written by uid %s (%s), not "
                                    "pluto: ignored (%d so far)", self.identifier,
                                    entry.get("_UID"), entry.get("_COMM"), self.forged)
                    continue
                sink([msg], True)
            rc = await self.proc.wait()
            err = (await self.proc.stderr.read()).decode(errors="replace").strip() \
                if self.proc.stderr else ""
            log.error("journalctl exited (rc %s%s); restarting in 5 s", rc,
                      f": {err}" if err else "")
            await asyncio.sleep(5)

    def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self.proc and self.proc.returncode is None:
            self.proc.kill()

    async def aclose(self) -> None:
        """Stop and reap journalctl, so no transport outlives the loop."""
        self.stop()
        if self.proc is not None:
            await self.proc.wait()
            if self._task:
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
                except Exception:
                    log.exception("the journal follower failed while stopping")


def make_follower(spec: str) -> FileFollower | JournalFollower:
    """`journald` (or `journal`) selects the journal; anything else is a file path."""
    return JournalFollower() if spec in ("journald", "journal") else FileFollower(spec)

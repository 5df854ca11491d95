"""The spool (hook records) and the state file: the daemon's durable edge.

Strategy (crash safety without a write per record):
- The hook renames complete records into the spool; names sort in arrival
  order (`<13-digit seq>-<pid>.rec`). Dotfiles are the hook's temp files.
- The daemon applies records in memory and keeps the files. A checkpoint writes
  the SA database plus the names of the records it includes ("applied") to
  state.json atomically (temp file, fsync, rename), and only then unlinks those
  records. After `kill -9` at any point, the state file and the spool together
  hold every record exactly once: records named in "applied" are deleted
  without being applied again, the rest are applied.
- A record that cannot be parsed is moved to spool/bad/ and logged: kept for
  the operator, never silently dropped, never retried forever.
"""
from __future__ import annotations

import fcntl
import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RecordError, SpoolError, StateError
from .protocol.record import MAX_RECORD

__all__ = ["Spool", "StateFile", "RECORD_SUFFIX", "order"]

RECORD_SUFFIX = ".rec"
STATE_VERSION = 1


@dataclass
class Spool:
    path: Path

    def ensure(self) -> None:
        """Create the spool (mode 0700) and its bad/ folder if missing, and refuse one
        that others could write into (SpoolError)."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.check()
        (self.path / "bad").mkdir(mode=0o700, exist_ok=True)

    def check(self) -> None:
        """Trust model: only root (pluto) and the daemon's own user may write the spool."""
        st = os.lstat(self.path)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise SpoolError(f"spool {self.path} is not a directory (a symlink?); refusing it")
        if st.st_uid not in (0, os.geteuid()):
            raise SpoolError(f"spool {self.path} is owned by uid {st.st_uid}, not root or "
                             f"uid {os.geteuid()}; anyone owning it could forge SAs")
        if st.st_mode & 0o022:
            raise SpoolError(f"spool {self.path} is writable by group or others (mode "
                             f"{stat.S_IMODE(st.st_mode):04o}); chmod 0700 it")

    def pending(self) -> list[str]:
        """Record names in arrival order."""
        with os.scandir(self.path) as it:
            names = [e.name for e in it if e.name.endswith(RECORD_SUFFIX)
                     and not e.name.startswith(".")]
        names.sort(key=order)
        return names

    def read(self, name: str) -> tuple[bytes, float]:
        """Record bytes and the time the hook wrote them (when pluto reported).

        Regular files only, never through a symlink, never blocking (a FIFO named
        *.rec), and at most MAX_RECORD + 1 bytes (a link to /dev/zero, a huge file).

        Raises:
            RecordError: not a regular file, or too large.
            OSError: as open/read raise it (EMFILE and friends mean: later).
        """
        fd = os.open(f"{self.path}/{name}",
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise RecordError(f"{name} is not a regular file")
            if st.st_size > MAX_RECORD:
                raise RecordError(f"{name} is {st.st_size} bytes (at most {MAX_RECORD})")
            # ask for what fstat said plus one byte: a read of MAX_RECORD + 1 allocated a
            # 1 MiB buffer per record (a storm's system time); a regular file reads short
            # only at its end, so one read usually does it
            chunks, size, want = [], 0, min(st.st_size, MAX_RECORD) + 1
            while size <= MAX_RECORD:
                chunk = os.read(fd, want)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if len(chunk) < want:
                    break
                want = MAX_RECORD + 1 - size
            if size > MAX_RECORD:
                raise RecordError(f"{name} grew beyond {MAX_RECORD} bytes")
            return b"".join(chunks), st.st_mtime
        finally:
            os.close(fd)

    def remove(self, names: list[str]) -> None:
        for name in names:
            try:
                os.unlink(self.path / name)
            except FileNotFoundError:
                pass

    def set_aside(self, name: str) -> Path:
        """Move an unparseable record to bad/ for the operator."""
        dest = self.path / "bad" / name
        os.replace(self.path / name, dest)
        return dest


def order(name: str) -> tuple[int, str]:
    head = name.split("-", 1)[0]
    return (int(head) if head.isdigit() else 0, name)


@dataclass
class StateFile:
    path: Path
    # injected so tests can play a full disk (short writes, ENOSPC)
    write: Callable[[int, memoryview], int] = field(default=os.write, repr=False)

    def lock(self) -> int:
        """flock STATE_DIR/lock before touching the spool or a socket: a second daemon on
        the same state would consume records, and take sockets over. Returns the fd."""
        d = self.path.parent
        d.mkdir(mode=0o750, parents=True, exist_ok=True)
        fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateError(f"{d} is in use by another nhrpbridge (its lock file is held)") \
                from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def load(self) -> tuple[dict[str, Any] | None, set[str]]:
        """Return (database state, applied record names); (None, set()) if absent.

        Raises:
            StateError: written by a newer nhrpbridge (refuse to start, touch nothing).
            ValueError: the file exists but is not a state file we can read.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None, set()
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: not a state file (a JSON {type(data).__name__})")
        version = data.get("version")
        if isinstance(version, int) and not isinstance(version, bool) and version > STATE_VERSION:
            raise StateError(f"{self.path} was written by a newer nhrpbridge (state version "
                             f"{version}, this one reads {STATE_VERSION}); upgrade nhrpbridge "
                             "or move the file away to start empty")
        if version != STATE_VERSION:
            raise ValueError(f"{self.path}: not a version {STATE_VERSION} state file")
        db, extra, applied = data.get("db"), data.get("extra", {}), data.get("applied", [])
        if not isinstance(db, dict) or not isinstance(extra, dict) or not isinstance(applied, list) \
                or not all(isinstance(n, str) for n in applied):
            raise ValueError(f"{self.path}: db, extra or applied has the wrong type")
        db["extra"] = extra
        return db, set(applied)

    def save(self, db_json: str, applied: list[str], extra: dict[str, Any] | None = None) -> None:
        """Write atomically: temp file, fsync, rename, fsync the directory.

        `db_json` is the database snapshot as JSON text (SaDatabase.to_state_json).
        """
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        payload = (f'{{"version":{STATE_VERSION},"db":{db_json},'
                   f'"extra":{json.dumps(extra or {}, separators=(",", ":"))},'
                   f'"applied":{json.dumps(applied)}}}').encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(payload)
            while view:                      # a full disk gives short writes, then ENOSPC
                view = view[self.write(fd, view):]
            os.fsync(fd)
            if os.fstat(fd).st_size != len(payload):
                raise OSError(f"{tmp}: {os.fstat(fd).st_size} of {len(payload)} bytes on disk")
        except BaseException:
            os.close(fd)
            os.unlink(tmp)                   # the old state file stays as it was
            raise
        os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def quarantine(self) -> Path:
        """Move a damaged state file aside so the daemon can start afresh; every damaged
        copy is kept (`state.json.corrupt-<unix time>[-N]`), none overwrites another."""
        stamp = int(time.time())
        for n in range(1000):
            dest = self.path.with_name(f"{self.path.name}.corrupt-{stamp}" + (f"-{n}" if n else ""))
            try:
                os.link(self.path, dest)     # fails if dest exists: no copy is overwritten
            except FileExistsError:
                continue
            os.unlink(self.path)
            return dest
        raise OSError(f"{self.path}: too many damaged copies kept beside it")

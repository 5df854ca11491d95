"""From the spool to the database: read records in order, decode, apply, set bad ones aside.

Strategy:
- The hook writes one record per updown call (spool.py); inotify names new files
  (sources/watch.py), a poll every few seconds is the safety net. A pass reads the
  named files (or the whole spool when polling) in name order, which is the hooks'
  order of arrival.
- A record still being written (no trailer yet) holds back itself and every later
  one, so the order is kept; after INCOMPLETE_GRACE seconds of the monotonic clock
  its writer is taken for dead and the record goes to spool/bad/.
- Any record that cannot be used (not a regular file, too large, bad quoting, a
  crafted value that breaks the parser) goes to spool/bad/ and nothing else is
  affected; out of descriptors or memory, it is simply read again later.
- Applied records stay in the spool until a checkpoint has recorded them in
  state.json (`pending`, then `checkpointed()`): kill -9 anywhere loses nothing and
  applies nothing twice.
"""
from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from typing import Any

from .errors import RecordError
from .protocol.record import decode_record, is_complete
from .sa import ChildDown, Event
from .sources.watch import OVERFLOW
from .spool import RECORD_SUFFIX, Spool
from .spool import order as spool_order
from .updown import parse_updown_env

__all__ = ["BATCH", "INCOMPLETE_GRACE", "Ingestor"]

log = logging.getLogger("nhrpbridge")
INCOMPLETE_GRACE = 10.0      # a record still without its trailer after this: writer died
BATCH = 256                  # records applied before yielding to the loop, so clients read
                             # while a storm is ingested
# a record that cannot be read for these reasons is fine: read it again later
_TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR})
Apply = Callable[[Any, float], list[Event]]


class Ingestor:
    def __init__(self, spool: Spool, apply: Apply, monotonic: Callable[[], float],
                 wake: asyncio.Event, stats: dict[str, int]):
        self.spool = spool
        self.apply = apply
        # the pluto controller's: True = this record and the later ones wait; it calls
        # its second argument when they may go on
        self.hold_back: Callable[[Any, Callable[[], None]], bool] = lambda _c, _w: False
        self.monotonic = monotonic
        self.wake = wake
        self.stats = stats
        self.named: set[str] = set()          # files inotify reported since the last pass
        self.pending: list[str] = []          # applied, not yet in state.json
        self._on_disk: set[str] = set()       # ... the same, as a set
        self._blocked: list[str] = []         # a record being written and those after it
                                              # (or beyond a pass's limit), in order
        self._incomplete: dict[str, float] = {}   # record name -> monotonic first sight

    def backlog(self) -> int:
        """Records in the spool not applied yet (metrics; a directory scan)."""
        return sum(name not in self._on_disk for name in self.spool.pending())

    def take_pending(self) -> list[str]:
        """The applied records a checkpoint is about to include."""
        names, self.pending = self.pending, []
        return names

    def checkpointed(self, names: list[str]) -> None:
        """Those records are in state.json and unlinked."""
        self._on_disk.difference_update(names)

    def give_back(self, names: list[str]) -> None:
        """A checkpoint failed: those records are still pending, before any newer."""
        self.pending = names + self.pending

    def once(self, full: bool = True, limit: int | None = None) -> int:
        """Apply every record in the spool not applied yet; return how many.

        `full=False` looks only at the files inotify named since the last pass (plus
        one still being written), instead of scanning the whole spool: a scan per
        wake made latency grow with the spool (measured: p50 8 ms at 2,000 files).
        """
        if full or OVERFLOW in self.named:     # inotify lost events: scan the spool
            names = self.spool.pending()
            self.named.clear()
        else:
            fresh = sorted((n for n in self.named if n.endswith(RECORD_SUFFIX)
                            and not n.startswith(".")), key=spool_order)
            self.named.clear()
            held = self._blocked
            if held and fresh:          # a held record named again (written in parts)
                seen = set(held)
                fresh = [n for n in fresh if n not in seen]
            if held and fresh and spool_order(fresh[0]) < spool_order(held[-1]):
                names = sorted(held + fresh, key=spool_order)     # an older name came late
            else:   # the usual case: no re-sort of a storm's backlog per pass (it sorted
                names = held + fresh    # 30,000 names for every 256 records applied)
        self._blocked = []
        count = 0
        for i, name in enumerate(names):
            if name in self._on_disk:
                continue
            if limit is not None and count >= limit:
                self._blocked = names[i:]   # the rest, in order, on the next pass
                self.wake.set()
                break
            try:
                data, written = self.spool.read(name)
            except FileNotFoundError:
                continue
            except RecordError as exc:           # not a regular file, or too large
                self._set_aside(name, exc)
                continue
            except OSError as exc:
                if exc.errno in _TRANSIENT:
                    log.warning("cannot read spool record %s now (%s); retrying", name, exc)
                    self.stats["record-retries"] = self.stats.get("record-retries", 0) + 1
                    self._blocked = names[i:]
                    break
                self._set_aside(name, exc)
                continue
            if not is_complete(data):
                # the age is measured on the monotonic clock from when we first saw the
                # record: a file mtime in the future (clock stepped back) must not hold
                # every later record back
                first = self._incomplete.setdefault(name, self.monotonic())
                if self.monotonic() - first < INCOMPLETE_GRACE:
                    self._blocked = names[i:]      # keep arrival order, retry soon
                    break
                self._set_aside(name, RecordError(
                    f"incomplete after {INCOMPLETE_GRACE:.0f} s (hook killed?)"))
                continue
            self._incomplete.pop(name, None)
            try:
                env = decode_record(data)
                change = parse_updown_env(env)
            except Exception as exc:  # noqa: BLE001 - RecordError, or what a crafted record raises
                self._set_aside(name, exc)
                continue
            if change is not None and self.hold_back(change, self.wake.set):
                self._blocked = names[i:]           # in order, once the controller says
                break
            try:
                events = self.apply(change, written) if change is not None else []
            except Exception as exc:  # noqa: BLE001 - what a crafted record raises
                self._set_aside(name, exc)
                continue
            self._on_disk.add(name)
            self.pending.append(name)
            count += 1
            self.stats["records"] += 1
            if isinstance(change, ChildDown) and not events:
                log.info("%s for SPIs never announced (%s %s -> %s); reconciliation settles it",
                         env.get("PLUTO_VERB"), change.conn_name, change.local_host,
                         change.remote_host)
        return count

    def _set_aside(self, name: str, exc: BaseException) -> None:
        """One unusable record goes to spool/bad/ and nothing else is affected."""
        self.stats["bad-records"] += 1
        self._incomplete.pop(name, None)
        dest: Any
        try:
            dest = self.spool.set_aside(name)
        except OSError:
            dest = name
        log.error("spool record %s is unusable (%s: %s); kept as %s", name,
                  type(exc).__name__, str(exc)[:200], dest)

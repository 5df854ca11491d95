"""Registration recovery: spokes registered again at once after the hub's nhrpd lost them.

Why: nhrpd forgets every dynamic registration when it loses its VICI session (nhrpd
restarted, or this daemon crashed with no fd store to keep the connection), and the
spokes register again only on their periodic timer: holdtime/3, 40 minutes at nhrpd's
default holdtime of 7200 s. Nothing on the wire makes a spoke register sooner, except
its link to the hub coming up again: nhrpd registers with an NHS as soon as the peer
comes online.

Strategy:
- A registrant is a peer whose registration this node authorized as a hub does it
  (binding type `dynamic`, no NHS entry of its own: `num_nhs=0`); the set is kept in
  state.json, so a crash does not forget it, and it stays one when its link goes down
  here: the link the hub saw die may not be the one the spoke uses (a duplicate IKE SA
  timing out, seen in the lab), and the spoke then never registers again by itself.
  A peer without a live link then, and one terminated that does not register, is watched
  for WATCH_LATER s: if its link is up and it has not registered `grace` s later, it is
  terminated (again, once; a link the hub saw come
  back is not always one the spoke saw go down: in a debian13 lab run the hub's IKE SA
  died by liveness while the spoke's pluto replaced its Child SA on another IKE SA within
  the spoke's replace-hold, and its nhrpd registered again only 124 s later). The set
  keeps the newest MAX_REGISTRANTS peers.
- nhrpd's new session is the moment a connection from nhrpd's user (or root) that was
  not handed over registers for `child-state-installed` (only nhrpd asks for it).
- Once nhrpd is connected to the event socket too (or after EVENT_WAIT), and after
  `grace` seconds more, the registrants that have live links and did not register
  again meanwhile get their IKE SAs terminated, PARALLEL at a time: each spoke's
  nhrpbridge initiates its NHS link again (it is kept wanted) and its nhrpd registers.
  A binding refused because nhrpd's event socket was not back yet would look accepted
  to the spoke (nhrpd answers Success first), hence the wait for the event socket.
- The choice is between a few seconds without the spokes' links and up to 40 minutes
  without their registrations; `vici.recover-registrations: 0` turns it off.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from .bus import Control
from .errors import ControlError
from .sadb import SaDatabase

__all__ = ["EVENT_WAIT", "MAX_REGISTRANTS", "PARALLEL", "WATCH_LATER", "Recovery"]

log = logging.getLogger("nhrpbridge.recovery")
EVENT_WAIT = 30.0       # nhrpd retries its event socket every 10 s; then go anyway
PARALLEL = 8            # terminates at once (each is a few whack calls; a slow pluto
                        # took 10 s for one in the lab: one at a time adds them up)
MAX_REGISTRANTS = 65536  # peers remembered (state.json stays bounded under NBMA churn)
WATCH_LATER = 300.0     # registrants without a live link at the recovery: watched this long
WATCH_STEP = 1.0        # ... looked at this often


class Recovery:
    """The three facts the front-ends report, and the recovery they start."""

    def __init__(self, db: SaDatabase, control: Control, state: dict[str, Any],
                 touch: Callable[[], None], grace: float, event_socket: bool,
                 monotonic: Callable[[], float] = time.monotonic, event_wait: float = EVENT_WAIT):
        self.db = db
        self.control = control
        self.state = state              # persisted with the database: state["registrants"]
        self.touch = touch              # "state changed: checkpoint it"
        self.grace = grace
        self.wait_events = event_socket     # an event socket is configured: wait for nhrpd on it
        self.monotonic = monotonic
        self.event_wait = event_wait
        self.fresh: set[str] = set()     # registered since nhrpd's session began
        self.event_clients = 0
        self._events_back = asyncio.Event()     # set while nhrpd is connected to it
        self._task: asyncio.Task[None] | None = None
        self._later: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(PARALLEL)
        self.stats = {"sessions": 0, "terminated": 0, "failed": 0}

    def registrants(self) -> dict[str, str]:
        """NBMA -> connection (looked up each time: a state load replaces the dict)."""
        regs: dict[str, str] = self.state.setdefault("registrants", {})
        return regs

    def reconfigure(self, grace: float) -> None:
        self.grace = grace

    # ---- what the front-ends report

    def registered(self, nbma: str, connection: str, block: dict[str, str]) -> None:
        """An accepted binding; only a registration with this node as the hub counts."""
        if block.get("type") != "dynamic" or block.get("num_nhs", "0") != "0" or not connection:
            return                          # (no connection: no link to terminate later)
        self.fresh.add(nbma)
        regs = self.registrants()
        if regs.get(nbma) != connection:
            regs.pop(nbma, None)
            regs[nbma] = connection
            while len(regs) > MAX_REGISTRANTS:
                del regs[next(iter(regs))]          # the oldest
            self.touch()

    def event_socket(self, connected: bool) -> None:
        """A connection to nhrpd's event socket began or ended."""
        self.event_clients += 1 if connected else -1
        if self.event_clients > 0:
            self._events_back.set()
        else:
            self._events_back.clear()

    def vici_session(self) -> None:
        """nhrpd's new VICI session: every registration it had is gone."""
        self.stats["sessions"] += 1
        self.fresh.clear()
        for task in (self._task, self._later):
            if task is not None:
                task.cancel()
        if self.grace <= 0 or not self.registrants():
            return
        self._task = asyncio.get_running_loop().create_task(self._recover())

    # ---- the recovery

    def _up(self, nbma: str) -> bool:
        return any(lk.up and lk.remote_host == nbma for lk in self.db.links.values())

    async def _recover(self) -> None:
        t0 = self.monotonic()
        known = len(self.registrants())
        if self.wait_events:
            try:
                await asyncio.wait_for(self._events_back.wait(), self.event_wait)
            except TimeoutError:
                log.warning("registration recovery: nhrpd did not connect to the event socket "
                            "within %.0f s; going on (its bindings may time out)", self.event_wait)
        await asyncio.sleep(self.grace)
        stale = [(nbma, conn) for nbma, conn in sorted(self.registrants().items())
                 if nbma not in self.fresh and self._up(nbma)]
        log.warning("registration recovery: nhrpd has a new VICI session (it lost its "
                    "registrations); of %d peers registered before, %d registered again by "
                    "themselves, %d with live links are terminated so that they register now",
                    known, len(self.fresh), len(stale))
        self._slots = asyncio.Semaphore(PARALLEL)       # (this loop's)
        later = {nbma: conn for nbma, conn in sorted(self.registrants().items())
                 if nbma not in self.fresh and not self._up(nbma)}
        await asyncio.gather(*(self._terminate(nbma, conn) for nbma, conn in stale))
        log.info("registration recovery done %.1f s after nhrpd's new session",
                 self.monotonic() - t0)
        # the terminated too: a spoke whose nhrpd still saw no link go down (a debian12 PSK
        # run: spoke2 had a second Child SA on the link, from a rekey, when its IKE SA went)
        later.update((nbma, conn) for nbma, conn in stale if nbma not in self.fresh)
        if later:
            self._later = asyncio.get_running_loop().create_task(self._watch(later))

    async def _terminate(self, nbma: str, conn: str) -> None:
        async with self._slots:
            if nbma in self.fresh:          # it registered while the others were terminated
                return
            try:
                await self.control.terminate(conn, nbma, None)
                self.stats["terminated"] += 1
                log.info("registration recovery: %s %s terminated", conn, nbma)
            except ControlError as exc:
                self.stats["failed"] += 1
                log.warning("registration recovery: terminating %s %s failed: %s",
                            conn, nbma, exc)

    async def _watch(self, later: dict[str, str]) -> None:
        """Registrants whose link was down at the recovery: one whose link comes up and
        that has not registered `grace` s later is terminated as the others were."""
        deadline, since = self.monotonic() + WATCH_LATER, dict[str, float]()
        while later and self.monotonic() < deadline:
            await asyncio.sleep(WATCH_STEP)
            now = self.monotonic()
            for nbma, conn in list(later.items()):
                if nbma in self.fresh:
                    del later[nbma]
                elif not self._up(nbma):
                    since.pop(nbma, None)
                elif now - since.setdefault(nbma, now) >= self.grace:
                    del later[nbma]
                    log.warning("registration recovery: %s %s: its link is up again and it "
                                "has not registered again", conn, nbma)
                    await self._terminate(nbma, conn)

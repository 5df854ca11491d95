"""Initiate: one attempt per peer however many callers, pluto's own negotiations first.

Strategy:
- Requests for one (profile, local, remote) join one in-flight attempt: one whack
  call however many callers (both spokes of a shortcut ask within 100-300 ms).
- Just before whack runs, `--showstates` is consulted: if pluto already holds a
  half-open state or a Child SA with that peer on *any* conn, we wait for it
  (a second negotiation gets `cannot install eroute -- it is in use` on 4.10).
- A link that comes up by any route (peer-initiated too) satisfies the waiters.
- Fire-and-forget requests (VICI async) are retried on transient failures, and
  answered once the first attempt is done or ACCEPT_WAIT has passed (strongSwan
  answers an async initiate once it found the config): a hundred at once (nhrpd
  after a burst of shortcuts) are all answered within a second.
- Attempts for different peers run side by side, at most PARALLEL at a time (each is
  a few whack calls of 0.05-3 s); one peer still has one attempt at a time.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
from collections.abc import Callable
from typing import Any

from .config import Config
from .errors import ControlError, ErrorCode, PlutoError
from .localnbma import LocalNbma
from .perpeer import PerPeerConns
from .pluto import PlutoState, Result, Whack, check_conn_name, check_ip, per_peer_name
from .sa import Link
from .sadb import SaDatabase
from .wire import link_dict

__all__ = ["ACCEPT_WAIT", "KEEP_MAX", "PARALLEL", "TRANSIENT", "Initiating"]

log = logging.getLogger("nhrpbridge.pluto")
# failures worth retrying: nhrpd itself asks again only after ~2 minutes (FRR 8.4 to 10.3)
KEEP_MAX = 30.0     # the longest wait between two attempts on a link to an NHS
ACCEPT_WAIT = 0.5   # an async initiate is answered by then (success: "initiating")
PARALLEL = 16       # attempts (whack call sequences) running at once
TRANSIENT = frozenset({ErrorCode.PLUTO_NOT_RUNNING, ErrorCode.PLUTO_NOT_READY, ErrorCode.TIMEOUT,
                       ErrorCode.WHACK_ERROR})


def _higher(local: str | None, remote: str) -> bool:
    """Is our address the higher one (then we let the peer initiate a shortcut)?"""
    if local is None:
        return False
    a, b = ipaddress.ip_address(local), ipaddress.ip_address(remote)
    return (a.version, int(a)) > (b.version, int(b))


def _consume(task: asyncio.Task) -> None:
    """Retrieve a background attempt's outcome so asyncio does not log it as lost."""
    if not task.cancelled():
        task.exception()
    first = getattr(task, "first", None)
    if first is not None and first.done() and not first.cancelled():
        first.exception()


class Initiating:
    """The initiate half of the pluto controller (control.py), which provides these."""

    cfg: Config
    db: SaDatabase
    whack: Whack
    clock: Callable[[], float]
    shortcut_yield: float
    retry_first: float           # the first wait before retrying a transient failure
    per_peer: PerPeerConns
    local_nbma: LocalNbma
    slots: asyncio.Semaphore     # PARALLEL attempts at a time
    accept_wait: float           # ACCEPT_WAIT
    stats: dict[str, int]
    inflight: dict[tuple[str, str | None, str], asyncio.Task[str]]
    waiters: list[tuple[str, str, str | None, asyncio.Future[Link]]]

    async def call(self, argv: list[str], what: str, timeout: float | None = None) -> Result:
        raise NotImplementedError

    async def states(self) -> list[PlutoState]:
        raise NotImplementedError

    async def detect_version(self) -> None:
        raise NotImplementedError

    async def _quiet_reconcile(self) -> None:
        raise NotImplementedError

    def keeps(self, conn: str, remote: str) -> bool:
        raise NotImplementedError

    def want(self, conn: str, remote: str) -> None:
        raise NotImplementedError


    def _link_up(self, conn: str, remote: str, local: str | None) -> Link | None:
        held = self.db.held            # ended in pluto, waiting for a replacement (sadb)
        links = [lk for lk in self.db.find_link(conn, remote, local)
                 if any(c not in held for c in lk.children)]
        return links[0] if links else None

    async def initiate(self, conn: str, remote: str, local: str | None = None,
                       timeout: float | None = None, wait: bool = True,
                       shortcut: bool = False) -> dict[str, Any]:
        """Bring up the link (conn, local, remote); reply when it is up or failed.

        `shortcut`: both ends are being asked at once (nhrpd's init-limits=1); the
        end with the higher address lets the other one go first (see _yield_to_peer).
        """
        check_conn_name(conn)
        remote = check_ip(remote)
        if local is not None:
            local = check_ip(local)
        self.want(conn, remote)
        if (link := self._link_up(conn, remote, local)) is not None:
            return {"result": "already-up", "link": link_dict(link)}
        key = (conn, local, remote)
        timeout = self.cfg.initiate_timeout if timeout is None else float(timeout)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self.waiters.append((conn, remote, local, fut))
        try:
            task = self.inflight.get(key)
            if task is None:
                first: asyncio.Future = loop.create_future()
                # only fire-and-forget requests (VICI async: nhrpd cannot hear about a
                # failure in time) are retried; a waiting caller gets the error at once
                task = loop.create_task(self._start_retrying(
                    conn, remote, local, first, retry=not wait,
                    yield_first=shortcut and _higher(local, remote)))
                task.first = first                   # type: ignore[attr-defined]
                self.inflight[key] = task
                task.add_done_callback(lambda _t, k=key: self.inflight.pop(k, None))  # type: ignore[misc]
                task.add_done_callback(_consume)
            else:
                self.stats["joined"] += 1
            if not wait:
                # answer after the first attempt (or ACCEPT_WAIT); retries of a transient
                # failure go on in the background (a VICI client must not wait for them)
                try:
                    return {"result": await asyncio.wait_for(
                        asyncio.shield(task.first), self.accept_wait)}  # type: ignore[attr-defined]
                except TimeoutError:
                    return {"result": "initiating"}
            try:                                    # raises PlutoError if whack failed
                how = await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                raise ControlError(f"initiating {conn} to {remote} did not finish within "
                                   f"{timeout:g} s", ErrorCode.TIMEOUT) from None
            try:
                came_up: Link = await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                raise ControlError(f"link {conn} to {remote} not up after {timeout:g} s",
                                   ErrorCode.TIMEOUT) from None
            return {"result": "up", "how": how, "link": link_dict(came_up)}
        finally:
            self.waiters.remove((conn, remote, local, fut))

    async def _start_retrying(self, conn: str, remote: str, local: str | None,
                              first: asyncio.Future, retry: bool = True,
                              yield_first: bool = False) -> str:
        """`_start`, retried on transient failures for `initiate-retry` seconds (for ever,
        backing off to KEEP_MAX, for a link to an NHS nhrpd wants: see control.keeps)."""
        keep = retry and self.keeps(conn, remote)
        deadline = math.inf if keep else self.clock() + (self.cfg.initiate_retry if retry else 0)
        if yield_first:
            if not first.done():
                first.set_result("yielding-to-peer")
            if await self._yield_to_peer(conn, remote, local):
                return "joined-peer"
        delay = self.retry_first
        while True:
            try:
                async with self.slots:
                    how = await self._start(conn, remote, local)
            except PlutoError as exc:
                if exc.code not in TRANSIENT or self.clock() + delay > deadline \
                        or self._link_up(conn, remote, local) is not None:
                    if not first.done():
                        first.set_exception(exc)
                    raise
                log.warning("initiate %s -> %s: %s; retrying in %g s", conn, remote, exc, delay)
                if not first.done():
                    first.set_result("retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, KEEP_MAX if keep else 8.0)
                continue
            if not first.done():
                first.set_result(how)
            return how

    async def _start(self, conn: str, remote: str, local: str | None) -> str:
        """One attempt per key: race check, per-peer conn, race check again, initiate."""
        self.stats["initiates"] += 1
        await self.detect_version()
        left = await self.local_nbma.left_for(local)   # before the busy check: a moved
        name = per_peer_name(conn, remote) if self._per_peer(conn) else conn   # address
        if await self._peer_busy(conn, remote, local, name):     # leaves stale states
            return "joined-pluto-state"
        if self._per_peer(conn):
            await self.per_peer.ensure(conn, remote, name, left)
            # addconn took 0.2-3 s in the lab: the peer's own negotiation may have
            # started meanwhile (seen: "cannot install eroute -- it is in use" and a
            # one-sided IKE delete when we went ahead); look again just before whack
            if await self._peer_busy(conn, remote, local, name):
                return "joined-pluto-state"
            try:
                await self.call(self.whack.initiate(name), f"whack --initiate {name}")
            except PlutoError as exc:
                if exc.code != ErrorCode.UNKNOWN_CONNECTION:
                    raise
                # pluto restarted and forgot our per-peer conns: add it again, once
                log.info("pluto no longer knows %s (restarted?); adding it again", name)
                self.per_peer.forget(name)
                await self.per_peer.ensure(conn, remote, name, left)
                await self.call(self.whack.initiate(name), f"whack --initiate {name}")
        else:
            await self.call(self.whack.initiate(conn, remote), f"whack --initiate {conn}")
        log.info("initiate %s -> %s: whack --initiate --name %s sent", conn, remote, name)
        return "initiated"

    async def _yield_to_peer(self, conn: str, remote: str, local: str | None) -> bool:
        """Give the lower-address end `shortcut_yield` seconds to start the negotiation.

        Both spokes of a shortcut are asked within 100-300 ms of each other; if both
        initiate, libreswan 4.10 kills one IKE SA on one side only and the shortcut
        flaps or is blackholed (lab run: liveness timeout 10 s later, nhrpd purged the
        shortcut). A deterministic order removes the race; the wait is bounded, so a
        peer that never starts costs those seconds, not the link.
        """
        end = self.clock() + self.shortcut_yield
        name = per_peer_name(conn, remote)
        while self.clock() < end:
            if self._link_up(conn, remote, local) is not None:
                return True
            try:
                states = await self.states()
            except PlutoError:
                return False
            if any(s.peer == remote or s.conn == name for s in states):
                log.info("initiate %s -> %s: the peer started first; waiting for it", conn, remote)
                self.stats["yielded"] = self.stats.get("yielded", 0) + 1
                return True
            await asyncio.sleep(0.25)
        log.info("initiate %s -> %s: the peer did not start within %g s; initiating", conn,
                 remote, self.shortcut_yield)
        return False

    async def _peer_busy(self, conn: str, remote: str, local: str | None, name: str) -> bool:
        """Is a negotiation or SA with this peer already there (ours or the peer's)?"""
        if self._link_up(conn, remote, local) is not None:
            return True
        states = await self.states()
        # a per-peer conn's states are this peer's; a template's (--remote-host) are
        # everybody's: only the peer address tells those apart
        busy = [s for s in states if (s.peer == remote or (name != conn and s.conn == name))
                and (not s.established or s.is_child)]
        if busy:
            self.stats["skipped-race"] += 1
            log.info("initiate %s -> %s: pluto already has %s; waiting for it", conn, remote,
                     ", ".join(f"#{s.serial} {s.name}" for s in busy[:3]))
            task = asyncio.get_running_loop().create_task(self._quiet_reconcile())
            task.add_done_callback(_consume)
            return True
        return False

    def _per_peer(self, conn: str) -> bool:
        mode = self.cfg.connections[conn].per_peer if conn in self.cfg.connections else "auto"
        # auto: per-peer on every version. The lab's `whack` scenario runs --remote-host on
        # libreswan 5.2: the SA comes up, but `whack --remote-host X --initiate
        # --asynchronous` did not return within 10 s there; per-peer conns return at once
        return mode != "no"

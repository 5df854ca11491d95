"""Initiate, terminate and reconcile: pluto is the truth, one request per peer at a time.

Strategy (what nhrpd over libreswan needs):
- Requests for one (profile, local, remote) join one in-flight attempt: one whack
  call however many callers (both spokes of a shortcut ask within 100-300 ms).
- Just before whack runs, `--showstates` is consulted: if pluto already holds a
  half-open state or a Child SA with that peer on *any* conn, we wait for it
  (a second negotiation gets `cannot install eroute -- it is in use` on 4.10).
- A link that comes up by any route (peer-initiated too) satisfies the waiters.
- Peers are initiated through per-peer conns (perpeer.py) unless a profile says
  `per-peer: "no"` (then the template with `--remote-host`).
- Reconciliation replaces the hook's partial view with pluto's own at start, every
  `reconcile-interval` s, after each initiate/terminate and on `resync`. "Pluto is
  not running" means no SAs; any other whack failure changes nothing.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import Config
from .errors import ControlError, ErrorCode, PlutoError
from .perpeer import PerPeerConns
from .pluto import (
    PlutoState,
    Result,
    Runner,
    Whack,
    check_conn_name,
    check_ip,
    error_for,
    parse_showstates,
    parse_trafficstatus,
    parse_version,
    per_peer_name,
    pluto_view,
    reply_code,
    subprocess_runner,
)
from .sa import Event, Link, Reconcile
from .sadb import SaDatabase
from .wire import link_dict

__all__ = ["TRANSIENT", "PlutoController"]

log = logging.getLogger("nhrpbridge.pluto")
# failures worth retrying: nhrpd itself asks again only after ~2 minutes (FRR 8.4 to 10.3)
TRANSIENT = frozenset({ErrorCode.PLUTO_NOT_RUNNING, ErrorCode.PLUTO_NOT_READY, ErrorCode.TIMEOUT,
                       ErrorCode.WHACK_ERROR})
SHORTCUT_YIELD = 3.0       # see _yield_to_peer
RECONCILE_GRACE = 10.0     # see sadb.Reconcile: whack lags the updown hook


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


class PlutoController:
    """The control interface (initiate, terminate, reconcile) over whack; also a sink
    (a link that comes up satisfies waiting initiates).

    Args:
        db: the SA database, read only here.
        apply: how a reconciled view reaches the database (and is published).
        state: a dict persisted with the database (per-peer conns are kept there).
    """

    def __init__(self, cfg: Config, db: SaDatabase, apply: Callable[[Any], list[Event]],
                 state: dict[str, Any], whack: Whack, run: Runner = subprocess_runner,
                 clock: Callable[[], float] = time.monotonic,
                 shortcut_yield: float = SHORTCUT_YIELD):
        self.cfg = cfg
        self.db = db
        self.apply = apply
        self.state = state
        self.shortcut_yield = shortcut_yield
        self.whack = whack
        self.run_cmd = run
        self.clock = clock
        self.version_known = self.cfg.libreswan_version != "auto"
        if self.version_known:
            whack.version = (int(self.cfg.libreswan_version), 0)
        self.inflight: dict[tuple[str, str | None, str], asyncio.Task] = {}
        self.waiters: list[tuple[str, str, str | None, asyncio.Future]] = []
        self.per_peer = PerPeerConns(Path(cfg.state_dir) / "peers.conf", cfg.ipsec_conf, whack,
                                     self.call, state)
        self.stats = {"whack-calls": 0, "initiates": 0, "joined": 0, "skipped-race": 0}

    # ---- running whack

    async def call(self, argv: list[str], what: str, timeout: float | None = None) -> Result:
        self.stats["whack-calls"] += 1
        log.debug("running %s", argv)
        result = await self.run_cmd(argv, timeout or self.cfg.whack_timeout)
        if reply_code(result) != 0:
            raise error_for(result, what)
        return result

    async def states(self) -> list[PlutoState]:
        return parse_showstates((await self.call(self.whack.showstates(),
                                                 "whack --showstates")).stdout)

    async def detect_version(self) -> None:
        if self.version_known:
            return
        result = await self.run_cmd([self.whack.ipsec, "--version"], self.cfg.whack_timeout)
        self.whack.version = parse_version(result.stdout + result.stderr)
        self.version_known = True
        log.info("libreswan %d.%d", *self.whack.version)

    # ---- reconciliation

    async def view(self) -> Reconcile:
        states = await self.call(self.whack.showstates(), "whack --showstates")
        traffic = await self.call(self.whack.trafficstatus(), "whack --trafficstatus")
        hint = {c.conn_name: c.local_host for c in self.db.child_sas.values()}
        return pluto_view(parse_showstates(states.stdout), parse_trafficstatus(traffic.stdout), hint)

    async def reconcile(self) -> dict[str, Any]:
        try:
            await self.detect_version()
            view = await self.view()
        except PlutoError as exc:
            if exc.code != ErrorCode.PLUTO_NOT_RUNNING:
                raise
            log.warning("pluto is not running: no SA can exist")
            view = Reconcile((), ())        # no grace: nothing can be up without pluto
        else:
            view = Reconcile(view.ike_sas, view.child_sas, grace=RECONCILE_GRACE)
        events = self.apply(view)
        if events:
            log.info("reconciled with pluto: %d changes", len(events))
        return {"reconciled": True, "changes": len(events), "seq": self.db.seq}

    # ---- events from the daemon (we are a sink)

    def push_event(self, ev: Event) -> None:
        if ev.kind not in ("link-up", "link-down") or ev.link is None:
            return
        link = ev.link
        for pp in self.per_peer.of(link.connection, link.remote_host):
            pp.down_since = None if ev.kind == "link-up" else self.clock()
        if ev.kind != "link-up":
            return
        for waiter in list(self.waiters):
            conn, remote, local, fut = waiter
            if conn == link.connection and remote == link.remote_host \
                    and local in (None, link.local_host) and not fut.done():
                fut.set_result(link)

    def push_notice(self, msg: dict[str, Any]) -> None:
        pass

    # ---- initiate

    def _link_up(self, conn: str, remote: str, local: str | None) -> Link | None:
        links = [lk for lk in self.db.find_link(conn, remote, local) if lk.up]
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
                # answer after the first attempt; retries of a transient failure go on
                # in the background (a VICI client's queue must not wait for them)
                return {"result": await asyncio.shield(task.first)}   # type: ignore[attr-defined]
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
        """`_start`, retried on transient failures for `initiate-retry` seconds."""
        deadline = self.clock() + (self.cfg.initiate_retry if retry else 0)
        if yield_first:
            if not first.done():
                first.set_result("yielding-to-peer")
            if await self._yield_to_peer(conn, remote, local):
                return "joined-peer"
        delay = 1.0
        while True:
            try:
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
                delay = min(delay * 2, 8.0)
                continue
            if not first.done():
                first.set_result(how)
            return how

    async def _start(self, conn: str, remote: str, local: str | None) -> str:
        """One attempt per key: race check, per-peer conn, race check again, initiate."""
        self.stats["initiates"] += 1
        await self.detect_version()
        name = per_peer_name(conn, remote) if self._per_peer(conn) else conn
        if await self._peer_busy(conn, remote, local, name):
            return "joined-pluto-state"
        if self._per_peer(conn):
            await self.per_peer.ensure(conn, remote, name)
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
                await self.per_peer.ensure(conn, remote, name)
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

    async def _quiet_reconcile(self) -> None:
        try:
            await self.reconcile()
        except PlutoError as exc:
            log.warning("reconciliation failed: %s", exc)

    # ---- terminate

    async def terminate(self, conn: str, remote: str | None = None,
                        ike_id: int | None = None) -> dict[str, Any]:
        """Tear down a connection, one peer of it, or one IKE SA; leave it down."""
        check_conn_name(conn)
        await self.detect_version()
        calls: list[list[str]] = []
        if ike_id is not None:
            ike = self.db.ike_sas.get(ike_id)
            if ike is None or ike.connection != conn:
                raise ControlError(f"no IKE SA {ike_id} on {conn}", ErrorCode.UNKNOWN_SA)
            if ike.serial is None:
                await self.reconcile()
                ike = self.db.ike_sas.get(ike_id)
                if ike is None or ike.serial is None:
                    raise ControlError(f"IKE SA {ike_id} has no pluto serial yet",
                                       ErrorCode.UNKNOWN_SA)
            calls.append(self.whack.delete_ike(ike.serial))
        elif remote is not None:
            remote = check_ip(remote)
            name = per_peer_name(conn, remote)
            if name in self.per_peer.conns:
                calls.append(self.whack.terminate_conn(name))     # clears UP: no revival
            for s in await self.states():
                if s.peer == remote and not s.is_child and s.conn != name:
                    calls.append(self.whack.delete_ike(s.serial))
        else:
            calls.append(self.whack.terminate_conn(conn))
            calls += [self.whack.terminate_conn(n) for n, p in self.per_peer.conns.items()
                      if p.profile == conn]
        for argv in calls:
            await self.call(argv, " ".join(argv[2:]))
        await self._quiet_reconcile()
        return {"terminated": len(calls)}

    # ---- background duties

    async def run(self) -> None:
        """Periodic reconciliation and per-peer conn clean-up."""
        interval = self.cfg.reconcile_interval
        while True:
            await asyncio.sleep(interval if interval > 0 else 3600)
            if interval > 0:
                await self._quiet_reconcile()
            await self.expire_per_peer()

    async def expire_per_peer(self) -> None:
        await self.per_peer.expire(self.clock(), self.cfg.per_peer_idle,
                                   lambda profile, remote: self._link_up(profile, remote, None)
                                   is not None)

    def restore(self, saved: dict[str, list[str]] | None) -> None:
        self.per_peer.restore(saved)

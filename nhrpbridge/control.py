"""Initiate, terminate and reconcile: pluto is the truth, one request per peer at a time.

Strategy (what nhrpd over libreswan needs):
- Initiates (initiate.py) join one attempt per peer and wait for pluto's own
  negotiations; a link that comes up by any route satisfies the waiters.
- Peers are initiated through per-peer conns (perpeer.py) unless a profile says
  `per-peer: "no"` (then the template with `--remote-host`).
- Links to the node's NHS (node.nhs) that nhrpd asked for are kept: their per-peer
  conns never expire, and when such a link goes down nhrpbridge initiates it again,
  backing off to 30 s, until it is up or terminated (nhrpd >= 10.1 asks again only
  every holdtime/4, 30 minutes by default).
- Reconciliation replaces the hook's partial view with pluto's own at start, every
  `reconcile-interval` s, after each initiate/terminate and on `resync`. "Pluto is
  not running" means no SAs; any other whack failure changes nothing.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import Config
from .errors import ControlError, ErrorCode, PlutoError
from .initiate import ACCEPT_WAIT, KEEP_MAX, PARALLEL, TRANSIENT, Initiating
from .localnbma import LocalNbma
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
from .sa import ChildUp, Event, Reconcile
from .sadb import SaDatabase

__all__ = ["TRANSIENT", "PlutoController"]

log = logging.getLogger("nhrpbridge.pluto")
SHORTCUT_YIELD = 3.0       # see _yield_to_peer
KEEP_FIRST = 2.0           # a kept link that went down: first attempt after this
REPLACE_FIRST = 0.5        # ... whose last Child SA ended (held): pluto may replace it at once
RECONCILE_GRACE = 10.0     # see sadb.Reconcile: whack lags the updown hook
TERMINATE_CONFIRM = 8.0    # see _force_gone
RECHECK_HELD = 1.0         # see _recheck_held


class PlutoController(Initiating):
    """Initiate, terminate, reconcile over whack; a sink (links coming up satisfy waiting
    initiates). `db` is read only; `apply` takes a reconciled view to the database;
    `state` is persisted with it (per-peer conns)."""

    def __init__(self, cfg: Config, db: SaDatabase, apply: Callable[[Any], list[Event]],
                 state: dict[str, Any], whack: Whack, run: Runner = subprocess_runner,
                 clock: Callable[[], float] = time.monotonic,
                 shortcut_yield: float = SHORTCUT_YIELD, keep_first: float = KEEP_FIRST,
                 accept_wait: float = ACCEPT_WAIT, parallel: int = PARALLEL):
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
        self.local_nbma = LocalNbma(cfg.node, cfg.source, cfg.ipsec_conf, whack, self.call,
                                    self.per_peer, state)
        self.stats = {"whack-calls": 0, "whack-failures": 0, "initiates": 0, "joined": 0,
                      "skipped-race": 0, "reconcile-changes": 0}
        self.last_reconcile = 0.0            # Unix time of the last successful one
        self._keepers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.keep_first = keep_first
        self.retry_first = 1.0
        self.slots = asyncio.Semaphore(parallel)
        self.accept_wait = accept_wait
        self._states: asyncio.Task[list[PlutoState]] | None = None
        self.terminate_confirm = TERMINATE_CONFIRM
        self._recheck: asyncio.Task[None] | None = None
        self._rechecked: set[int] = set()      # held Child SAs a reconciliation looked at
        self._wake_ingest: Callable[[], None] = lambda: None

    def reconfigure(self, cfg: Config) -> None:
        """A reload: timeouts, per-peer modes and the libreswan version take effect now."""
        self.cfg = cfg
        self.local_nbma.node, self.local_nbma.source = cfg.node, cfg.source
        self.version_known = cfg.libreswan_version != "auto"
        if self.version_known:
            self.whack.version = (int(cfg.libreswan_version), 0)

    # ---- running whack

    async def call(self, argv: list[str], what: str, timeout: float | None = None) -> Result:
        self.stats["whack-calls"] += 1
        log.debug("running %s", argv)
        try:
            result = await self.run_cmd(argv, timeout or self.cfg.whack_timeout)
        except PlutoError:
            self.stats["whack-failures"] += 1
            raise
        if reply_code(result) != 0:
            self.stats["whack-failures"] += 1
            raise error_for(result, what)
        return result

    async def states(self) -> list[PlutoState]:
        """pluto's states; callers at the same time share one `--showstates`."""
        if self._states is None or self._states.done():
            self._states = asyncio.get_running_loop().create_task(self._read_states())
            self._states.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(self._states)

    async def _read_states(self) -> list[PlutoState]:
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
        hint: dict[str, str] = {}
        peers: dict[str, set[str]] = {}
        for c in self.db.child_sas.values():
            hint[c.conn_name] = c.local_host
            peers.setdefault(c.conn_name, set()).add(c.remote_host)
        peer_hint = {conn: next(iter(p)) for conn, p in peers.items() if len(p) == 1}
        return pluto_view(parse_showstates(states.stdout), parse_trafficstatus(traffic.stdout),
                          hint, peer_hint)

    async def reconcile(self) -> dict[str, Any]:
        known = tuple((i.uniqueid, i.serial) for i in self.db.ike_sas.values() if i.serial)
        try:
            await self.detect_version()
            view = await self.view()
        except PlutoError as exc:
            if exc.code != ErrorCode.PLUTO_NOT_RUNNING:
                raise
            log.warning("pluto is not running: no SA can exist")
            view = Reconcile((), ())        # no grace: nothing can be up without pluto
        else:
            view = Reconcile(view.ike_sas, view.child_sas, grace=RECONCILE_GRACE, known=known)
        events = self.apply(view)
        self.stats["reconcile-changes"] += len(events)
        self.last_reconcile = time.time()
        if events:
            log.info("reconciled with pluto: %d changes", len(events))
        return {"reconciled": True, "changes": len(events), "seq": self.db.seq}

    # ---- events from the daemon (we are a sink)

    def push_event(self, ev: Event) -> None:
        # a child-up on a link that is up already: the replacement a waiter may wait for
        if ev.kind not in ("link-up", "link-down", "child-up") or ev.link is None:
            return
        link = ev.link
        for pp in self.per_peer.of(link.connection, link.remote_host):
            pp.down_since = None if ev.kind != "link-down" else self.clock()
        if ev.kind == "link-down":
            self._keep_later(link.connection, link.remote_host)
            return
        for waiter in list(self.waiters):
            conn, remote, local, fut = waiter
            if conn == link.connection and remote == link.remote_host \
                    and local in (None, link.local_host) and not fut.done():
                fut.set_result(link)

    def push_notice(self, msg: dict[str, Any]) -> None:
        """A kept link's last Child SA ended and nothing replaces it yet (the link is held,
        not down: sadb rule 5): bring it back now rather than after the hold."""
        if msg.get("kind") == "replace-wait" and msg.get("remote-host"):
            self._keep_later(msg["connection"], msg["remote-host"], REPLACE_FIRST)
        if msg.get("kind") == "replace-wait" and (self._recheck is None or self._recheck.done()):
            self._recheck = asyncio.get_running_loop().create_task(self._recheck_held())

    async def _recheck_held(self, delay: float = RECHECK_HELD) -> None:
        """A held link whose IKE SA is gone is down for real (the peer deleted it, or pluto
        dropped it): without the log follower only whack says so, and the peer's nhrpd
        re-registers only if it sees its link go down, however fast the new SA comes
        (lab: hub's registration recovery, new SA 4.6 s later, inside the 5 s hold)."""
        await asyncio.sleep(delay)
        looked = set(self.db.held)
        await self._quiet_reconcile()
        self._rechecked = (self._rechecked | looked) & set(self.db.held)
        self._wake_ingest()

    def hold_back(self, change: Any, wake: Callable[[], None]) -> bool:
        """Should the spool wait with this hook record until whack was asked? A hook's new
        Child SA (no serial, no IKE SA) ends a held one as its replacement (sadb rule 5):
        right if pluto replaced it on the same IKE SA, wrong if the IKE SA is gone (the
        peer's nhrpd needs the link down). Without the log only whack tells, and first (a
        debian12 run: whack 1 s late, the new SA 2 s after the hold, spoke2 registered
        again with the hub 55 s late)."""
        held = self.db.held_for(change) if isinstance(change, ChildUp) else set()
        if not held or held <= self._rechecked:
            return False
        self._wake_ingest = wake
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.get_running_loop().create_task(self._recheck_held(0.0))
        return True

    # ---- links to the NHS: kept up while nhrpd wants them

    def keeps(self, conn: str, remote: str) -> bool:
        return f"{conn} {remote}" in self.state.setdefault("wanted", [])

    def want(self, conn: str, remote: str) -> None:
        """nhrpd asked for this link: keep it if the peer is one of our NHS."""
        nhs = self.cfg.node.nhs if self.cfg.node else ()
        wanted = self.state.setdefault("wanted", [])
        if remote in nhs and f"{conn} {remote}" not in wanted:
            wanted.append(f"{conn} {remote}")
            log.info("link %s -> %s (an NHS) is kept up from now on", conn, remote)

    def release(self, conn: str, remote: str | None) -> None:
        """Terminated: no longer kept (remote None: every peer of conn)."""
        self.state["wanted"] = [w for w in self.state.get("wanted", [])
                                if not (w.split()[0] == conn and remote in (None, w.split()[1]))]

    def _keep_later(self, conn: str, remote: str, first: float | None = None) -> None:
        if self.keeps(conn, remote) and (conn, remote) not in self._keepers:
            task = asyncio.get_running_loop().create_task(self._keep(conn, remote, first))
            self._keepers[(conn, remote)] = task
            task.add_done_callback(lambda _t: self._keepers.pop((conn, remote), None))

    async def _keep(self, conn: str, remote: str, first: float | None = None) -> None:
        """Bring a kept link back: wait (pluto may revive it itself), initiate, wait
        longer, until it is up or released."""
        delay = self.keep_first if first is None else first
        while True:
            await asyncio.sleep(delay)
            if not self.keeps(conn, remote) or self._link_up(conn, remote, None) is not None:
                return
            log.info("link %s -> %s (an NHS) is down: initiating it again", conn, remote)
            try:
                await self.initiate(conn, remote, None, None, wait=False)
            except ControlError as exc:
                log.warning("keeping %s -> %s: %s", conn, remote, exc)
            delay = min(delay * 2, KEEP_MAX)

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
        if ike_id is None:
            self.release(conn, check_ip(remote) if remote is not None else None)
        await self.detect_version()
        calls: list[list[str]] = []
        serials: list[int] = []
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
            serials.append(ike.serial)
        elif remote is not None:
            remote = check_ip(remote)
            name = per_peer_name(conn, remote)
            if name in self.per_peer.conns:
                calls.append(self.whack.terminate_conn(name))     # clears UP: no revival
            for s in await self.states():
                if s.peer == remote and not s.is_child and s.conn != name:
                    calls.append(self.whack.delete_ike(s.serial))
                    serials.append(s.serial)
        else:
            calls.append(self.whack.terminate_conn(conn))
            calls += [self.whack.terminate_conn(n) for n, p in self.per_peer.conns.items()
                      if p.profile == conn]
        ids = dict.fromkeys(serials, "")
        ids.update({ike.serial: ike.remote_id for ike in self.db.ike_sas.values()
                    if ike.serial in ids})
        if serials:
            await self._settle(serials)
        old = self.whack.version[0] < 5
        for argv in calls:
            try:
                await self.call(argv, " ".join(argv[2:]),
                                self.terminate_confirm if old and ids else None)
            except PlutoError as exc:
                # 4.10's whack can stay with a Delete sent to a peer that moved (a debian12
                # lab run: `--deletestate` unanswered for 30 s); _force_gone follows up
                if not (old and ids and exc.code == ErrorCode.TIMEOUT):
                    raise
                log.warning("%s (its Delete waits for the peer): checking it is gone", exc)
        # (4.x only: the stuck queue was seen there; 5.2 deleted at once in every lab run)
        forced = await self._force_gone(ids) if ids and old else 0
        await self._quiet_reconcile()
        return {"terminated": len(calls), **({"forced": forced} if forced else {})}

    async def _still(self, which: Callable[[PlutoState], bool]) -> list[PlutoState]:
        """pluto's states for which `which` holds after TERMINATE_CONFIRM s, or none as
        soon as there are none (or pluto is gone: so are its SAs)."""
        deadline = self.clock() + self.terminate_confirm
        while True:
            try:
                left = [s for s in await self.states() if which(s)]
            except PlutoError:
                return []
            if not left or self.clock() >= deadline:
                return left
            await asyncio.sleep(0.5)

    async def _settle(self, serials: list[int]) -> None:
        """Wait (up to TERMINATE_CONFIRM s) until pluto lists these IKE SAs as established
        or no more. pluto 5.2 logs `established IKE SA` in the middle of a responder's
        IKE_AUTH; deleted before that exchange ends, it crashed (a lab run: a revoked
        spoke's new IKE SA terminated at once took the hub's pluto, and every SA, down)."""
        busy = await self._still(lambda s: s.serial in serials and not s.established)
        if busy:
            log.warning("deleting IKE SA %s although pluto still has it in %s after %.0f s",
                        ", ".join(f"#{s.serial}" for s in busy), busy[0].name,
                        self.terminate_confirm)

    async def _force_gone(self, ids: dict[int, str]) -> int:
        """A deleted IKE SA that pluto still has after TERMINATE_CONFIRM s is deleted by its
        peer ID. pluto 4.10 queues a Delete behind the IKE SA's other exchanges, and a
        queue stuck behind a lost response never moves (seen in the lab: an IKE SA kept
        46 s, until the peer rekeyed it, and registration recovery missed that spoke)."""
        left = {s.serial for s in await self._still(lambda s: s.serial in ids)}
        if not left:
            return 0
        forced = 0
        for peer_id in sorted({ids[n] for n in left}):
            stuck = ", ".join(f"#{n}" for n in sorted(left) if ids[n] == peer_id)
            if not peer_id:
                log.warning("pluto still has IKE SA %s %.0f s after its deletion and no peer ID "
                            "is known to delete it by", stuck, self.terminate_confirm)
                continue
            log.warning("pluto still has IKE SA %s of %s %.0f s after its deletion (its exchange "
                        "queue is stuck): deleting that peer's IKE SAs at once (whack --deleteid)",
                        stuck, peer_id, self.terminate_confirm)
            await self.call(self.whack.delete_id(peer_id), "whack --deleteid")
            forced += 1
        return forced

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
        """Delete idle per-peer conns; those of kept NHS links never expire."""
        await self.per_peer.expire(self.clock(), self.cfg.per_peer_idle,
                                   lambda profile, remote: self.keeps(profile, remote)
                                   or self._link_up(profile, remote, None) is not None)

    def restore(self, saved: dict[str, list[str]] | None) -> None:
        self.per_peer.restore(saved)

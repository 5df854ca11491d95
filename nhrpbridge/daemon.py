"""The daemon: one asyncio loop around the spool, the SA database and the sockets.

Strategy:
- Start-up order matters (a bridge that serves an empty view while pluto holds SAs
  leaves nhrpd offline for good): load state.json, drop records it already includes,
  apply the rest of the spool, reconcile with pluto when a controller is configured,
  and only then bind the sockets and tell systemd READY=1.
- Ingest (ingest.py): inotify sets an asyncio.Event; the loop applies pending records in
  order, publishes the events, and checkpoints every CHECKPOINT_INTERVAL s at most (or 25
  times the last state's build time: at most 4 % of the loop), then unlinks the records.
- The daemon knows its parts only through their interfaces (bus.py); assemble.py
  creates them. It is itself the Control front-ends use: initiate and terminate
  go to the pluto controller, resync ingests first.
"""
from __future__ import annotations

import asyncio
import copy
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import handover as ho
from .bus import Bus, Controller, Follower, Listen, Server
from .config import Config
from .errors import ControlError, ErrorCode, StateError
from .ingest import BATCH, Ingestor
from .listen import Listeners, raise_fd_limit
from .loginterp import LogInterpreter
from .lowprio import run_low
from .plutolog import Notice, parse_line
from .reload import reload_config
from .sa import Event, Release
from .sadb import SaDatabase
from .spool import Spool, StateFile
from .systemd import listen_fds, sd_notify

__all__ = ["CHECKPOINT_INTERVAL", "Daemon"]

log = logging.getLogger("nhrpbridge")
CHECKPOINT_INTERVAL = 0.5
POLL_INTERVAL = 2.0          # safety net if an inotify event is ever missed
HANDOVER_SETTLE = 10.0       # a restart waits this long for requests in flight and flushes


class Daemon:
    def __init__(self, cfg: Config, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.clock = clock
        self.monotonic = monotonic               # ages and grace periods (never the wall clock)
        self.db = SaDatabase(hold=cfg.replace_hold)  # restored in place by load_state
        self.bus = Bus()
        self.listen: Listen = Listeners()
        self.spool = Spool(cfg.spool_dir)
        self.state = StateFile(cfg.state_file)
        self.controller: Controller | None = None   # initiate/terminate, optional
        self.log_follower: Follower | None = None   # pluto's log, optional
        self.servers: list[Server] = []     # front-ends with sockets, started in order
        self.config_loader: Callable[[], Config] | None = None   # reload: the file again
        self.reconfigure: list[Callable[[Config], None]] = []     # parts that take a new one
        self.log_interp = LogInterpreter()
        self.log_interp_untrusted = LogInterpreter()
        self.extra_state: dict[str, Any] = {}   # other parts' persisted data (kept in place)
        self.stats = {"records": 0, "bad-records": 0, "checkpoints": 0}
        self._wake = asyncio.Event()
        self.ingest = Ingestor(self.spool, self.apply, monotonic, self._wake, self.stats)
        self._checkpoint_timer: asyncio.TimerHandle | None = None
        self._dirty, self._checkpointing, self._state_cost = False, False, 0.0
        self._bg: set[asyncio.Task] = set()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._handover: asyncio.Task[None] | None = None
        self.handovers: dict[str, ho.HandsOver] = {}    # kind -> front-end kept across restarts

    def apply(self, change: Any, when: float | None = None) -> list[Event]:
        """Apply one change from any source, publish, and mark state dirty."""
        held = len(self.db.held)
        events = self.db.apply(change, self.clock() if when is None else when)
        if len(self.db.held) > held and (c := self.db.child_sas.get(next(reversed(self.db.held)))):
            self.publish_notice(Notice("replace-wait", c.connection, c.remote_host, c.serial, (
                f"the link's last Child SA ended: {self.db.hold:g} s for its replacement")))
        if events:
            self._dirty = True
            self.bus.publish(events)
        return events

    def touch(self) -> None:
        """Another part's persisted data changed: checkpoint it soon."""
        self._dirty = True
        self._wake.set()

    def apply_log_lines(self, lines: list[str], trusted: bool = True) -> None:
        """Lines from pluto's log: enrich and correct the database, relay notices.

        A line from an untrusted source (a file others can write, anything that came
        through syslog) may only annotate an SA the hook or whack reported: it never
        creates or destroys one. Such lines have an interpreter of their own, so they
        cannot mislead the interpretation of trusted ones either.
        """
        for text in lines:
            parsed = parse_line(text)
            if parsed is None:
                continue
            sure = trusted and not parsed.data.get("via-syslog")
            interp = self.log_interp if sure else self.log_interp_untrusted
            for item in interp.feed(parsed):
                if isinstance(item, Notice):
                    self.publish_notice(item)
                elif sure or self.db.annotates(item):
                    self.apply(item)
                else:
                    self.stats["log-changes-ignored"] = self.stats.get("log-changes-ignored", 0) + 1
                    log.debug("untrusted log line ignored (it would %s): %s",
                              type(item).__name__, text[:200])
        self._dirty = True      # the log position moved: checkpoint it
        self._wake.set()

    def publish_notice(self, notice: Any) -> None:
        """Operator-relevant facts that change no SA: logged, and pushed without seq."""
        level = logging.WARNING if notice.kind in (
            "liveness-timeout", "updown-failed", "ts-unacceptable") else logging.INFO
        log.log(level, "pluto %s: %s %s #%s: %s", notice.kind, notice.conn, notice.peer or "",
                notice.serial, notice.text)
        self.bus.broadcast({"type": "notice", "kind": notice.kind, "connection": notice.conn,
                        "remote-host": notice.peer, "serial": notice.serial, "text": notice.text})

    # ---- state

    def lock_state_dir(self) -> None:
        self._lock_fd = self.state.lock()

    def load_state(self) -> None:
        self.spool.ensure()
        self.cfg.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        try:
            db_state, applied = self.state.load()
            if db_state is not None:
                self.db.restore(db_state)
                self.extra_state.update(db_state.get("extra", {}))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            dest = self.state.quarantine()
            log.error("state file unusable (%s); moved to %s, starting empty", exc, dest)
            self.db.restore(None)
            self.extra_state.clear()
            db_state, applied = None, set()
        if db_state is not None:
            log.info("state loaded: %d IKE SAs, %d Child SAs, seq %d",
                     len(self.db.ike_sas), len(self.db.child_sas), self.db.seq)
        done = [n for n in self.spool.pending() if n in applied]
        if done:
            log.info("%d spool records were already applied before a restart; removed", len(done))
            self.spool.remove(done)

    def checkpoint(self) -> bool:
        """Persist the database, then drop the records it includes; False if it failed."""
        if self._checkpointing or (not self.ingest.pending and not self._dirty):
            return not self._checkpointing
        if self.log_follower is not None:
            self.extra_state["log"] = self.log_follower.position()
        names = self.ingest.take_pending()
        try:
            self.state.save(self.db.to_state_json(), names, self.extra_state)
        except OSError as exc:
            # the records stay in the spool: the next checkpoint (or start) applies them
            log.error("checkpoint failed (%s); %d records kept in the spool", exc, len(names))
            self.stats["checkpoint-failures"] = self.stats.get("checkpoint-failures", 0) + 1
            self.ingest.give_back(names)
            return False
        self.spool.remove(names)
        self.ingest.checkpointed(names)
        self._dirty = False
        self.stats["checkpoints"] += 1
        return True

    # ---- ingest

    def ingest_once(self, full: bool = True, limit: int | None = None) -> int:
        """Apply the spool's new records now (see Ingestor.once)."""
        return self.ingest.once(full, limit)

    async def _ingest_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL)
            except TimeoutError:
                pass
            polled = not self._wake.is_set()
            self._wake.clear()
            try:
                self.ingest_once(full=polled, limit=BATCH)
                if self.db.held:            # ends of last Child SAs nothing replaced
                    self.apply(Release())
            except Exception:     # a bug must not stop ingestion for good
                log.exception("ingesting the spool failed; retrying")
                await asyncio.sleep(1)
            await asyncio.sleep(0)            # let transports flush between batches
            if (self.ingest.pending or self._dirty) and self._checkpoint_timer is None:
                # apply at once, persist a little later: one state write covers a burst
                self._checkpoint_timer = loop.call_later(
                    max(CHECKPOINT_INTERVAL, 25 * self._state_cost), self._timed_checkpoint)

    def _timed_checkpoint(self) -> None:
        self._checkpoint_timer = None
        # no ingest here: the ingest loop applies in batches; an unlimited pass here held
        # the loop for seconds in a storm (and a full scan was the latency's p99 tail)
        task = asyncio.get_running_loop().create_task(self.checkpoint_in_thread())
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def checkpoint_in_thread(self) -> None:
        """Like checkpoint(), but the file write, fsyncs and unlinks run in a thread of
        low priority (lowprio.py), so subscribers are not delayed."""
        if self._checkpointing or (not self.ingest.pending and not self._dirty):
            return
        self._checkpointing = True
        names = self.ingest.take_pending()
        if self.log_follower is not None:
            self.extra_state["log"] = self.log_follower.position()
        began = time.perf_counter()
        text, extra = self.db.to_state_json(), copy.deepcopy(self.extra_state)
        self._state_cost, self._dirty = time.perf_counter() - began, False
        try:
            await run_low(self._save_and_unlink, text, names, extra)
        except OSError as exc:
            log.error("checkpoint failed (%s); will retry", exc)
            self.ingest.give_back(names)
            self._dirty = True
        else:
            self.ingest.checkpointed(names)
            self.stats["checkpoints"] += 1
        finally:
            self._checkpointing = False

    def _save_and_unlink(self, text: str, names: list[str], extra: dict[str, Any]) -> None:
        self.state.save(text, names, extra)
        self.spool.remove(names)

    # ---- Control (bus.Control), carried out by the pluto controller

    def _controller(self) -> Controller:
        if self.controller is None:
            raise ControlError("no pluto adapter configured (--no-pluto)", ErrorCode.NOT_SUPPORTED)
        return self.controller

    async def initiate(self, connection: str, remote: str, local: str | None,
                       timeout: float | None, wait: bool = True,
                       shortcut: bool = False) -> dict[str, Any]:
        return await self._controller().initiate(connection, remote, local, timeout, wait=wait,
                                                 shortcut=shortcut)

    async def terminate(self, connection: str, remote: str | None,
                        ike_id: int | None) -> dict[str, Any]:
        return await self._controller().terminate(connection, remote, ike_id)

    async def resync(self) -> dict[str, Any]:
        self.ingest_once()
        if self.controller is None:
            return {"reconciled": False}
        return await self.controller.reconcile()

    # ---- life cycle

    async def start(self) -> None:
        """Everything up to READY=1."""
        raise_fd_limit()
        self.lock_state_dir()
        self.load_state()
        if (passed := os.environ.pop(ho.HANDOVER_ENV, None)) is not None:
            await self._adopt(Path(passed))        # before any event: subscribers see them all
        elif stored := listen_fds():               # systemd kept these across a crash
            n = await ho.adopt(ho.from_store(stored), self.handovers, self._listeners())
            log.info("after a crash: %d descriptors from systemd's fd store, %d connections "
                     "kept", len(stored), n)
        self.ingest_once()
        if self.log_follower is not None:
            await self.log_follower.start(self.apply_log_lines, self.extra_state.get("log"))
        if self.controller is not None:
            self.controller.restore(self.extra_state.get("per-peer"))
            try:
                await self.controller.reconcile()
            except ControlError as exc:
                log.warning("initial reconciliation with pluto failed: %s", exc)
        self.checkpoint()
        from .sources.watch import DirectoryWatch
        self._watch = DirectoryWatch(self.cfg.spool_dir, self._wake, self.ingest.named)
        self._watch.start()
        for extra in self.servers:          # the API socket first (assemble.py)
            await extra.start()
        if isinstance(self.listen, Listeners):
            for path, fd in self.listen.inherited.items():     # no longer configured
                log.warning("%s was handed over but is not configured now: closed", path)
                os.close(fd)
            self.listen.inherited.clear()

    # ---- restart without dropping a client (handover.py)

    async def restart(self) -> dict[str, Any]:
        if self._handover is not None:
            raise ControlError("a restart is already under way", ErrorCode.BAD_REQUEST)
        if (problem := await asyncio.to_thread(ho.program_problem)) is not None:
            raise ControlError(f"not restarting: the program on disk does not start ({problem})",
                               ErrorCode.NOT_SUPPORTED)
        self._handover = asyncio.get_running_loop().create_task(self._hand_over())
        return {"restarting": True, "pid": os.getpid()}

    async def _hand_over(self) -> None:
        # runs right after the reply to `restart` was written: nothing is read from now on
        for part in self.handovers.values():
            part.pause()
        sd_notify("RELOADING=1")
        log.info("restarting: stopping ingestion, handing the sockets over")
        await self._stop_work()
        self._watch.stop()
        if self.log_follower is not None:
            await self.log_follower.aclose()
        handover = await ho.collect(self.handovers, self._listeners(), HANDOVER_SETTLE)
        self.ingest_once()
        if not self.checkpoint():
            log.error("restart: state NOT saved; the next program applies the spool again")
        path = self.cfg.state_dir / "handover.json"
        ho.write(path, handover)
        log.info("restart: %d listening sockets and %d connections handed over at seq %d; exec",
                 len(handover.listeners), len(handover.connections), self.db.seq)
        for handler in logging.getLogger().handlers:
            handler.flush()
        ho.exec_self(path)

    def _listeners(self) -> Listeners | None:
        return self.listen if isinstance(self.listen, Listeners) else None

    async def _adopt(self, path: Path) -> None:
        try:
            handover = ho.take(path)
        except (OSError, StateError) as exc:
            log.error("restart: handover %s not used (%s); starting fresh", path, exc)
            return
        n = await ho.adopt(handover, self.handovers, self._listeners())
        log.info("restarted: %d listening sockets and %d of %d connections kept, seq %d",
                 len(handover.listeners), n, len(handover.connections), self.db.seq)

    async def run(self, on_ready: Callable[[], None] | None = None, signals: bool = True) -> None:
        """Serve until SIGTERM/SIGINT (or stop()); `signals=False` off the main thread."""
        loop = asyncio.get_running_loop()
        if signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        await self.start()
        self._tasks = [loop.create_task(self._ingest_loop())]
        if self.controller is not None:
            self._tasks.append(loop.create_task(self.controller.run()))
        log.info("ready: %d IKE SAs, %d Child SAs, %d links up", len(self.db.ike_sas),
                 len(self.db.child_sas), len(self.db.links))
        sd_notify("READY=1")
        if on_ready:
            on_ready()
        await self._stop.wait()
        sd_notify("STOPPING=1")
        await self._stop_work()
        await self.shutdown()

    async def _stop_work(self) -> None:
        """No more ingestion, reconciliation or timed checkpoints; the running one ends."""
        for t in self._tasks:
            t.cancel()
        if self._checkpoint_timer is not None:
            self._checkpoint_timer.cancel()
        for task in list(self._bg):
            await task

    async def shutdown(self) -> None:
        if isinstance(self.listen, Listeners):
            self.listen.close()
        if getattr(self, "_watch", None):
            self._watch.stop()
        if self.log_follower is not None:
            await self.log_follower.aclose()
        self.ingest_once()
        if self.checkpoint():
            log.info("stopped; state saved (seq %d)", self.db.seq)
        else:
            log.error("stopped; state NOT saved (seq %d): the spool keeps the records, the "
                      "next start applies them again", self.db.seq)
        if (fd := getattr(self, "_lock_fd", None)) is not None:
            os.close(fd)                  # the state is free for the next daemon

    def reload(self) -> dict[str, Any]:
        """The config file again, in place (reload.py); also SIGHUP (never die of it)."""
        self.cfg, result = reload_config(self.cfg, self.config_loader, self.reconfigure)
        return result

    def stop(self) -> None:
        self._stop.set()


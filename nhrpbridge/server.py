"""The daemon: one asyncio loop around the spool, the SA database and the sockets.

Strategy:
- Start-up order matters (nhrpd-loop.md gotcha 10: a bridge that serves an empty
  view while pluto holds SAs leaves nhrpd offline for good): load state.json,
  drop records it already includes, apply the rest of the spool, reconcile with
  pluto when a pluto adapter is configured, and only then bind the sockets and
  tell systemd READY=1.
- Ingest: watchdog pokes an asyncio.Event; the loop applies every pending
  record in name order, publishes the events, and checkpoints (see spool.py)
  at most every CHECKPOINT_INTERVAL seconds, then unlinks the included records.
- Fan-out is synchronous and never awaits a client (api.py drops slow ones).
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import time
from typing import Any, Callable, Protocol

from .config import Config
from .errors import PlutoError, RecordError, StateError
from .protocol.exportp import decode_record, is_complete
from .sadb import Event, SaDatabase
from .spool import RECORD_SUFFIX, Spool, StateFile
from .spool import order as spool_order
from .unixsock import bind_unix, group_ids, peer_cred
from .updown import parse_updown_env

__all__ = ["Daemon", "sd_notify", "CHECKPOINT_INTERVAL"]

log = logging.getLogger("nhrpbridge")
CHECKPOINT_INTERVAL = 0.5
POLL_INTERVAL = 2.0          # safety net if an inotify event is ever missed
INCOMPLETE_GRACE = 10.0      # a record still without its trailer after this: writer died
# a record that cannot be read for these reasons is fine: read it again later
MAX_CLIENTS = 512            # connections over all sockets together
MAX_CLIENTS_PER_UID = 64     # ... and per client uid (root excepted)
_TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR})
BATCH = 256                  # records applied before yielding to the loop, so clients read
                             # while a storm is ingested (one pass of 6,000 records used to
                             # overflow even a reading subscriber's backlog)


class Sink(Protocol):
    def push_event(self, ev: Event) -> None: ...


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(state.encode(), addr)
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)


class Daemon:
    def __init__(self, cfg: Config, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.clock = clock
        self.db = SaDatabase()
        self.spool = Spool(cfg.spool_dir)
        self.state = StateFile(cfg.state_file)
        self.sinks: list[Sink] = []
        self.allowed_gids = group_ids(cfg.control_groups)
        self.controller: Any = None      # pluto adapter (initiate/terminate), optional
        self.log_follower: Any = None    # pluto log follower, optional
        self.servers: list[Any] = []     # more sockets (VICI, nhrp events), started after the API
        from .authorize import Authorizer
        self.authorizer = Authorizer(self)   # registration authorization; serve adds store/policy
        from .loginterp import LogInterpreter
        self.log_interp = LogInterpreter()
        self.log_interp_untrusted = LogInterpreter()
        self.extra_state: dict[str, Any] = {}   # other sources' persisted positions
        self._on_disk: set[str] = set()   # applied, not yet checkpointed: still in the spool
        self._pending: list[str] = []
        self._dirty = False
        self._checkpoint_timer: asyncio.TimerHandle | None = None
        self._checkpointing = False
        self._bg: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._named: set[str] = set()       # files inotify reported since the last pass
        self._blocked: set[str] = set()     # a record being written and those after it
        self._incomplete: dict[str, float] = {}  # record name -> monotonic first sight
        self._clients: dict[int, int] = {}       # uid -> open connections (all sockets)
        self.monotonic = monotonic               # ages and grace periods (never the wall clock)
        self._stop = asyncio.Event()
        self._servers: list[asyncio.base_events.Server] = []
        self._socket_paths: list[str] = []
        self.stats = {"records": 0, "bad-records": 0, "events": 0, "checkpoints": 0}

    # ---- sinks

    def add_sink(self, sink: Sink) -> None:
        if sink not in self.sinks:
            self.sinks.append(sink)

    def remove_sink(self, sink: Sink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)

    def publish(self, events: list[Event]) -> None:
        for ev in events:
            self.stats["events"] += 1
            log.info("%s seq=%d %s", ev.kind, ev.seq, _describe(ev))
            for sink in list(self.sinks):
                try:
                    sink.push_event(ev)
                except Exception:       # one sink's bug must not cost the others this event
                    log.exception("%s could not take event seq %d", type(sink).__name__, ev.seq)

    def apply(self, change: Any, when: float | None = None) -> list[Event]:
        """Apply one change from any source, publish, and mark state dirty."""
        events = self.db.apply(change, self.clock() if when is None else when)
        if events:
            self._dirty = True
            self.publish(events)
        return events

    def apply_log_lines(self, lines: list[str], trusted: bool = True) -> None:
        """Lines from pluto's log: enrich and correct the database, relay notices.

        A line from an untrusted source (a file others can write, anything that came
        through syslog) may only annotate an SA the hook or whack reported: it never
        creates or destroys one. Such lines have an interpreter of their own, so they
        cannot mislead the interpretation of trusted ones either.
        """
        from .plutolog import Notice, parse_line
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
        level = logging.WARNING if notice.kind in ("liveness-timeout", "updown-failed") \
            else logging.INFO
        log.log(level, "pluto %s: %s %s #%s: %s", notice.kind, notice.conn, notice.peer or "",
                notice.serial, notice.text)
        self.broadcast({"type": "notice", "kind": notice.kind, "connection": notice.conn,
                        "remote-host": notice.peer, "serial": notice.serial, "text": notice.text})

    def broadcast(self, msg: dict[str, Any]) -> None:
        """A message without seq (notices, binding decisions) to every subscriber."""
        for sink in list(self.sinks):
            push = getattr(sink, "push_notice", None)
            if push:
                push(msg)

    # ---- state

    def lock_state_dir(self) -> None:
        """flock STATE_DIR/lock before touching the spool or a socket: a second daemon on
        the same state would consume records, and take sockets over."""
        import fcntl
        self.cfg.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        fd = os.open(self.cfg.state_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateError(f"{self.cfg.state_dir} is in use by another nhrpbridge "
                             "(its lock file is held)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def load_state(self) -> None:
        self.spool.ensure()
        self.cfg.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        try:
            db_state, applied = self.state.load()
            if db_state is not None:
                self.db = SaDatabase.from_state(db_state)
                self.extra_state = db_state.get("extra", {})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            dest = self.state.quarantine()
            log.error("state file unusable (%s); moved to %s, starting empty", exc, dest)
            self.db, self.extra_state = SaDatabase(), {}
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
        if self._checkpointing or (not self._pending and not self._dirty):
            return not self._checkpointing
        if self.log_follower is not None:
            self.extra_state["log"] = self.log_follower.position()
        try:
            self.state.save(self.db.to_state_json(), self._pending, self.extra_state)
        except OSError as exc:
            # the records stay in the spool: the next checkpoint (or start) applies them
            log.error("checkpoint failed (%s); %d records kept in the spool", exc,
                      len(self._pending))
            self.stats["checkpoint-failures"] = self.stats.get("checkpoint-failures", 0) + 1
            return False
        self.spool.remove(self._pending)
        self._on_disk.difference_update(self._pending)
        self._pending = []
        self._dirty = False
        self.stats["checkpoints"] += 1
        return True

    # ---- ingest

    def ingest_once(self, full: bool = True, limit: int | None = None) -> int:
        """Apply every record in the spool not applied yet; return how many.

        `full=False` looks only at the files inotify named since the last pass (plus
        one still being written), instead of scanning the whole spool: a scan per
        wake made latency grow with the spool (measured: p50 8 ms at 2,000 files).
        """
        if full:
            names = self.spool.pending()
            self._named.clear()
        else:
            fresh = {n for n in self._named if n.endswith(RECORD_SUFFIX) and not n.startswith(".")}
            self._named.clear()
            names = sorted(fresh | self._blocked, key=spool_order)
        self._blocked = set()
        count = 0
        for i, name in enumerate(names):
            if name in self._on_disk:
                continue
            if limit is not None and count >= limit:
                self._blocked = set(names[i:])   # the rest, in order, on the next pass
                self._wake.set()
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
                    # out of descriptors or memory: the record is fine, read it later
                    log.warning("cannot read spool record %s now (%s); retrying", name, exc)
                    self.stats["record-retries"] = self.stats.get("record-retries", 0) + 1
                    self._blocked = set(names[i:])
                    break
                self._set_aside(name, exc)
                continue
            if not is_complete(data):
                # the age is measured on the monotonic clock from when we first saw the
                # record: a file mtime in the future (clock stepped back) must not hold
                # every later record back
                first = self._incomplete.setdefault(name, self.monotonic())
                if self.monotonic() - first < INCOMPLETE_GRACE:
                    self._blocked = set(names[i:])      # keep arrival order, retry soon
                    break
                self._set_aside(name, RecordError(
                    f"incomplete after {INCOMPLETE_GRACE:.0f} s (hook killed?)"))
                continue
            self._incomplete.pop(name, None)
            try:
                env = decode_record(data)
                change = parse_updown_env(env)
                events = self.apply(change, written) if change is not None else []
            except Exception as exc:     # RecordError, or anything else a crafted record raises
                self._set_aside(name, exc)
                continue
            self._on_disk.add(name)
            self._pending.append(name)
            count += 1
            self.stats["records"] += 1
            if change is not None:
                if not events and type(change).__name__ == "ChildDown":
                    log.info("%s for SPIs never announced (%s %s -> %s); reconciliation settles it",
                             env.get("PLUTO_VERB"), change.conn_name, change.local_host,
                             change.remote_host)
        return count

    def _set_aside(self, name: str, exc: BaseException) -> None:
        """One unusable record goes to spool/bad/ and nothing else is affected."""
        self.stats["bad-records"] += 1
        self._incomplete.pop(name, None)
        try:
            dest: Any = self.spool.set_aside(name)
        except OSError:
            dest = name
        log.error("spool record %s is unusable (%s: %s); kept as %s", name,
                  type(exc).__name__, str(exc)[:200], dest)

    async def _ingest_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL)
            except asyncio.TimeoutError:
                pass
            polled = not self._wake.is_set()
            self._wake.clear()
            try:
                self.ingest_once(full=polled, limit=BATCH)
            except Exception:     # a bug must not stop ingestion for good
                log.exception("ingesting the spool failed; retrying")
                await asyncio.sleep(1)
            await asyncio.sleep(0)            # let transports flush between batches
            if (self._pending or self._dirty) and self._checkpoint_timer is None:
                # apply at once, persist a little later: one state write covers a burst
                self._checkpoint_timer = loop.call_later(CHECKPOINT_INTERVAL, self._timed_checkpoint)

    def _timed_checkpoint(self) -> None:
        self._checkpoint_timer = None
        self.ingest_once()
        task = asyncio.get_running_loop().create_task(self.checkpoint_in_thread())
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def checkpoint_in_thread(self) -> None:
        """Like checkpoint(), but the file write, fsyncs and unlinks (syscalls that
        release the GIL) run in a worker thread, so subscribers are not delayed:
        measured p99 latency 8.5 ms with the checkpoint on the loop, ~5 ms without."""
        if self._checkpointing or (not self._pending and not self._dirty):
            return
        self._checkpointing = True
        names, self._pending = self._pending, []
        if self.log_follower is not None:
            self.extra_state["log"] = self.log_follower.position()
        text, extra = self.db.to_state_json(), dict(self.extra_state)
        self._dirty = False
        try:
            await asyncio.to_thread(self._save_and_unlink, text, names, extra)
        except OSError as exc:
            log.error("checkpoint failed (%s); will retry", exc)
            self._pending = names + self._pending
            self._dirty = True
        else:
            self._on_disk.difference_update(names)
            self.stats["checkpoints"] += 1
        finally:
            self._checkpointing = False

    def _save_and_unlink(self, text: str, names: list[str], extra: dict[str, Any]) -> None:
        self.state.save(text, names, extra)
        self.spool.remove(names)

    # ---- control (filled in by the pluto adapter)

    async def initiate(self, connection: str, remote: str, local: str | None,
                       timeout: float | None, wait: bool = True,
                       shortcut: bool = False) -> dict[str, Any]:
        if self.controller is None:
            raise PlutoError("no pluto adapter configured (--no-pluto)", "not-supported")
        return await self.controller.initiate(connection, remote, local, timeout, wait=wait,
                                              shortcut=shortcut)

    async def terminate(self, connection: str, remote: str | None,
                        ike_id: int | None) -> dict[str, Any]:
        if self.controller is None:
            raise PlutoError("no pluto adapter configured (--no-pluto)", "not-supported")
        return await self.controller.terminate(connection, remote, ike_id)

    async def resync(self) -> dict[str, Any]:
        self.ingest_once()
        if self.controller is None:
            return {"reconciled": False}
        return await self.controller.reconcile()

    # ---- sockets

    async def serve_unix(self, path: str, mode: int, group: str,
                         handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]) -> None:
        sock = bind_unix(path, mode, group)

        async def limited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            """At most MAX_CLIENTS_PER_UID connections per uid and MAX_CLIENTS in all,
            over every socket: idle connections must not eat the descriptors that spool
            records and nhrpd need. Root (pluto's tools, nhrpd under some setups) is only
            bound by the total."""
            cred = peer_cred(writer.get_extra_info("socket"))
            mine = self._clients.get(cred.uid, 0)
            total = sum(self._clients.values())
            if total >= MAX_CLIENTS or (cred.uid != 0 and mine >= MAX_CLIENTS_PER_UID):
                self.stats["refused-clients"] = self.stats.get("refused-clients", 0) + 1
                log.warning("%s: refused a connection from pid=%d uid=%d (%d open for this uid, "
                            "%d in all; limits %d and %d)", path, cred.pid, cred.uid, mine, total,
                            MAX_CLIENTS_PER_UID, MAX_CLIENTS)
                writer.transport.abort()
                return
            self._clients[cred.uid] = mine + 1
            try:
                await handler(reader, writer)
            finally:
                self._clients[cred.uid] -= 1
                if not self._clients[cred.uid]:
                    del self._clients[cred.uid]

        server = await asyncio.start_unix_server(limited, sock=sock, limit=1 << 20)
        self._servers.append(server)
        self._socket_paths.append(path)
        log.info("listening on %s (mode %04o%s)", path, mode, f", group {group}" if group else "")

    async def _api_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from .api import ApiConnection
        cred = peer_cred(writer.get_extra_info("socket"))
        try:
            await ApiConnection(self, writer, cred).serve(reader)
        except asyncio.CancelledError:      # shutdown: not an error worth a traceback
            pass

    # ---- life cycle

    async def start(self) -> None:
        """Everything up to READY=1."""
        raise_fd_limit()
        self.lock_state_dir()
        self.load_state()
        self.ingest_once()
        if self.log_follower is not None:
            await self.log_follower.start(self.apply_log_lines, self.extra_state.get("log"))
        if self.controller is not None:
            self.controller.restore(self.extra_state.get("per-peer"))
            try:
                await self.controller.reconcile()
            except PlutoError as exc:
                log.warning("initial reconciliation with pluto failed: %s", exc)
        self.checkpoint()
        from .sources.watch import DirectoryWatch
        self._watch = DirectoryWatch(self.cfg.spool_dir, self._wake, self._named)
        self._watch.start()
        self.cfg.api_socket.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        await self.serve_unix(str(self.cfg.api_socket), self.cfg.api_mode, self.cfg.api_group,
                              self._api_client)
        for extra in self.servers:
            await extra.start()

    async def run(self, on_ready: Callable[[], None] | None = None) -> None:
        """Serve until SIGTERM/SIGINT."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.on_sighup)
        await self.start()
        tasks = [loop.create_task(self._ingest_loop())]
        if self.controller is not None:
            tasks.append(loop.create_task(self.controller.run()))
        log.info("ready: %d IKE SAs, %d Child SAs, %d links up", len(self.db.ike_sas),
                 len(self.db.child_sas), len(self.db.links))
        sd_notify("READY=1")
        if on_ready:
            on_ready()
        await self._stop.wait()
        sd_notify("STOPPING=1")
        for t in tasks:
            t.cancel()
        if self._checkpoint_timer is not None:
            self._checkpoint_timer.cancel()
        for task in list(self._bg):
            await task
        await self.shutdown()

    async def shutdown(self) -> None:
        for server in self._servers:
            server.close()
        for path in self._socket_paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
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

    def on_sighup(self) -> None:
        """SIGHUP (the operator's "reload", systemd's ExecReload): re-read what can change
        in place, the certificate store; never die of it (the default action)."""
        store = getattr(self.authorizer, "store", None) if self.authorizer else None
        if store is not None:
            store.load()
            log.info("SIGHUP: certificate store %s reloaded; other configuration changes "
                     "need a restart", store.path)
        else:
            log.info("SIGHUP: nothing to reload in place (no certificate store); other "
                     "configuration changes need a restart")

    def stop(self) -> None:
        self._stop.set()


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: room for MAX_CLIENTS and the spool."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            log.debug("RLIMIT_NOFILE raised from %d to %d", soft, want)
        except (ValueError, OSError) as exc:
            log.warning("cannot raise RLIMIT_NOFILE from %d: %s", soft, exc)


def _describe(ev: Event) -> str:
    if ev.link is not None:
        rec: Any = ev.link
        extra = f" children={len(ev.link.children)}"
    else:
        rec, extra = ev.child_sa or ev.ike_sa, ""
    if rec is None:
        return ""
    return f"{rec.connection} {rec.local_host} -> {rec.remote_host} [{rec.remote_id}]{extra}"

"""Prometheus/OpenMetrics exposition of what the daemon knows (`metrics: listen:`).

Why prometheus-client: the text formats (Prometheus 0.0.4 and OpenMetrics 1.0, chosen
by the scraper's Accept header), escaping, `_total`/`_created` suffixes and histogram
buckets are the library's job, not ours.

Strategy:
- Counts of things that happen (events by kind, binding decisions by reason code,
  initiate requests by result and their latency) are library counters fed by a bus
  Sink and by a Control wrapper around the daemon (`TimedControl`).
- Facts that already exist somewhere (SAs and links per connection, the spool backlog,
  whack failures, clients, drops, the log follower's lag) are read at scrape time from
  a `Facts` snapshot the assembly point builds: nothing is counted twice.
- Served on the daemon's loop (TCP HOST:PORT, or a unix socket under the daemon's client
  limits): a scrape is a few kilobytes built from memory, read with a deadline, answered
  with `Connection: close`; at most MAX_SCRAPES at once.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from .bus import Control, Listen
from .errors import ControlError
from .sa import Event
from .sadb import SaDatabase

__all__ = ["Facts", "Metrics", "MetricsServer", "TimedControl"]

log = logging.getLogger("nhrpbridge.metrics")
MAX_SCRAPES = 4
READ_DEADLINE = 5.0
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Facts:
    """What the collector reads at scrape time (None: that part is not running)."""

    records: int = 0
    bad_records: int = 0
    spool_backlog: int = 0
    whack_calls: int | None = None
    whack_failures: int | None = None
    reconcile_changes: int | None = None
    reconcile_last_success: float | None = None
    api_clients: int = 0
    api_subscribers: int = 0
    vici_clients: int | None = None
    client_drops: int = 0
    clients_refused: int = 0
    log_follower_lag_bytes: int | None = None
    terminations: dict[str, int] = field(default_factory=dict)   # why -> count


class Metrics:
    """The registry, the Sink that counts, and the collector of Facts."""

    def __init__(self, db: SaDatabase, facts: Callable[[], Facts]):
        self.db = db
        self.facts = facts
        self.registry = CollectorRegistry(auto_describe=False)
        self.events = Counter("nhrpbridge_events", "SA database events, by kind",
                              ["kind"], registry=self.registry)
        self.bindings = Counter("nhrpbridge_bindings", "nhrpd authorize-binding decisions, by "
                                "decision and reason code", ["decision", "reason"],
                                registry=self.registry)
        self.initiates = Counter("nhrpbridge_initiates", "initiate requests (nhrpd over VICI, "
                                 "the API), by result", ["result"], registry=self.registry)
        self.initiate_seconds = Histogram("nhrpbridge_initiate_seconds", "time to answer an "
                                          "initiate request", buckets=LATENCY_BUCKETS,
                                          registry=self.registry)
        self.registry.register(self)        # collect() below: the facts

    # ---- Sink

    def push_event(self, ev: Event) -> None:
        self.events.labels(ev.kind).inc()

    def push_notice(self, msg: dict[str, Any]) -> None:
        if msg.get("type") in ("binding-accepted", "binding-rejected"):
            self.bindings.labels("accept" if msg["type"] == "binding-accepted" else "reject",
                                 msg.get("code") or "unknown").inc()

    # ---- exposition

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type) for a scraper that sent `Accept: accept`."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def collect(self) -> Iterator[Metric]:
        db = self.db
        links = GaugeMetricFamily("nhrpbridge_links", "links (peers with Child SAs), by "
                                  "connection and state", labels=["connection", "state"])
        n: Tally[tuple[str, str]] = Tally((lk.connection, "up" if lk.up else "down")
                                          for lk in db.links.values())
        for (conn, state), v in sorted(n.items()):
            links.add_metric([conn, state], v)
        yield links
        for name, table, what in (("nhrpbridge_ike_sas", db.ike_sas, "IKE SAs"),
                                  ("nhrpbridge_child_sas", db.child_sas, "Child SAs")):
            g = GaugeMetricFamily(name, f"{what}, by connection", labels=["connection"])
            for conn, v in sorted(Tally(r.connection for r in table.values()).items()):
                g.add_metric([conn], v)
            yield g
        yield GaugeMetricFamily("nhrpbridge_seq", "sequence number of the last database event",
                                value=db.seq)
        f = self.facts()
        yield CounterMetricFamily("nhrpbridge_records", "updown records ingested",
                                  value=f.records)
        yield CounterMetricFamily("nhrpbridge_bad_records", "updown records set aside as bad",
                                  value=f.bad_records)
        yield GaugeMetricFamily("nhrpbridge_spool_backlog", "records waiting in the spool",
                                value=f.spool_backlog)
        yield from _optional(CounterMetricFamily, "nhrpbridge_whack_calls",
                             "whack commands run", f.whack_calls)
        yield from _optional(CounterMetricFamily, "nhrpbridge_whack_failures",
                             "whack commands that failed", f.whack_failures)
        yield from _optional(CounterMetricFamily, "nhrpbridge_reconcile_changes",
                             "database changes made by reconciliations with pluto",
                             f.reconcile_changes)
        yield from _optional(GaugeMetricFamily, "nhrpbridge_reconcile_last_success_timestamp_seconds",
                             "when a reconciliation with pluto last succeeded (Unix time)",
                             f.reconcile_last_success)
        yield GaugeMetricFamily("nhrpbridge_api_clients", "API connections", value=f.api_clients)
        yield GaugeMetricFamily("nhrpbridge_api_subscribers", "API event subscribers",
                                value=f.api_subscribers)
        yield from _optional(GaugeMetricFamily, "nhrpbridge_vici_clients", "VICI connections",
                             f.vici_clients)
        yield CounterMetricFamily("nhrpbridge_client_drops", "clients dropped for not reading",
                                  value=f.client_drops)
        yield CounterMetricFamily("nhrpbridge_clients_refused", "connections refused by the "
                                  "client limits", value=f.clients_refused)
        yield from _optional(GaugeMetricFamily, "nhrpbridge_log_follower_lag_bytes",
                             "bytes of pluto's log not read yet", f.log_follower_lag_bytes)
        term = CounterMetricFamily("nhrpbridge_terminations", "IKE SAs terminated by nhrpbridge "
                                   "itself, by cause", labels=["cause"])
        for why, v in sorted(f.terminations.items()):
            term.add_metric([why], v)
        yield term


def _optional(kind: Any, name: str, doc: str, value: float | None) -> Iterator[Metric]:
    if value is not None:
        yield kind(name, doc, value=value)


class TimedControl:
    """The daemon's Control with initiate requests counted and timed (a Control itself)."""

    def __init__(self, control: Control, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic):
        self.control = control
        self.metrics = metrics
        self.clock = clock

    async def initiate(self, connection: str, remote: str, local: str | None,
                       timeout: float | None, wait: bool = True,
                       shortcut: bool = False) -> dict[str, Any]:
        t0 = self.clock()
        result = "error"
        try:
            reply = await self.control.initiate(connection, remote, local, timeout, wait,
                                                shortcut)
            result = "ok"
            return reply
        except ControlError as exc:
            result = str(exc.code)
            raise
        finally:
            self.metrics.initiates.labels(result).inc()
            self.metrics.initiate_seconds.observe(self.clock() - t0)

    async def terminate(self, connection: str, remote: str | None,
                        ike_id: int | None) -> dict[str, Any]:
        return await self.control.terminate(connection, remote, ike_id)

    async def resync(self) -> dict[str, Any]:
        return await self.control.resync()

    def reload(self) -> dict[str, Any]:
        return self.control.reload()

    async def restart(self) -> dict[str, Any]:
        return await self.control.restart()


class MetricsServer:
    """HTTP GET of the exposition on TCP HOST:PORT or a unix socket (a daemon Server)."""

    def __init__(self, metrics: Metrics, listen: Listen, address: str, mode: int, group: str):
        self.metrics = metrics
        self.listen = listen
        self.address = address
        self.mode = mode
        self.group = group
        self.active = 0
        self.scrapes = 0
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        if self.address.startswith("/"):
            await self.listen(self.address, self.mode, self.group, self.handle)
            return
        host, _, port = self.address.rpartition(":")
        self.server = await asyncio.start_server(self.handle, host.strip("[]"), int(port))
        log.info("metrics on http://%s/metrics", self.address)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.active >= MAX_SCRAPES:
            writer.transport.abort()
            return
        self.active += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_DEADLINE)
            status, body, ctype = self.answer(head)
            writer.write(b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: " + ctype.encode()
                         + b"\r\nContent-Length: " + str(len(body)).encode()
                         + b"\r\nConnection: close\r\n\r\n" + body)
            await asyncio.wait_for(writer.drain(), READ_DEADLINE)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, OSError):
            pass
        finally:
            self.active -= 1
            if writer.transport.is_closing():
                writer.transport.abort()
            else:
                writer.close()

    def answer(self, head: bytes) -> tuple[str, bytes, str]:
        """(status, body, content type) for one request head. Pure but for the collector."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "400 Bad Request", b"bad request line\n", "text/plain"
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method != "GET":
            return "405 Method Not Allowed", b"only GET\n", "text/plain"
        if target not in ("/metrics", "/"):
            return "404 Not Found", b"the metrics are at /metrics\n", "text/plain"
        accept = next((ln.split(":", 1)[1].strip() for ln in lines[1:]
                       if ln.lower().startswith("accept:")), "")
        self.scrapes += 1
        body, ctype = self.metrics.exposition(accept)
        return "200 OK", body, ctype

"""The fan-out from the database to the front-ends, and the interfaces they depend on.

Strategy:
- Front-ends (API, VICI, nhrpd's event socket) and actions (the pluto controller)
  never see the daemon. They get what they use: the database (read only), the Bus
  (to subscribe and to broadcast), a Control (initiate, terminate, resync) and a
  Listen (a unix socket under the daemon's client limits). The assembly point
  (assemble.py) wires them; tests wire them in memory.
- Fan-out is synchronous and never awaits a client: each sink queues its bytes and
  drops itself if it cannot keep up (backlog.py). One sink's bug costs the others
  nothing.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .sa import Event

__all__ = ["Bus", "Control", "Controller", "Follower", "Handler", "Listen", "NhrpdWatch", "Server",
           "Sink"]

log = logging.getLogger("nhrpbridge")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Sink(Protocol):
    def push_event(self, ev: Event) -> None:
        """Every database event, in seq order."""

    def push_notice(self, msg: dict[str, Any]) -> None:
        """Messages without seq (pluto notices, binding decisions)."""


class Control(Protocol):
    """What front-ends may ask of pluto; failures raise ControlError."""

    async def initiate(self, connection: str, remote: str, local: str | None,
                       timeout: float | None, wait: bool = True,
                       shortcut: bool = False) -> dict[str, Any]: ...

    async def terminate(self, connection: str, remote: str | None,
                        ike_id: int | None) -> dict[str, Any]: ...

    async def resync(self) -> dict[str, Any]: ...

    def reload(self) -> dict[str, Any]: ...

    async def restart(self) -> dict[str, Any]: ...


class NhrpdWatch(Protocol):
    """What nhrpd's event socket reports for registration recovery (recovery.py)."""

    def event_socket(self, connected: bool) -> None: ...
    def registered(self, nbma: str, connection: str, block: dict[str, str]) -> None: ...


class Listen(Protocol):
    """Bind `path` with `mode`/`group` and serve each connection with `handler`."""

    async def __call__(self, path: str, mode: int, group: str, handler: Handler) -> None: ...


class Controller(Protocol):
    """The pluto controller as the daemon drives it (control.py)."""

    async def initiate(self, connection: str, remote: str, local: str | None,
                       timeout: float | None, wait: bool = True,
                       shortcut: bool = False) -> dict[str, Any]: ...
    async def terminate(self, connection: str, remote: str | None,
                        ike_id: int | None) -> dict[str, Any]: ...
    async def reconcile(self) -> dict[str, Any]: ...
    async def run(self) -> None: ...
    def restore(self, saved: dict[str, list[str]] | None) -> None: ...


class Follower(Protocol):
    """A pluto log follower (sources/logfollow.py)."""

    async def start(self, sink: Callable[[list[str], bool], None],
                    pos: dict[str, Any] | None) -> None: ...
    def position(self) -> dict[str, Any]: ...
    async def aclose(self) -> None: ...


class Server(Protocol):
    """A front-end with sockets of its own, started after the API socket."""

    async def start(self) -> None: ...


class Bus:
    def __init__(self) -> None:
        self.sinks: list[Sink] = []
        self.events = 0

    def add_sink(self, sink: Sink) -> None:
        if sink not in self.sinks:
            self.sinks.append(sink)

    def remove_sink(self, sink: Sink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)

    def publish(self, events: list[Event]) -> None:
        """The events of one change, to each sink in turn: a sink with `push_events`
        takes them together (one write per client, not one per event)."""
        for ev in events:
            self.events += 1
            log.info("%s seq=%d %s", ev.kind, ev.seq, describe(ev))
        for sink in list(self.sinks):
            many = getattr(sink, "push_events", None)
            try:
                if many is not None:
                    many(events)
                else:
                    for ev in events:
                        sink.push_event(ev)
            except Exception:           # one sink's bug must not cost the others these events
                log.exception("%s could not take events seq %d-%d", type(sink).__name__,
                              events[0].seq, events[-1].seq)

    def broadcast(self, msg: dict[str, Any]) -> None:
        """A message without seq (notices, binding decisions) to every sink."""
        for sink in list(self.sinks):
            try:
                sink.push_notice(msg)
            except Exception:
                log.exception("%s could not take a %s", type(sink).__name__, msg.get("type"))


def describe(ev: Event) -> str:
    """The record an event is about, for the log."""
    rec: Any
    if ev.link is not None:
        rec, extra = ev.link, f" children={len(ev.link.children)}"
    else:
        rec, extra = ev.child_sa or ev.ike_sa, ""
    if rec is None:
        return ""
    return f"{rec.connection} {rec.local_host} -> {rec.remote_host} [{rec.remote_id}]{extra}"

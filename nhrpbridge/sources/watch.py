"""watchdog (inotify) bridged into asyncio: new data in a directory sets an Event.

Confined here so the rest of the daemon never sees a thread. Only Observer and
FileSystemEventHandler are used (stable across watchdog 2.x-7.x).

Only events that can mean new data count (created, modified, closed after write,
moved in). Our own reads and directory scans cause open/access/close-nowrite
events; reacting to those made the daemon wake itself in a loop (profiled:
most of its CPU went to watchdog's threads, p50 latency 9 ms). Where watchdog
supports `event_filter` (4.0+) the inotify mask itself is narrowed as well.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

__all__ = ["DirectoryWatch", "DATA_EVENTS"]

DATA_EVENTS = frozenset({"created", "modified", "closed", "moved"})


class _Poke(FileSystemEventHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event,
                 names: set[str] | None):
        self.loop = loop
        self.event = event
        self.names = names

    def on_any_event(self, event) -> None:  # called in the observer thread
        if event.event_type in DATA_EVENTS and not event.is_directory:
            path = getattr(event, "dest_path", "") or event.src_path
            name = os.path.basename(path.decode() if isinstance(path, bytes) else path)
            self.loop.call_soon_threadsafe(self._poke, name)

    def _poke(self, name: str) -> None:     # in the event loop
        if self.names is not None:
            self.names.add(name)
        self.event.set()


def _event_filter() -> list | None:
    try:
        from watchdog.events import (
            FileClosedEvent,
            FileCreatedEvent,
            FileModifiedEvent,
            FileMovedEvent,
        )
    except ImportError:
        return None
    return [FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileMovedEvent]


class DirectoryWatch:
    """Set `event` whenever a file in `path` (not recursive) may have new data; with
    `names`, also collect the names of those files (so the reader need not rescan)."""

    def __init__(self, path: Path, event: asyncio.Event, names: set[str] | None = None):
        self.path = path
        self.event = event
        self.names = names
        self._observer = Observer()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        handler = _Poke(loop, self.event, self.names)
        flt = _event_filter()
        try:
            if flt is None:
                raise TypeError
            self._observer.schedule(handler, str(self.path), recursive=False, event_filter=flt)
        except TypeError:                    # watchdog < 4: no event_filter
            self._observer.schedule(handler, str(self.path), recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=2)

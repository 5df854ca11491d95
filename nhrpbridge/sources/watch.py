"""watchdog (inotify) bridged into asyncio: a directory change sets an Event.

Confined here so the rest of the daemon never sees a thread. Only Observer and
FileSystemEventHandler are used (stable across watchdog 2.x-7.x).
"""
from __future__ import annotations

import asyncio
from pathlib import Path

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

__all__ = ["DirectoryWatch"]


class _Poke(FileSystemEventHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event):
        self.loop = loop
        self.event = event

    def on_any_event(self, event) -> None:  # called in the observer thread
        self.loop.call_soon_threadsafe(self.event.set)


class DirectoryWatch:
    """Set `event` whenever something changes in `path` (not recursive)."""

    def __init__(self, path: Path, event: asyncio.Event):
        self.path = path
        self.event = event
        self._observer = Observer()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._observer.schedule(_Poke(loop, self.event), str(self.path), recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=2)

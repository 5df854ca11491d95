"""An assembled daemon in this process: its loop in a thread, clients over socketpair().

`build_daemon` wires the real parts (database, bus, API, VICI, event socket, pluto
controller); only the listening sockets are replaced: `connect(path)` hands one end
of a socket.socketpair() to the front-end that would have served `path`. No process
start, no bound socket, the same code paths after accept().
"""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
from pathlib import Path

from nhrpbridge.assemble import Options, build_daemon
from nhrpbridge.config import Config


class MemoryListen:
    """A bus.Listen that keeps the handlers instead of binding sockets."""

    def __init__(self) -> None:
        self.handlers: dict[str, object] = {}

    async def __call__(self, path, mode, group, handler) -> None:
        self.handlers[path] = handler


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))       # with the traceback, if any


class MemoryDaemon:
    def __init__(self, cfg: Config, options: Options = Options(pluto=False), loader=None):
        self.cfg = cfg
        self._log = _Lines()
        logger = logging.getLogger("nhrpbridge")
        self._level = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self._log)
        self.state_dir = Path(cfg.state_dir)
        self.listen = MemoryListen()
        self.daemon = build_daemon(cfg, options, self.listen, loader)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.daemon.run(self.ready.set, signals=False))
        except BaseException as exc:        # shown by start()/stop()
            self.error = exc
            self.ready.set()
        finally:                            # clients still connected: end them, as a close would
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.close()

    def start(self) -> MemoryDaemon:
        self.thread.start()
        assert self.ready.wait(30), "daemon not ready"
        if self.error:
            raise self.error
        return self

    def log_text(self) -> str:
        """What the daemon logged (a process would have written it to stderr)."""
        return "\n".join(self._log.lines)

    @property
    def socket(self) -> str:
        return str(self.cfg.api_socket)

    def connect(self, path: str | None = None, timeout: float = 10.0) -> socket.socket:
        """A client socket connected to the front-end serving `path` (default: the API)."""
        handler = self.listen.handlers[path or self.socket]
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

        async def serve() -> None:
            reader, writer = await asyncio.open_unix_connection(sock=ours, limit=1 << 20)
            try:
                await handler(reader, writer)
            except asyncio.CancelledError:
                pass
        asyncio.run_coroutine_threadsafe(serve(), self.loop)
        theirs.settimeout(timeout)
        return theirs

    def call(self, fn, *args):
        """Run fn(*args) on the daemon's loop and return its result."""
        async def on_loop():
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(on_loop(), self.loop).result(10)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.daemon.stop)
            self.thread.join(20)
        logger = logging.getLogger("nhrpbridge")
        logger.removeHandler(self._log)
        logger.setLevel(self._level)
        if self.error:
            raise self.error

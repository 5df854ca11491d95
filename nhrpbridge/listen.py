"""Listening unix sockets with one budget of client connections over all of them.

Strategy: idle connections must not eat the descriptors that spool records and nhrpd
need, so at most MAX_CLIENTS connections in all and MAX_CLIENTS_PER_UID per client uid
(root, i.e. pluto's tools and nhrpd under some setups, is only bound by the total).
A refused client is closed at once and counted.
"""
from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket

from .bus import Handler
from .handover import inheritable_dup
from .systemd import FdStore
from .unixsock import bind_unix, peer_cred

__all__ = ["MAX_CLIENTS", "MAX_CLIENTS_PER_UID", "Listeners", "raise_fd_limit"]

log = logging.getLogger("nhrpbridge")
MAX_CLIENTS = 512            # connections over all sockets together
MAX_CLIENTS_PER_UID = 64     # ... and per client uid (root excepted)


class Listeners:
    def __init__(self, max_clients: int = MAX_CLIENTS, per_uid: int = MAX_CLIENTS_PER_UID):
        self.max_clients = max_clients
        self.per_uid = per_uid
        self.clients: dict[int, int] = {}        # uid -> open connections
        self.refused = 0
        self._servers: list[asyncio.base_events.Server] = []
        self.paths: list[str] = []
        self.inherited: dict[str, int] = {}     # path -> listening fd from the last process
        self.fdstore: FdStore | None = None     # systemd keeps the listening sockets too

    async def __call__(self, path: str, mode: int, group: str, handler: Handler) -> None:
        """Bind `path` (never taking over a live socket), or serve the socket the previous
        process handed over for it."""
        fd = self.inherited.pop(path, None)
        if fd is not None:
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
            log.info("%s: serving the listening socket handed over", path)
        else:
            sock = bind_unix(path, mode, group)

        async def limited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            cred = peer_cred(writer.get_extra_info("socket"))
            mine = self.clients.get(cred.uid, 0)
            total = sum(self.clients.values())
            if total >= self.max_clients or (cred.uid != 0 and mine >= self.per_uid):
                self.refused += 1
                log.warning("%s: refused a connection from pid=%d uid=%d (%d open for this uid, "
                            "%d in all; limits %d and %d)", path, cred.pid, cred.uid, mine, total,
                            self.per_uid, self.max_clients)
                writer.transport.abort()
                return
            self.clients[cred.uid] = mine + 1
            try:
                await handler(reader, writer)
            except asyncio.CancelledError:       # shutdown: not an error worth a traceback
                pass
            finally:
                self.clients[cred.uid] -= 1
                if not self.clients[cred.uid]:
                    del self.clients[cred.uid]

        if self.fdstore is not None and fd is None and ":" not in path and len(path) < 240:
            self.fdstore.add("listen" + path, sock.fileno())     # bound as a temp name
        server = await asyncio.start_unix_server(limited, sock=sock, limit=1 << 20)
        self._servers.append(server)
        self.paths.append(path)
        log.info("listening on %s (mode %04o%s)", path, mode, f", group {group}" if group else "")

    def export(self) -> dict[str, int]:
        """Hand the listening sockets over: path -> an inheritable copy of each; stop
        accepting here (clients wait in the backlog), keep the socket files."""
        out = {}
        for path, server in zip(self.paths, self._servers, strict=True):
            out[path] = inheritable_dup(server.sockets[0].fileno())
            server.close()
        self._servers, self.paths = [], []
        return out

    def close(self) -> None:
        """Stop accepting and remove the socket files."""
        for server in self._servers:
            server.close()
        for path in self.paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: room for MAX_CLIENTS and the spool."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            log.debug("RLIMIT_NOFILE raised from %d to %d", soft, want)
        except (ValueError, OSError) as exc:
            log.warning("cannot raise RLIMIT_NOFILE from %d: %s", soft, exc)

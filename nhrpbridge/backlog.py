"""When to drop a client whose output piles up: one rule for the API and VICI sockets.

A client that *does not read* must go (it would hold memory for ever); a client
that reads, but more slowly than a reconnect storm produces events, must not (the
storm benchmark saw healthy subscribers dropped at a flat 8 MiB). So: past SOFT
bytes pending, a client is dropped if the kernel took none of its data for STALL
seconds; past HARD bytes it is dropped at once. Memory per client stays bounded
and the daemon never waits for anybody.

Writes are coalesced: what a client is sent during one pass of the loop (a batch of
spool records in a storm: hundreds of events) goes to the transport as one write when
the pass ends, not one send(2) per event.

Across clients, POOL bytes pending in all of them together is the global bound: past
it, a client that holds more than SOFT itself is dropped at once (many idle readers
cannot add up to gigabytes). The same rule serves the API, VICI and nhrp event sockets.

A *protected* client (nhrpd's VICI connection: dropping it makes nhrpd forget every
registration, and spokes register again only after holdtime/3) is never dropped for
reading slowly or for the pool: only past PROTECTED_HARD, which only a client that
reads nothing for a very long time reaches. Its server stops answering its requests
while it is behind (no new dumps pile up); events keep being queued.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

__all__ = ["HARD", "POOL", "PROTECTED_HARD", "SOFT", "STALL", "Backlog", "Pool"]

log = logging.getLogger("nhrpbridge")
SOFT = 8 * 1024 * 1024
HARD = 64 * 1024 * 1024
STALL = 5.0
POOL = 256 * 1024 * 1024
PROTECTED_HARD = 1024 * 1024 * 1024


class Pool:
    """Bytes pending across every client of one daemon."""

    def __init__(self, limit: int = POOL, stall: float = STALL):
        self.limit = limit
        self.stall = stall           # seconds without progress past SOFT before a drop
        self.pending = 0
        self.drops = 0               # clients dropped (metrics)


_DEFAULT_POOL = Pool()


class Backlog:
    def __init__(self, transport: asyncio.WriteTransport, drop: Callable[[str], None],
                 pool: Pool | None = None, protected: bool = False):
        self.transport = transport
        self.drop = drop
        self.pool = pool or _DEFAULT_POOL
        self.protected = protected
        self.warned = False
        self.allowance = 0           # extra bytes allowed once (a subscribe dump)
        self._last = 0
        self._progress = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._out: list[bytes] = []      # queued in this pass of the loop

    def write(self, data: bytes) -> None:
        """Queue bytes for the client: they go out at the end of this loop pass."""
        if not self._out:
            asyncio.get_running_loop().call_soon(self.flush)
        self._out.append(data)

    def flush(self) -> None:
        """Hand what is queued to the transport now (a close flushes first)."""
        if not self._out:
            return
        data, self._out = b"".join(self._out), []
        if self.transport.is_closing():
            return
        self.transport.write(data)
        self.wrote(len(data))

    def buffered(self) -> int:
        """Bytes not yet taken by the kernel: queued here or in the transport."""
        return self.transport.get_write_buffer_size() + sum(map(len, self._out))

    def _drop(self, reason: str) -> None:
        self.pool.drops += 1
        self.drop(reason)

    def wrote(self, n: int) -> None:
        """Call after transport.write(n bytes); may drop the client."""
        pending = self.transport.get_write_buffer_size()
        now = time.monotonic()
        if pending < self._last + n:         # the kernel took some of it: progress
            self._progress = now
        self.pool.pending += pending - self._last
        self._last = pending
        if self.protected:
            if pending > PROTECTED_HARD:
                self._drop(f"{pending} bytes pending (limit {PROTECTED_HARD} for a protected client)")
            elif pending > SOFT and not self.warned:
                self.warned = True
                log.warning("a protected client is %d bytes behind; kept (not dropped)", pending)
            elif pending < SOFT:
                self.warned = False
            return
        if self.pool.pending > self.pool.limit and pending > SOFT:
            self._drop(f"{pending} bytes pending while all clients hold {self.pool.pending} "
                      f"(global limit {self.pool.limit})")
            return
        if pending <= SOFT + self.allowance:
            if pending < SOFT:
                self.allowance = 0
            return
        if pending > HARD + self.allowance:
            self._drop(f"{pending} bytes pending (hard limit {HARD})")
        elif now - self._progress > self.pool.stall:
            self._drop(f"{pending} bytes pending and nothing read for {now - self._progress:.0f} s")
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.pool.stall, self._recheck)

    def _recheck(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self.wrote(0)

    def cancel(self) -> None:
        """The client is gone: its bytes no longer count."""
        self._out = []
        self.pool.pending -= self._last
        self._last = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

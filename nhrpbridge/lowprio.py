"""One worker thread at the lowest CPU priority, for the checkpoint's file work.

Why: a checkpoint writes and fsyncs state.json and unlinks the records it includes
(hundreds per pass at 500 hook calls/s): about 10 ms of a CPU in the kernel. In the
default thread pool that thread competed with the event loop as an equal, and the
events that arrived meanwhile waited (they were most of the latency's p99 tail). The
work is not urgent (the records are durable in the spool until it is done), so the
thread runs at nice 19 (Linux schedules threads one by one) and the loop, and every
other process, goes first.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["run_low"]

log = logging.getLogger("nhrpbridge")
T = TypeVar("T")
_pool: ThreadPoolExecutor | None = None


def _lower() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (OSError, AttributeError) as exc:    # not Linux, or not allowed: equal priority
        log.debug("checkpoint thread keeps its priority (%s)", exc)


async def run_low(func: Callable[..., T], *args: Any) -> T:
    """func(*args) in the low-priority thread, one call at a time."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(1, thread_name_prefix="nhrpbridge-low", initializer=_lower)
    return await asyncio.get_running_loop().run_in_executor(_pool, func, *args)

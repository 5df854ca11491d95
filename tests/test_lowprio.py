"""The checkpoint's file work runs at the lowest CPU priority, off the event loop."""
import asyncio
import os
import threading

from nhrpbridge.lowprio import run_low


def _where() -> tuple[int, int]:
    tid = threading.get_native_id()
    return tid, os.getpriority(os.PRIO_PROCESS, tid)


def test_work_runs_in_another_thread_at_nice_19():
    loop_tid = threading.get_native_id()
    tid, nice = asyncio.run(run_low(_where))
    assert tid != loop_tid
    assert nice == 19
    assert os.getpriority(os.PRIO_PROCESS, loop_tid) != 19      # the caller is untouched


def test_errors_reach_the_caller():
    def fail() -> None:
        raise OSError(28, "No space left on device")

    async def go() -> str:
        try:
            await run_low(fail)
        except OSError as exc:
            return exc.strerror
        return "no error"
    assert asyncio.run(go()) == "No space left on device"

"""The drop rule for clients whose output piles up (backlog.py)."""
import asyncio

from nhrpbridge.backlog import HARD, SOFT, Backlog, Pool


class StandInTransport:
    """STAND-IN for an asyncio transport: only the pending-bytes count matters here."""

    def __init__(self):
        self.pending = 0

    def get_write_buffer_size(self):
        return self.pending

    def is_closing(self):
        return False


def test_slow_reader_is_kept_stalled_one_dropped_hard_cap_at_once():
    pool = Pool(stall=0.2)

    async def scenario():
        dropped = []
        t = StandInTransport()
        b = Backlog(t, dropped.append, pool)
        # a slow reader: past SOFT, but the kernel keeps taking some of each write
        for _ in range(20):
            t.pending += 1024 * 1024
            b.wrote(1024 * 1024 + 4096)          # 4 KiB of it was taken: progress
            await asyncio.sleep(0.02)
        assert t.pending > SOFT and dropped == []
        # it stops reading: dropped once STALL passes, even with no further write
        t.pending += 1024
        b.wrote(1024)
        await asyncio.sleep(0.5)
        assert dropped and "nothing read" in dropped[0]
        dropped.clear()
        t2 = StandInTransport()
        b2 = Backlog(t2, dropped.append, pool)
        t2.pending = HARD + 1
        b2.wrote(HARD + 1)
        assert dropped and "hard limit" in dropped[0]
        # a subscribe dump is allowed once on top of SOFT
        dropped.clear()
        t3 = StandInTransport()
        b3 = Backlog(t3, dropped.append, pool)
        b3.allowance = 20 * 1024 * 1024
        t3.pending = 25 * 1024 * 1024
        b3.wrote(25 * 1024 * 1024)
        await asyncio.sleep(0.4)
        assert dropped == []
    asyncio.run(scenario())


def test_protected_client_is_kept_behind_and_only_a_gigabyte_drops_it():
    """nhrpd's VICI connection: dropping it costs every spoke its registration."""
    from nhrpbridge.backlog import HARD, PROTECTED_HARD
    pool = Pool(limit=SOFT, stall=0.05)

    async def scenario():
        dropped = []
        t = StandInTransport()
        b = Backlog(t, dropped.append, pool, protected=True)
        t.pending = HARD + 1                     # past the hard limit of everybody else
        b.wrote(HARD + 1)
        await asyncio.sleep(0.2)                 # and past the stall time and the pool
        b.wrote(0)
        assert dropped == []
        other = Backlog(StandInTransport(), dropped.append, pool)
        other.transport.pending = SOFT + 1
        other.wrote(SOFT + 1)                    # the pool is over: the unprotected one goes
        assert len(dropped) == 1 and "global limit" in dropped[0]
        t.pending = PROTECTED_HARD + 1
        b.wrote(1)
        assert len(dropped) == 2 and "protected" in dropped[1]
    asyncio.run(scenario())


class RecordingTransport(StandInTransport):
    """STAND-IN transport that records each write."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, data):
        self.writes.append(data)


def test_writes_of_one_loop_pass_go_out_as_one_in_order():
    async def scenario():
        t = RecordingTransport()
        b = Backlog(t, lambda why: None, Pool())
        for i in range(300):                   # one ingest pass: hundreds of events
            b.write(b"%d\n" % i)
        assert t.writes == [] and b.buffered() > 0
        await asyncio.sleep(0)
        assert t.writes == [b"".join(b"%d\n" % i for i in range(300))]
        b.write(b"last\n")
        b.flush()                              # a close flushes at once
        assert t.writes[-1] == b"last\n" and b.buffered() == 0
    asyncio.run(scenario())

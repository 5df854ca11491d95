"""Hostile local users, full disks, odd files: each case once broke nhrpbridge."""
import asyncio
import errno
import json
import logging
import os
import stat
import subprocess
from pathlib import Path

import pytest

from nhrpbridge.errors import PlutoError
from nhrpbridge.pluto import check_ip

from test_control import RecordingWhack, make


@pytest.mark.parametrize("addr", ["fe80::1%eth0", "fe80::1%a\nconn evil\n\tleftupdown=/tmp/x",
                                  "2001:DB8::1", "2001:db8:0::1", " 192.0.2.1", "192.0.2.1\n",
                                  "::ffff:192.0.2.1%1"])
def test_only_canonical_addresses_pass(addr):
    with pytest.raises(PlutoError) as exc:
        check_ip(addr)
    assert exc.value.code == "bad-request"


def test_scope_id_never_reaches_peers_conf(tmp_path):
    runner = RecordingWhack()
    d, ctl = make(tmp_path, runner)
    with pytest.raises(PlutoError) as exc:
        asyncio.run(ctl.initiate("dmvpn", "fe80::1%x\nconn evil"))
    assert exc.value.code == "bad-request"
    peers = tmp_path / "s" / "peers.conf"
    assert not peers.exists() or "evil" not in peers.read_text()
    assert not runner.named("addconn")


# ---- the state file: full disk, newer versions, damage --------------------------

from nhrpbridge.config import Config
from nhrpbridge.errors import StateError
from nhrpbridge.server import Daemon

from conftest import up_env, write_record


def _daemon(state_dir):
    d = Daemon(Config.for_state_dir(state_dir))
    d.load_state()
    return d


def _peer(i):
    return f"198.51.100.{10 + i}"


class FullDisk:
    """os.write as on a disk that fills up: `room` bytes go through, then ENOSPC."""

    def __init__(self, room):
        self.room = room

    def __call__(self, fd, data):
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = os.write(fd, bytes(data[:min(len(data), self.room, 100)]))   # short writes too
        self.room -= n
        return n


def test_short_writes_still_write_the_whole_state_file(tmp_path):
    d = _daemon(tmp_path / "s")
    write_record(d.spool.path, 1, up_env())
    d.ingest_once()
    d.state.write = FullDisk(10**9)           # every write short (100 bytes), none failing
    assert d.checkpoint()
    assert json.loads((tmp_path / "s" / "state.json").read_text())["db"]
    assert _daemon(tmp_path / "s").db.dump() == d.db.dump()


def test_full_disk_keeps_the_old_state_file_and_every_record(tmp_path):
    d = _daemon(tmp_path / "s")
    write_record(d.spool.path, 1, up_env(peer=_peer(1)))
    d.ingest_once()
    assert d.checkpoint()
    good = (tmp_path / "s" / "state.json").read_bytes()
    name = write_record(d.spool.path, 2, up_env(peer=_peer(2), spi_in="0x10", spi_out="0x11"))
    d.ingest_once()
    expected = d.db.dump()
    d.state.write = FullDisk(50)
    assert not d.checkpoint()
    assert (tmp_path / "s" / "state.json").read_bytes() == good
    assert (d.spool.path / name).exists()                 # the record was not deleted
    assert not list((tmp_path / "s").glob(".state.json.tmp"))
    # the next start applies what the failed checkpoint did not save
    again = _daemon(tmp_path / "s")
    again.ingest_once()
    assert again.db.dump() == expected


def test_state_from_a_newer_version_is_refused_and_left_alone(tmp_path):
    s = tmp_path / "s"
    s.mkdir()
    (s / "state.json").write_text('{"version": 2, "db": {}, "applied": []}')
    with pytest.raises(StateError, match="newer nhrpbridge"):
        _daemon(s)
    assert (s / "state.json").read_text() == '{"version": 2, "db": {}, "applied": []}'
    assert not list(s.glob("state.json.corrupt*"))


def test_serve_says_why_it_will_not_start(tmp_path):
    s = tmp_path / "s"
    s.mkdir()
    (s / "state.json").write_text('{"version": 7, "db": {}, "applied": []}')
    r = subprocess.run([os.sys.executable, "-m", "nhrpbridge", "serve", "--state-dir", str(s),
                        "--no-pluto"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "cannot start" in r.stderr and "state version 7" in r.stderr


@pytest.mark.parametrize("text", [
    '{"version": 1, "db": [], "applied": []}',
    '{"version": 1, "db": {"ike-sas": "x"}, "applied": []}',
    '{"version": 1, "db": {}, "applied": [1, 2]}',
    '{"version": 1, "db": {"seq": "many"}, "applied": []}',
])
def test_wrong_types_are_damage_not_a_crash(tmp_path, text):
    s = tmp_path / "s"
    s.mkdir()
    (s / "state.json").write_text(text)
    d = _daemon(s)
    assert d.db.seq == 0
    (kept,) = s.glob("state.json.corrupt-*")
    assert kept.read_text() == text


def test_every_damaged_copy_is_kept(tmp_path):
    s = tmp_path / "s"
    s.mkdir()
    for i in range(3):
        (s / "state.json").write_text(f"{{broken {i}")
        _daemon(s)
    kept = sorted(p.read_text() for p in s.glob("state.json.corrupt-*"))
    assert kept == ["{broken 0", "{broken 1", "{broken 2"]


# ---- clocks: a backward step must not hold records back or keep phantom SAs ------

import time

from nhrpbridge.sadb import ChildUp, Reconcile, SaDatabase


def test_incomplete_record_with_a_future_mtime_does_not_block_the_spool(tmp_path):
    mono = [1000.0]
    d = Daemon(Config.for_state_dir(tmp_path / "s"), monotonic=lambda: mono[0])
    d.load_state()
    name = write_record(d.spool.path, 1, up_env())
    path = d.spool.path / name
    path.write_bytes(path.read_bytes()[:-20])                # its writer died mid-write
    os.utime(path, (time.time() + 3600, time.time() + 3600))  # ... before the clock stepped back
    write_record(d.spool.path, 2, up_env(peer="198.51.100.12"))
    assert d.ingest_once() == 0
    mono[0] += 11
    assert d.ingest_once() == 1
    assert (d.spool.path / "bad" / name).exists()


def test_reconciliation_drops_a_child_reported_before_a_backward_clock_step():
    db = SaDatabase()
    now = 1_800_000_000.0
    db.apply(ChildUp("dmvpn", "dmvpn", "198.51.100.1", "198.51.100.11", "@a", "@b",
                     spi_in=1, spi_out=2, source="updown"), now + 3600)
    events = db.apply(Reconcile((), (), grace=10.0), now)
    assert "child-down" in [e.kind for e in events] and not db.child_sas


# ---- records that used to stop ingestion or checkpoints -------------------------

@pytest.mark.parametrize("body, why", [
    (b"export PLUTO_VERB=$'\\U7fffffff'\n", "beyond Unicode"),
    (b"export PLUTO_VERB='up-host'\nexport PLUTO_CONNECTION='dmvpn'\nexport PLUTO_ME='198.51.100.1'\n"
     b"export PLUTO_PEER='198.51.100.11'\nexport SPI_IN='0x" + b"f" * 3600 + b"'\n", "32-bit SPI"),
    (b"export PLUTO_VERB='up-host'\nexport PLUTO_CONNECTION='dmvpn'\nexport PLUTO_ME='198.51.100.1'\n"
     b"export PLUTO_PEER='198.51.100.11'\nexport PLUTO_SA_REQID='9" + b"9" * 40 + b"'\n", "32-bit number"),
    (b"export PLUTO_VERB='up-host'\nexport PLUTO_CONNECTION='dmvpn'\nexport PLUTO_ME='198.51.100.1'\n"
     b"export PLUTO_PEER='fe80::1%eth0'\n", "not an IP address"),
    (b"export PLUTO_VERB='up-host'\nexport PLUTO_CONNECTION='dmvpn'\nexport PLUTO_ME='198.51.100.1'\n"
     b"export PLUTO_PEER='198.51.100.11'\nexport PLUTO_PEER_ID='" + b"x" * 70000 + b"'\n", "characters long"),
], ids=["U7fffffff", "huge-spi", "huge-reqid", "scope-id", "huge-id"])
def test_a_hostile_record_is_set_aside_and_nothing_else_changes(tmp_path, caplog, body, why):
    caplog.set_level(logging.INFO)
    d = _daemon(tmp_path / "s")
    bad = d.spool.path / "1000000000001-1.rec"
    bad.write_bytes(body + b"# nhrpbridge-end\n")
    write_record(d.spool.path, 2, up_env())
    assert d.ingest_once() == 1
    assert (d.spool.path / "bad" / bad.name).exists()
    assert why in caplog.text
    assert d.checkpoint()                                     # checkpoints go on
    assert json.loads((tmp_path / "s" / "state.json").read_text())["db"]
    asyncio.run(d.shutdown())
    assert "state saved" in caplog.text

"""The pluto log follower: rotation, truncation, partial lines, restarts, journald."""
import asyncio
import json
import os
import time

from conftest import SAMPLES, DaemonProc, wait_until

from nhrpbridge.client import ApiClient
from nhrpbridge.sources.logfollow import FileFollower, JournalFollower


def test_starts_at_end_without_position_then_follows(tmp_path):
    log = tmp_path / "pluto.log"
    log.write_text("old line 1\nold line 2\n")
    f = FileFollower(str(log))
    f.restore(None)
    assert f.read_available() == []
    with open(log, "a") as w:
        w.write("new line\n")
    assert f.read_available() == ["new line"]


def test_partial_line_waits_for_its_newline(tmp_path):
    log = tmp_path / "pluto.log"
    log.write_text("")
    f = FileFollower(str(log))
    f.restore(None)
    with open(log, "a") as w:
        w.write('"dmvpn" #1: half')
    assert f.read_available() == []
    assert f.position()["offset"] == 0          # the partial line is not applied yet
    with open(log, "a") as w:
        w.write(" and the rest\nnext")
    assert f.read_available() == ['"dmvpn" #1: half and the rest']


def test_rename_and_create_rotation_loses_nothing(tmp_path):
    log = tmp_path / "pluto.log"
    log.write_text("")
    f = FileFollower(str(log))
    f.restore(None)
    with open(log, "a") as w:
        w.write("a\nb")
    assert f.read_available() == ["a"]
    with open(log, "a") as w:                      # written just before rotation
        w.write("\nc\n")
    os.rename(log, tmp_path / "pluto.log.1")
    log.write_text("d\ne\n")
    assert f.read_available() == ["b", "c", "d", "e"]
    with open(log, "a") as w:
        w.write("f\n")
    assert f.read_available() == ["f"]


def test_copytruncate_rotation(tmp_path):
    log = tmp_path / "pluto.log"
    log.write_text("")
    f = FileFollower(str(log))
    f.restore(None)
    with open(log, "a") as w:
        w.write("a\nb\n")
    assert f.read_available() == ["a", "b"]
    with open(log, "r+") as w:
        w.truncate(0)
    with open(log, "a") as w:
        w.write("c\n")
    assert f.read_available() == ["c"]


def test_file_not_existing_yet(tmp_path):
    log = tmp_path / "later.log"
    f = FileFollower(str(log))
    f.restore(None)
    assert f.read_available() == []
    log.write_text("first\n")
    assert f.read_available() == ["first"]


def test_garbage_and_non_utf8_lines_do_not_stop_it(tmp_path):
    log = tmp_path / "pluto.log"
    log.write_bytes(b"")
    f = FileFollower(str(log))
    f.restore(None)
    with open(log, "ab") as w:
        w.write(b"\xff\xfe\x00junk\n" + b"x" * 100000 + b"\nok\n")
    lines = f.read_available()
    assert lines[0].startswith("\ufffd") and len(lines[1]) == 64 * 1024 and lines[2] == "ok"


def test_restart_resumes_at_saved_position_and_detects_rotation(tmp_path):
    log = tmp_path / "pluto.log"
    log.write_text("a\n")
    f = FileFollower(str(log))
    f.restore(None)
    with open(log, "a") as w:
        w.write("b\n")
    assert f.read_available() == ["b"]
    pos = f.position()
    with open(log, "a") as w:
        w.write("c\n")                             # written while "we" were down
    g = FileFollower(str(log))
    g.restore(json.loads(json.dumps(pos)))
    assert g.read_available() == ["c"]
    os.rename(log, tmp_path / "old")
    log.write_text("d\n")
    h = FileFollower(str(log))
    h.restore(pos)                                  # inode differs: new file from 0
    assert h.read_available() == ["d"]
    log.write_text("")                              # shorter than the saved offset
    k = FileFollower(str(log))
    k.restore(dict(pos, inode=os.stat(log).st_ino, offset=10**6))
    with open(log, "a") as w:
        w.write("e\n")
    assert k.read_available() == ["e"]


def _status(sock):
    with ApiClient(sock) as c:
        return c.request("list")


def test_daemon_follows_the_log_across_restarts_without_loss_or_repetition(sockdir):
    log = sockdir / "pluto.log"
    log.write_text("")
    lines = (SAMPLES / "lab" / "initiate-hub-pluto.log").read_text().splitlines(keepends=True)
    cut = next(i for i, l in enumerate(lines) if "#3: proposal" in l)   # after spoke1 is up
    end = next(i for i, l in enumerate(lines) if "ESP traffic information" in l)
    d = DaemonProc(sockdir / "state", "--pluto-log", str(log))
    d.start()
    try:
        with open(log, "a") as w:
            w.writelines(lines[:cut])
        wait_until(lambda: _status(d.socket)["seq"] == 3, what="spoke1 up from the log")
        d.stop()
        with open(log, "a") as w:                   # pluto goes on while we are down
            w.writelines(lines[cut:end])
        d.start()
        wait_until(lambda: _status(d.socket)["seq"] == 6, what="spoke2 up after restart")
        time.sleep(0.7)
        d.kill9()                                   # the position was checkpointed
        d.start()
        time.sleep(1.0)
        reply = _status(d.socket)
        assert reply["seq"] == 6 and len(reply["links"]) == 2
        ikes = sorted((i["serial"], i["instance"], i["remote-id"], i["auth"]) for i in reply["ike-sas"])
        assert ikes == [(1, 2, "@spoke1", "secret"), (3, 4, "@spoke2", "secret")]
        with open(log, "a") as w:
            w.writelines(lines[end:])
        wait_until(lambda: _status(d.socket)["seq"] == 12, what="all down")
        assert not _status(d.socket)["links"]
    finally:
        d.kill9()


def test_journald_backend_with_a_stand_in_journalctl(tmp_path):
    """STAND-IN: no journald runs here, so a script plays journalctl (argv recorded)."""
    argv_file = tmp_path / "argv"
    entries = [
        {"__CURSOR": "s=1", "_UID": "0", "_COMM": "pluto",
         "MESSAGE": '"hub" #1: sent IKE_SA_INIT request to 198.51.100.1:500'},
        {"__CURSOR": "s=2", "_UID": "0", "_COMM": "pluto",
         "MESSAGE": list(b'"hub" #1: initiator established IKE SA; '
                                            b"authenticated peer using authby=secret and "
                                            b"ID_FQDN '@hub\xff'")},
        "not json",
    ]
    out = "\n".join(e if isinstance(e, str) else json.dumps(e) for e in entries)
    stand_in = tmp_path / "journalctl"
    stand_in.write_text(f"#!/bin/sh\necho \"$@\" > {argv_file}\ncat <<'EOF'\n{out}\nEOF\nexec sleep 30\n")
    stand_in.chmod(0o755)
    got = []

    async def run():
        j = JournalFollower(journalctl=str(stand_in))
        await j.start(lambda lines, trusted: got.extend(lines), {"backend": "journald",
                                                                  "cursor": "s=0"})
        for _ in range(100):
            if len(got) >= 2:
                break
            await asyncio.sleep(0.05)
        await j.aclose()
        return j
    j = asyncio.run(run())
    assert got[0].endswith("198.51.100.1:500") and got[1].endswith("'@hub\ufffd'")
    assert j.position() == {"backend": "journald", "cursor": "s=2"}
    argv = argv_file.read_text().split()
    assert "--after-cursor=s=0" in argv and "SYSLOG_IDENTIFIER=pluto" in argv
    assert JournalFollower().argv()[-1] == "--lines=0"


def test_a_big_catch_up_comes_in_bounded_chunks_in_order(tmp_path):
    """A log written while the daemon was down: the loop gets it a chunk at a time."""
    from nhrpbridge.sources.logfollow import READ_LIMIT
    log = tmp_path / "pluto.log"
    log.write_text("")
    f = FileFollower(str(log))
    f.restore(None)
    pos = f.position()
    lines = [f"line {i:07d} " + "x" * 90 for i in range(3 * READ_LIMIT // 100 + 77)]
    log.write_text("\n".join(lines) + "\n")
    f2 = FileFollower(str(log))
    f2.restore(pos)
    got, calls = [], 0
    while True:
        chunk = f2.read_available()
        calls += 1
        assert len(chunk) * 100 <= READ_LIMIT + (1 << 16)      # bounded
        got += chunk
        if not f2.more:
            break
    assert got == lines and calls >= 3
    assert f2.position()["offset"] == log.stat().st_size

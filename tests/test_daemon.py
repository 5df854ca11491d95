"""The daemon as a process: spool ingestion, crash safety, the API socket."""
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import DaemonProc, run_hook, up_env, wait_until, write_record

from nhrpbridge.client import ApiClient
from nhrpbridge.config import Config
from nhrpbridge.daemon import Daemon
from nhrpbridge.wire import dump


def peer(i):
    return f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"


def client(where, timeout=10.0):
    """An API client: to a MemoryDaemon (socketpair) or a socket path."""
    if isinstance(where, str):
        return ApiClient(where, timeout=timeout)
    return ApiClient(timeout=timeout, sock=where.connect())


def status(where):
    with client(where) as c:
        return c.request("list")


# ---- spool and restarts --------------------------------------------------------

def test_records_written_while_daemon_stopped_are_applied_once(daemon):
    spool = daemon.state_dir / "spool"
    spool.mkdir(parents=True)
    for i in range(3):
        assert run_hook(up_env(peer=peer(i + 1)), spool, "--no-chain").returncode == 0
    assert len(list(spool.glob("*.rec"))) == 3        # waiting, not lost
    daemon.start()
    wait_until(lambda: len(status(daemon.socket)["links"]) == 3, what="3 links")
    wait_until(lambda: not list(spool.glob("*.rec")), what="spool drained")
    daemon.stop()
    daemon.start()                                     # restart: nothing applied twice
    reply = status(daemon.socket)
    assert len(reply["links"]) == 3 and reply["seq"] == 9


def _inproc(state_dir):
    # replace-hold 0: these count the events of up/down/up sequences, each down at once
    d = Daemon(replace(Config.for_state_dir(state_dir), replace_hold=0.0))
    d.load_state()
    return d


def test_crash_after_apply_before_checkpoint_loses_nothing(sockdir):
    state = sockdir / "s"
    d = _inproc(state)
    for i in range(5):
        write_record(d.spool.path, i + 1, up_env(peer=peer(i + 1)))
    d.ingest_once()
    expected = dump(d.db)
    del d                                              # kill -9: nothing checkpointed
    d2 = _inproc(state)
    d2.ingest_once()
    assert dump(d2.db) == expected and d2.db.seq == 15


def test_crash_after_checkpoint_before_delete_applies_nothing_twice(sockdir):
    state = sockdir / "s"
    d = _inproc(state)
    for i, env in enumerate([up_env(), up_env(verb="down-host"), up_env()]):
        write_record(d.spool.path, i + 1, env)
    d.ingest_once()
    d.state.save(d.db.to_state_json(), d.ingest.pending)    # persisted, records not yet unlinked
    assert len(list(d.spool.path.glob("*.rec"))) == 3
    seq = d.db.seq
    d2 = _inproc(state)                                # restart
    assert not list(d2.spool.path.glob("*.rec"))       # recognised as applied, removed
    assert d2.ingest_once() == 0 and d2.db.seq == seq == 9


def test_damaged_state_file_is_set_aside(sockdir):
    state = sockdir / "s"
    state.mkdir()
    (state / "state.json").write_text("{not json")
    d = _inproc(state)
    assert d.db.seq == 0
    (kept,) = state.glob("state.json.corrupt-*")
    assert kept.read_text() == "{not json"


def test_unparseable_record_is_kept_aside_and_the_rest_applied(sockdir):
    state = sockdir / "s"
    d = _inproc(state)
    (d.spool.path / "1000000000001-1.rec").write_bytes(b"export PLUTO_VERB='up-host\n# nhrpbridge-end\n")
    write_record(d.spool.path, 2, dict(up_env(), PLUTO_ME="not-an-ip"))
    write_record(d.spool.path, 3, up_env())
    assert d.ingest_once() == 1
    assert len(d.db.links) == 1
    assert sorted(p.name for p in (d.spool.path / "bad").iterdir()) == [
        "1000000000001-1.rec", f"1000000000002-{os.getpid()}.rec"]


def test_kill9_during_a_storm_then_restart_state_equals_applied_records(daemon):
    """Each peer goes up, down, up: 9 events. A double-applied suffix would add events."""
    spool = daemon.state_dir / "spool"
    spool.mkdir(parents=True)
    n = 150
    recs = []
    for i in range(n):
        p = peer(i + 1)
        recs += [up_env(peer=p, spi_in=hex(i + 1)), up_env(peer=p, spi_in=hex(i + 1), verb="down-host"),
                 up_env(peer=p, spi_in=hex(i + 10000))]
    random.seed(7)
    cfg = daemon.state_dir.parent / "hold0.yaml"       # each down at once: 9 events per peer
    cfg.write_text("pluto:\n  replace-hold: 0\n")
    daemon.extra += ["-c", str(cfg)]
    daemon.start()
    written = 0
    for chunk in range(6):
        for env in recs[written: written + len(recs) // 6]:
            written += 1
            write_record(spool, written, env)
        time.sleep(random.uniform(0.0, 0.3))
        daemon.kill9()
        daemon.start()
    for env in recs[written:]:
        written += 1
        write_record(spool, written, env)
    wait_until(lambda: status(daemon.socket)["seq"] >= 9 * n, timeout=30, what="all applied")
    time.sleep(0.3)
    reply = status(daemon.socket)
    assert reply["seq"] == 9 * n
    assert len(reply["links"]) == n and len(reply["child-sas"]) == n
    assert all(int(c["spi-out"], 16) >= 10000 for c in reply["child-sas"])


# ---- the API -------------------------------------------------------------------

def raw(where):
    if isinstance(where, str):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(where)
    else:
        s = where.connect()
    return s, s.makefile("rb")


def read_json(f):
    return json.loads(f.readline())


def test_hello_and_versions(memd):
    memd.start()
    with client(memd) as c:
        r = c.request("hello", version=1)
        assert r["type"] == "hello" and r["version"] == 1 and "subscribe" in r["capabilities"]
        assert r["server"].startswith("nhrpbridge ")
        r = c.request("hello", version=99)
        assert not r["ok"] and r["error"]["code"] == "unsupported-version"
        assert r["supported"] == [1]


def test_bad_input_gets_errors_and_keeps_the_connection(memd):
    memd.start()
    s, f = raw(memd)
    s.sendall(b"{not json\n")
    assert read_json(f)["error"]["code"] == "invalid-json"
    s.sendall(b"[1,2]\n")
    assert read_json(f)["error"]["code"] == "not-an-object"
    s.sendall(b"\xff\xfe\n")
    assert read_json(f)["error"]["code"] == "invalid-json"
    s.sendall(b'{"op":"frobnicate","id":"x"}\n')
    r = read_json(f)
    assert r["id"] == "x" and r["error"]["code"] == "unknown-op"
    s.sendall(b'{"id":3}\n')
    assert read_json(f)["error"]["code"] == "unknown-op"
    s.sendall(b'{"op":"list","id":4,"future-field":{"x":1}}\n')   # unknown fields ignored
    r = read_json(f)
    assert r["ok"] and r["id"] == 4 and "links" in r
    s.sendall(b'{"op":"list","id":5,"connection":7}\n')
    assert read_json(f)["error"]["code"] == "bad-request"


def test_oversized_line_is_refused_and_closes(memd):
    memd.start()
    s, f = raw(memd)
    try:
        s.sendall(b'{"op":"list","pad":"' + b"x" * (1024 * 1024 + 10))
    except (BrokenPipeError, ConnectionResetError):
        pass
    r = read_json(f)
    assert r["error"]["code"] == "line-too-long"
    assert f.readline() == b""                          # closed
    assert status(memd)["ok"]                           # daemon fine


def test_subscribe_during_burst_every_seq_exactly_once(memd):
    spool = memd.state_dir / "spool"
    memd.start()
    total = 600  # records; each new peer gives 3 events

    def writer():
        for i in range(total):
            write_record(spool, i + 1, up_env(peer=peer(i + 1), spi_in=hex(i + 1)))
            time.sleep(0.003)          # a burst lasting ~2 s, so the subscribe lands inside it

    t = threading.Thread(target=writer)
    t.start()
    wait_until(lambda: status(memd)["seq"] > 30, what="burst under way")
    seen_dump, stream = [], []
    synced = None
    with client(memd, timeout=30) as c:
        c.send({"op": "subscribe", "id": 1})
        for msg in c.messages():
            if msg["type"] == "reply":
                continue
            if synced is None:
                if msg["type"] == "synced":
                    synced = msg["seq"]
                    if synced == 3 * total:
                        break
                else:
                    seen_dump.append(msg)
                continue
            stream.append(msg["seq"])
            if msg["seq"] == 3 * total:
                break
    t.join()
    assert synced is not None and 0 < synced < 3 * total, "subscribe did not land mid-burst"
    assert stream == list(range(synced + 1, 3 * total + 1))
    # the dump is exactly the state at `synced`: one link per peer up to then
    assert len([m for m in seen_dump if m["type"] == "link"]) == synced // 3


def test_subscriber_that_never_reads_is_dropped_others_keep_up(daemon):
    """A real process (in memory the test's own threads would share its GIL)."""
    spool = daemon.state_dir / "spool"
    daemon.start()
    slow = socket.socket(socket.AF_UNIX)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(daemon.socket)
    slow.sendall(b'{"op":"subscribe","id":1,"pad":"' + b"p" * 10 + b'"}\n')
    fast = ApiClient(daemon.socket, timeout=30)
    fast.send({"op": "subscribe", "id": 1})
    n = 3000
    got = []
    synced = threading.Event()

    def reader():
        for msg in fast.messages():
            if msg["type"] == "synced":
                synced.set()
            if msg["type"] != "reply" and "seq" in msg and msg["type"] != "synced":
                got.append(msg["seq"])
                if msg["seq"] >= 3 * n:
                    return

    t = threading.Thread(target=reader)
    t.start()
    assert synced.wait(30)         # subscribed before the first record: every seq is pushed
    # long IDs make each event big, so the slow client's backlog passes 8 MiB quickly
    big = "CN=" + "x" * 1800
    for i in range(n):
        write_record(spool, i + 1, up_env(peer=peer(i + 1), peer_id=big + str(i)))
        if i % 100 == 99:        # a reading client keeps up (whatever the machine's load);
            wait_until(lambda: got and got[-1] >= 3 * (i - 99), timeout=30, what="reader")
    # one that never reads cannot
    t.join(60)
    fast.close()
    assert got == list(range(1, 3 * n + 1))
    # past 8 MiB a client that made no progress for 5 s is dropped (backlog.py)
    wait_until(lambda: "does not read" in daemon.log.read_text(), timeout=20, what="drop")
    assert "nothing read for" in daemon.log.read_text()
    slow.close()


def test_socket_mode_and_control_ops_need_privilege(sockdir):
    if os.getuid() != 0 or not subprocess.run(["which", "setpriv"], capture_output=True).stdout:
        pytest.skip("needs root and setpriv")
    sockdir.chmod(0o755)
    state = sockdir / "state"
    state.mkdir()
    state.chmod(0o755)
    cfg = sockdir / "nb.yaml"
    cfg.write_text(f"state-dir: {state}\napi:\n  mode: '0660'\n  group: nogroup\n")
    d = DaemonProc(state, "-c", str(cfg))
    d.start()
    try:
        st = os.stat(d.socket)
        assert st.st_mode & 0o777 == 0o660
        import grp
        assert st.st_gid == grp.getgrnam("nogroup").gr_gid
        code = ("import json,sys; from nhrpbridge.client import ApiClient; c=ApiClient(sys.argv[1]);"
                "print(json.dumps([c.request('list')['ok'],"
                " c.request('initiate', connection='dmvpn', **{'remote-host':'192.0.2.1'}),"
                " c.request('reload')]))")
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              sys.executable, "-c", code, d.socket], capture_output=True,
                             text=True, cwd=Path(__file__).parents[1], timeout=30)
        listed, initiate, reload = json.loads(out.stdout)
        assert listed is True
        assert initiate["error"]["code"] == "permission-denied"
        assert reload["error"]["code"] == "permission-denied"
        # not in the group at all: the socket mode keeps it out
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=1", "--clear-groups",
                              sys.executable, "-c", code, d.socket], capture_output=True,
                             text=True, cwd=Path(__file__).parents[1], timeout=30)
        assert "Permission denied" in out.stderr or "PermissionError" in out.stderr
    finally:
        d.kill9()


def test_cli_status_json_and_events(daemon):
    daemon.start()
    spool = daemon.state_dir / "spool"
    run_hook(up_env(), spool, "--no-chain")
    wait_until(lambda: status(daemon.socket)["links"], what="link")
    nb = [sys.executable, "-m", "nhrpbridge"]
    root = Path(__file__).parents[1]
    out = subprocess.run(nb + ["status", "--json", "--state-dir", str(daemon.state_dir)],
                         capture_output=True, text=True, cwd=root)
    data = json.loads(out.stdout)
    (link,) = data["links"]
    assert {k: link[k] for k in ("connection", "local-host", "remote-host", "children", "up")} == {
        "connection": "dmvpn", "local-host": "198.51.100.1", "remote-host": "198.51.100.11",
        "children": 1, "up": True}
    for key in ("connection", "local-host", "remote-host", "local-id", "remote-id", "state"):
        assert key in data["ike-sas"][0] and key in data["child-sas"][0]
    ev = subprocess.Popen(nb + ["events", "--json", "--state-dir", str(daemon.state_dir),
                                "--count", "2"], stdout=subprocess.PIPE, text=True, cwd=root)
    time.sleep(1.0)
    run_hook(up_env(verb="down-host"), spool, "--no-chain")
    lines = [json.loads(l) for l in ev.communicate(timeout=20)[0].splitlines()]
    # the last Child SA's end waits pluto.replace-hold (5 s) for a replacement, said first
    assert [l["type"] for l in lines][-4:] == ["synced", "notice", "child-down", "link-down"]
    assert lines[-3]["kind"] == "replace-wait"
    out = subprocess.run(nb + ["status", "--socket", "/tmp/nonexistent.sock"],
                         capture_output=True, text=True, cwd=root)
    assert out.returncode == 3 and "no nhrpbridge daemon" in out.stderr


def test_record_being_written_is_waited_for_in_order(sockdir):
    state = sockdir / "s"
    now = [time.time()]
    d = Daemon(replace(Config.for_state_dir(state), replace_hold=0.0), clock=lambda: now[0])
    d.load_state()
    name = write_record(d.spool.path, 1, up_env())
    path = d.spool.path / name
    full = path.read_bytes()
    path.write_bytes(full[:-20])                        # the hook is mid-write
    write_record(d.spool.path, 2, up_env(verb="down-host"))
    assert d.ingest_once() == 0 and not d.db.links      # neither applied: order kept
    path.write_bytes(full)                              # the hook finished
    assert d.ingest_once() == 2
    assert d.db.seq == 6                                # up then down, in that order


def test_record_whose_writer_died_is_set_aside_after_grace(sockdir):
    state = sockdir / "s"
    now = [time.time()]
    d = Daemon(Config.for_state_dir(state), clock=lambda: now[0], monotonic=lambda: now[0])
    d.load_state()
    name = write_record(d.spool.path, 1, up_env())
    (d.spool.path / name).write_bytes((d.spool.path / name).read_bytes()[:-20])
    write_record(d.spool.path, 2, up_env(peer="198.51.100.12"))
    assert d.ingest_once() == 0
    now[0] += 60
    assert d.ingest_once() == 1
    assert (d.spool.path / "bad" / name).exists()
    assert [l.remote_host for l in d.db.links.values()] == ["198.51.100.12"]


def test_a_storm_beyond_one_pass_is_applied_in_arrival_order(sockdir):
    # the watcher names files as they arrive; a pass applies at most `limit` and keeps
    # the rest, in order, for the next one; a record named late with an older name
    # (a slow hook) still goes before the newer ones
    d = Daemon(replace(Config.for_state_dir(sockdir / "s"), replace_hold=0.0))
    d.load_state()
    names = [write_record(d.spool.path, i, up_env(peer=f"198.51.100.{i}"))
             for i in range(2, 12)]
    late = names.pop(5)
    d.ingest.named.update(names)
    assert d.ingest_once(full=False, limit=4) == 4
    d.ingest.named.add(late)
    assert d.ingest_once(full=False, limit=4) == 4
    assert d.ingest_once(full=False, limit=4) == 2
    got = [lk.remote_host for lk in d.db.links.values()]
    assert got == [f"198.51.100.{i}" for i in range(2, 12)]

"""`nhrpbridge restart`: the same pid execs the program on disk; nobody is dropped."""
import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import ROOT, DaemonProc, run_hook, up_env, wait_until
from test_nhrp_events import block, replies

from nhrpbridge.client import ApiClient
from nhrpbridge.errors import StateError
from nhrpbridge.handover import Handover, Passed, take, write
from nhrpbridge.protocol.vici import Decoder, Packet, PacketType, encode_packet


def _vici_events(sock, n):
    dec, got = Decoder(), []
    while len(got) < n:
        data = sock.recv(65536)
        assert data, "VICI connection closed"
        dec.feed(data)
        while (p := dec.next_packet()) is not None:
            got.append(p)
    return got


def test_restart_keeps_every_connection_and_every_seq(sockdir):
    vici, events = sockdir / "vici.sock", sockdir / "ev.sock"
    d = DaemonProc(sockdir / "state", "--vici-socket", str(vici), "--nhrp-event-socket",
                   str(events)).start()
    spool = d.state_dir / "spool"
    try:
        wait_until(lambda: vici.exists() and events.exists(), what="sockets")
        run_hook(up_env(peer="198.51.100.11", spi_in="0x11"), spool, "--no-chain")
        wait_until(lambda: ApiClient(d.socket).request("list")["links"], what="first link")
        # nhrpd-like VICI client: registered for child-updown
        v = socket.socket(socket.AF_UNIX)
        v.settimeout(20)
        v.connect(str(vici))
        v.sendall(encode_packet(Packet(PacketType.EVENT_REGISTER, "child-updown")))
        assert _vici_events(v, 1)[0].type == PacketType.EVENT_CONFIRM
        # an API subscriber
        sub = ApiClient(d.socket, timeout=20)
        sub.send({"op": "subscribe", "id": 1})
        msgs = sub.messages()
        synced = next(m for m in msgs if m["type"] == "synced")["seq"]
        assert synced == 3
        # nhrpd's event socket, and half a VICI request sent before the restart
        e = socket.socket(socket.AF_UNIX)
        e.settimeout(20)
        e.connect(str(events))
        version = encode_packet(Packet(PacketType.CMD_REQUEST, "version"))
        v.sendall(version[:5])
        pid = d.proc.pid
        out = subprocess.run([sys.executable, "-m", "nhrpbridge", "restart", "--json",
                              "--state-dir", str(d.state_dir)], capture_output=True, text=True,
                             cwd=ROOT, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr + d.log.read_text()[-3000:]
        r = json.loads(out.stdout)
        assert r["restarted"] and r["pid"] == pid and d.proc.poll() is None
        # the rest of the VICI request, on the same connection: answered by the new program
        v.sendall(version[5:])
        (resp,) = _vici_events(v, 1)
        assert resp.type == PacketType.CMD_RESPONSE and resp.message["daemon"] == b"nhrpbridge"
        # a new SA after the restart: the subscriber gets seq 4, 5, 6 (nothing lost or
        # doubled), nhrpd its event, on the connections opened before
        run_hook(up_env(peer="198.51.100.12", spi_in="0x12"), spool, "--no-chain")
        seqs = []
        for m in msgs:
            if "seq" in m and m["type"] != "synced":
                seqs.append(m["seq"])
            if len(seqs) == 3:
                break
        assert seqs == [4, 5, 6]
        (ev,) = _vici_events(v, 1)
        assert ev.type == PacketType.EVENT and ev.name == "child-updown"
        assert ev.message["dmvpn"]["remote-host"] == b"198.51.100.12"
        e.sendall(block(1, remote_nbma="198.51.100.12"))
        assert replies(e, 1) == [{"eventid": "1", "result": "reject"}]    # answered: policy deny
        log = d.log.read_text()
        assert "restarted: 3 listening sockets and 4 of 4 connections kept, seq 3" in log
        assert "Traceback" not in log
    finally:
        d.stop()
    assert d.proc.returncode == 0


def test_restart_is_refused_when_the_program_on_disk_is_broken(sockdir):
    """An upgrade that left a broken package: the running daemon stays, nothing changes."""
    import shutil
    copy = sockdir / "copy"
    shutil.copytree(ROOT / "nhrpbridge", copy / "nhrpbridge")
    state = sockdir / "state"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen([sys.executable, "-m", "nhrpbridge", "serve", "--state-dir",
                             str(state), "--no-pluto"], cwd=copy, env=env,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: (state / "api.sock").exists(), what="api socket")
        (copy / "nhrpbridge" / "cli.py").write_text("this is not python\n")
        with ApiClient(str(state / "api.sock"), timeout=60) as c:
            before = c.request("hello")
            r = c.request("restart")
            assert r["error"]["code"] == "not-supported"
            assert "the program on disk does not start" in r["error"]["message"]
            after = c.request("hello")                   # the same program, still serving
            assert after["started"] == before["started"] and after["pid"] == proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def test_handover_file_round_trip_and_refusals(tmp_path):
    h = Handover({"/run/a.sock": 7}, [Passed("vici", 9, {"events": ["child-updown"]}, b"\x00\x01")])
    path = tmp_path / "handover.json"
    write(path, h)
    assert take(path) == h and not path.exists()          # read once, then gone
    write(path, h)
    os.chmod(path, 0o644)
    with pytest.raises(StateError, match="not a private regular file"):
        take(path)
    path.write_text("{\"version\": 1, \"listeners\": [], \"connections\": 3}")
    os.chmod(path, 0o600)
    with pytest.raises(StateError, match="handover file unusable"):
        take(path)

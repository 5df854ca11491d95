"""The VICI socket against real clients: strongSwan's `vici` package, swanctl, nhrpd's bytes."""
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

vici = pytest.importorskip("vici")

from dataclasses import replace

from conftest import DATA, DaemonProc, run_hook, up_env, wait_until
from memory import MemoryDaemon
from test_vici_codec import NHRPD_CONNECT

from nhrpbridge.assemble import Options
from nhrpbridge.config import Config
from nhrpbridge.protocol.vici import Decoder, Packet, PacketType, encode_packet


@pytest.fixture
def vdaemon(sockdir, monkeypatch):
    """The assembled daemon in memory (tests/memory.py) with the whack stand-in."""
    standin = sockdir / "standin"
    standin.mkdir()
    monkeypatch.setenv("STANDIN_DIR", str(standin))
    cfg = replace(Config.for_state_dir(sockdir / "state"), vici_socket=str(sockdir / "charon.vici"),
                  ipsec=str(DATA / "ipsec-stand-in"))
    d = MemoryDaemon(cfg, Options(pluto=True)).start()
    d.vici = cfg.vici_socket
    d.standin = standin
    yield d
    d.stop()


@pytest.fixture
def pdaemon(sockdir, monkeypatch):
    """A real `nhrpbridge serve` process: for swanctl (a path) and for kill -9."""
    standin = sockdir / "standin"
    standin.mkdir()
    monkeypatch.setenv("STANDIN_DIR", str(standin))
    d = DaemonProc(sockdir / "state", "--vici-socket", str(sockdir / "charon.vici"),
                   "--ipsec", str(DATA / "ipsec-stand-in"), pluto=True)
    d.vici = str(sockdir / "charon.vici")
    d.standin = standin
    d.start()
    wait_until(lambda: os.path.exists(d.vici), what="vici socket")
    yield d
    d.kill9()
    if d.log.exists():
        print("---- daemon log (tail) ----\n" + "\n".join(d.log.read_text().splitlines()[-30:]))


def connect(where):
    """A connected client socket: to a MemoryDaemon's VICI front-end, or to a path."""
    if isinstance(where, MemoryDaemon):
        return where.connect(where.vici)
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(where)
    return s


def session(where):
    return vici.Session(connect(where))


def hub_up(d, n=2):
    for i in range(n):
        run_hook(up_env(peer=f"198.51.100.{11 + i}", spi_in=hex(0x100 + i), spi_out=hex(0x200 + i),
                        peer_id=f"@spoke{i + 1}"), d.state_dir / "spool", "--no-chain")


def test_version_and_list_sas_with_the_official_client(vdaemon):
    hub_up(vdaemon)
    wait_until(lambda: len(list(session(vdaemon).list_sas())) == 2, what="2 SAs")
    v = session(vdaemon).version()
    assert v["daemon"] == b"nhrpbridge"
    sas = list(session(vdaemon).list_sas())
    (name, ike), = sas[0].items()
    assert name == "dmvpn"
    keys = list(ike)
    assert keys.index("local-host") < keys.index("child-sas") and keys.index("uniqueid") < keys.index("child-sas")
    assert ike["local-host"] == b"198.51.100.1" and ike["remote-host"] == b"198.51.100.11"
    (child,) = ike["child-sas"].values()
    assert child["state"] == b"INSTALLED" and int(child["uniqueid"]) > 0
    assert child["spi-in"] == b"00000200" and child["spi-out"] == b"00000100"
    only = list(session(vdaemon).list_sas({"ike-id": ike["uniqueid"].decode()}))
    assert len(only) == 1
    assert list(session(vdaemon).list_sas({"ike": "other"})) == []


def test_listen_sees_child_state_installed_when_a_hook_record_arrives(vdaemon):
    s = session(vdaemon)
    got = []

    def listen():
        for name, msg in s.listen(["child-state-installed", "child-state-destroying"], timeout=10):
            if name is None:
                return
            got.append((name, msg))
            if len(got) == 2:
                return
    t = threading.Thread(target=listen)
    t.start()
    time.sleep(0.5)
    hub_up(vdaemon, 1)
    time.sleep(0.3)
    run_hook(up_env(peer="198.51.100.11", spi_in=hex(0x100), spi_out=hex(0x200),
                    verb="down-host"), vdaemon.state_dir / "spool", "--no-chain")
    t.join(15)
    assert [n for n, _ in got] == [b"child-state-installed", b"child-state-destroying"]
    ike = got[0][1]["dmvpn"]
    assert ike["remote-host"] == b"198.51.100.11"
    assert [c["state"] for c in ike["child-sas"].values()] == [b"INSTALLED"]
    assert [c["state"] for c in got[1][1]["dmvpn"]["child-sas"].values()] == [b"DELETING"]


def test_nhrpd_connect_sequence_gets_4_confirms_list_sa_events_then_empty_response(vdaemon):
    hub_up(vdaemon)
    wait_until(lambda: len(list(session(vdaemon).list_sas())) == 2, what="2 SAs")
    s = connect(vdaemon)
    s.sendall(b"".join(data for data, _ in NHRPD_CONNECT))    # back to back, as nhrpd does
    d = Decoder()
    got = []
    while len(got) < 7:
        d.feed(s.recv(65536))
        while (p := d.next_packet()) is not None:
            got.append(p)
    assert [p.type for p in got] == [PacketType.EVENT_CONFIRM] * 4 + [PacketType.EVENT] * 2 + [
        PacketType.CMD_RESPONSE]
    assert [p.name for p in got[4:6]] == ["list-sa", "list-sa"]
    assert got[6].message == {}


def test_unknown_events_and_commands(vdaemon):
    s = connect(vdaemon)
    s.sendall(encode_packet(Packet(PacketType.EVENT_REGISTER, "no-such-event"))
              + encode_packet(Packet(PacketType.EVENT_UNREGISTER, "list-sa"))
              + encode_packet(Packet(PacketType.CMD_REQUEST, "load-conn", {"x": b"1"})))
    d = Decoder()
    got = []
    while len(got) < 3:
        d.feed(s.recv(65536))
        while (p := d.next_packet()) is not None:
            got.append(p.type)
    assert got == [PacketType.EVENT_UNKNOWN, PacketType.EVENT_UNKNOWN, PacketType.CMD_UNKNOWN]


def test_initiate_and_terminate_map_to_whack(vdaemon):
    """Recording STAND-IN for `ipsec`: checks the argv nhrpd's requests turn into."""
    s = session(vdaemon)
    # nhrpd's exact request: async, answered once whack accepted it (or after 0.5 s)
    r = s.request("initiate", {"child": "dmvpn", "timeout": "-1", "async": "1",
                               "init-limits": "0", "my-host": "198.51.100.11",
                               "other-host": "198.51.100.1"})
    assert r["success"] == b"yes"
    want = ["whack", "--name", "dmvpn-198-51-100-1", "--initiate", "--asynchronous"]
    wait_until(lambda: want in [json.loads(l) for l in
                                (vdaemon.standin / "calls.jsonl").read_text().splitlines()],
               what="whack --initiate")
    # the official client's streamed initiate (control-log registered first)
    logs = list(session(vdaemon).initiate({"child": "dmvpn", "other-host": "198.51.100.2",
                                                "timeout": "-1"}))
    assert any(b"initiating dmvpn to 198.51.100.2" in l.get("msg", b"") for l in logs)
    # whack fails -> success=no with errmsg, the only thing nhrpd logs (when the failure
    # comes before the answer: each stand-in call here is a python start, so wait for it)
    vdaemon.daemon.controller.accept_wait = 30
    (vdaemon.standin / "rcinitiate").write_text("21")
    with pytest.raises(vici.exception.CommandException, match="unknown-connection|rc 21"):
        s.request("initiate", {"child": "dmvpn", "async": "1", "other-host": "198.51.100.3"})
    with pytest.raises(vici.exception.CommandException, match="other-host"):
        s.request("initiate", {"child": "dmvpn"})     # no other-host: cannot be per peer
    (vdaemon.standin / "rcinitiate").unlink()
    hub_up(vdaemon, 1)
    wait_until(lambda: list(session(vdaemon).list_sas()), what="SA")
    (sa,) = list(session(vdaemon).list_sas())
    ike_id = sa["dmvpn"]["uniqueid"].decode()
    (vdaemon.standin / "showstates.txt").write_text(
        '000 #7: "dmvpn"[1] 198.51.100.11:500 STATE_V2_ESTABLISHED_IKE_SA (established IKE SA); idle;\n'
        '000 #8: "dmvpn"[1] 198.51.100.11:500 STATE_V2_ESTABLISHED_CHILD_SA (IPsec SA established); IKE SA #7; idle;\n'
        '000 #8: "dmvpn"[1] 198.51.100.11 esp.00000100@198.51.100.11 esp.00000200@198.51.100.1 Traffic: ESPin=0B\n')
    (vdaemon.standin / "trafficstatus.txt").write_text(
        "006 #8: \"dmvpn\"[1] 198.51.100.11, type=ESP, add_time=1, inBytes=0, outBytes=0, "
        "maxBytes=2^63B, id='@spoke1'\n")
    r = session(vdaemon).request("terminate", {"ike-id": ike_id})
    assert r["success"] == b"yes"
    calls = [json.loads(l) for l in (vdaemon.standin / "calls.jsonl").read_text().splitlines()]
    assert ["whack", "--deletestate", "7"] in calls          # ike-id -> pluto serial
    r = session(vdaemon).request("terminate", {"ike": "dmvpn"})
    assert r["success"] == b"yes"
    calls = [json.loads(l) for l in (vdaemon.standin / "calls.jsonl").read_text().splitlines()]
    assert ["whack", "--name", "dmvpn", "--terminate"] in calls


@pytest.mark.skipif(not shutil.which("swanctl"), reason="strongswan-swanctl not installed")
def test_swanctl_lists_our_sas(pdaemon):
    hub_up(pdaemon)
    wait_until(lambda: len(list(session(pdaemon.vici).list_sas())) == 2, what="2 SAs")
    out = subprocess.run(["swanctl", "--list-sas", "--uri", f"unix://{pdaemon.vici}"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "remote '@spoke1' @ 198.51.100.11[500]" in out.stdout
    assert "INSTALLED, TRANSPORT, ESP" in out.stdout and "out 00000101" in out.stdout


def test_list_sas_after_restart_already_lists_the_sas(pdaemon):
    """gotcha 10: a bridge restarted with its state lost while pluto holds SAs."""
    (pdaemon.standin / "showstates.txt").write_text((DATA / "showstates-4.10.txt").read_text())
    (pdaemon.standin / "trafficstatus.txt").write_text((DATA / "trafficstatus-4.10.txt").read_text())
    pdaemon.kill9()
    for p in pdaemon.state_dir.iterdir():
        if p.is_file():
            p.unlink()                               # spool and state lost
    # the killed daemon's socket file stays; the new daemon replaces it (stale: nobody
    # listens), so waiting for the file to exist must not see the old one
    os.unlink(pdaemon.vici)
    pdaemon.start()
    wait_until(lambda: os.path.exists(pdaemon.vici), what="vici socket")
    assert len(list(session(pdaemon.vici).list_sas())) == 2     # the very first list-sas


@pytest.mark.parametrize("attack", ["oversized", "truncated", "random", "bad-type", "vanish"])
def test_hostile_client_is_closed_and_others_are_served(vdaemon, attack):
    hub_up(vdaemon, 1)
    wait_until(lambda: len(list(session(vdaemon).list_sas())) == 1, what="1 SA")
    good = session(vdaemon)
    s = connect(vdaemon)
    if attack == "oversized":
        s.sendall((512 * 1024 + 1).to_bytes(4, "big") + b"\x00" * 1024)
    elif attack == "truncated":
        s.sendall(b"\x00\x00\x00\x20\x00\x08list-sas")
        s.shutdown(socket.SHUT_WR)
    elif attack == "random":
        random.seed(3)
        s.sendall(b"\x00\x00\x00\x40" + bytes(random.getrandbits(8) for _ in range(64)))
    elif attack == "bad-type":
        s.sendall(encode_packet(Packet(PacketType.EVENT, "list-sa", {})))
    else:
        s.sendall(encode_packet(Packet(PacketType.CMD_REQUEST, "list-sas")))
    if attack != "vanish":
        try:
            assert s.recv(65536) == b""             # closed by the daemon
        except ConnectionResetError:
            pass
    s.close()
    assert good.version()["daemon"] == b"nhrpbridge"
    assert len(list(session(vdaemon).list_sas())) == 1


def test_two_hundred_clients_connecting_and_vanishing(vdaemon):
    for i in range(200):
        s = connect(vdaemon)
        try:
            if i % 2:
                s.sendall(b"".join(data for data, _ in NHRPD_CONNECT))
        except (BrokenPipeError, ConnectionResetError):
            pass                      # vanishing mid-write is what this test is about
        s.close()
    assert session(vdaemon).version()["daemon"] == b"nhrpbridge"


def test_refuses_to_take_over_a_live_socket_and_removes_a_stale_one(sockdir):
    path = str(sockdir / "charon.vici")
    live = socket.socket(socket.AF_UNIX)
    live.bind(path)
    live.listen(1)
    d = DaemonProc(sockdir / "state", "--vici-socket", path)
    d.start(wait=False)
    assert d.proc.wait(20) == 1
    assert "a live server already answers on" in d.log.read_text()
    live.close()                                     # now the file is stale
    d2 = DaemonProc(sockdir / "state2", "--vici-socket", path)
    d2.start()
    try:
        wait_until(lambda: session(path).version(), what="vici served")
    finally:
        d2.kill9()


def test_vici_control_ops_refused_to_other_uids(sockdir):
    if os.getuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv")
    sockdir.chmod(0o755)
    state = sockdir / "state"
    state.mkdir()
    state.chmod(0o755)
    cfg = sockdir / "nb.yaml"
    cfg.write_text(f"state-dir: {state}\nvici:\n  socket: {sockdir}/charon.vici\n  group: nogroup\n")
    d = DaemonProc(state, "-c", str(cfg))
    d.start()
    try:
        wait_until(lambda: os.path.exists(sockdir / "charon.vici"), what="vici socket")
        # our stdlib-only codec: third-party packages may not be readable for uid 65534
        code = ("import socket,sys\nfrom nhrpbridge.protocol.vici import *\n"
                "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); d=Decoder()\n"
                "def ask(name, msg):\n"
                "    s.sendall(encode_packet(Packet(PacketType.CMD_REQUEST, name, msg)))\n"
                "    while (p := d.next_packet()) is None: d.feed(s.recv(65536))\n"
                "    return p.message\n"
                "print(ask('version', {})['daemon'].decode())\n"
                "r = ask('initiate', {'child': 'dmvpn', 'other-host': '192.0.2.1', 'async': '1'})\n"
                "print(r['success'].decode(), r['errmsg'].decode(), file=sys.stderr)\n")
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              sys.executable, "-c", code, str(sockdir / "charon.vici")],
                             capture_output=True, text=True, timeout=30, cwd=str(DATA.parents[1]))
        assert out.stdout.strip() == "nhrpbridge"             # reading is allowed to the group
        assert "permission denied" in out.stderr              # control is not
        assert "VICI initiate refused to pid=" in d.log.read_text()
    finally:
        d.kill9()


def test_pipelined_initiates_run_side_by_side_and_are_answered_in_order(sockdir):
    """nhrpd after a burst of shortcuts: many initiates back to back, then another request."""
    from test_control import GatedWhack
    cfg = replace(Config.for_state_dir(sockdir / "state"), vici_socket=str(sockdir / "v.sock"))
    d = MemoryDaemon(cfg, Options(pluto=True))
    gated = GatedWhack()
    d.daemon.controller.run_cmd = gated
    d.daemon.controller.accept_wait = 60     # answers wait for the attempts (the gate)
    d.start()
    try:
        s = d.connect(cfg.vici_socket)
        peers = [f"198.51.100.{30 + i}" for i in range(6)]
        s.sendall(b"".join(encode_packet(Packet(PacketType.CMD_REQUEST, "initiate", {
            "child": b"dmvpn", "other-host": p.encode(), "async": b"1"})) for p in peers)
            + encode_packet(Packet(PacketType.CMD_REQUEST, "version")))
        # all six attempts reached addconn while pluto (the gate) had answered none: one
        # at a time, the first would hold the others for as long as the gate is shut
        wait_until(lambda: len(gated.named("addconn")) == 6, what="six attempts at once")
        d.loop.call_soon_threadsafe(gated.gate.set)
        dec, answers = Decoder(), []
        while len(answers) < 7:
            dec.feed(s.recv(65536))
            while (p := dec.next_packet()) is not None:
                answers.append(p.message)
        assert [a.get("success") for a in answers[:6]] == [b"yes"] * 6
        assert answers[6].get("daemon") == b"nhrpbridge"     # the version reply came last
        wait_until(lambda: len(gated.named("--initiate")) == 6, what="six whack --initiate")
        s.close()
    finally:
        d.stop()


def test_list_sas_is_streamed_to_a_client_that_reads_slowly(sockdir):
    """A big dump waits in the socket only STREAM_AHEAD bytes at a time; others go on."""
    from nhrpbridge.sa import ChildUp
    from nhrpbridge.viciserver import STREAM_AHEAD
    cfg = replace(Config.for_state_dir(sockdir / "state"), vici_socket=str(sockdir / "v.sock"))
    d = MemoryDaemon(cfg).start()
    n = 4000

    def load():
        for i in range(n):
            peer = f"10.1.{i // 256}.{i % 256}"
            d.daemon.apply(ChildUp("dmvpn", "dmvpn", "198.51.100.1", peer, "@hub",
                                   "C=XX, O=DMVPN Lab, CN=" + "x" * 200 + f"{i}",
                                   spi_in=0x1000 + i, spi_out=0x9000 + i, source="test"))
    try:
        d.call(load)
        slow = d.connect(cfg.vici_socket)
        slow.sendall(encode_packet(Packet(PacketType.EVENT_REGISTER, "list-sa"))
                     + encode_packet(Packet(PacketType.CMD_REQUEST, "list-sas")))
        server = d.daemon.handovers["vici"]
        pending = lambda: sum(c.writer.transport.get_write_buffer_size()
                              for c in list(server.connections))
        time.sleep(1.0)                            # the dump would be done by now if not held
        assert 0 < pending() <= STREAM_AHEAD + 4096
        other = d.connect(cfg.vici_socket)         # another client is answered meanwhile
        other.sendall(encode_packet(Packet(PacketType.CMD_REQUEST, "version")))
        dec = Decoder()
        dec.feed(other.recv(4096))
        assert dec.next_packet().message["daemon"] == b"nhrpbridge"
        dec, events, done = Decoder(), 0, False
        while not done:
            dec.feed(slow.recv(1 << 16))
            while (p := dec.next_packet()) is not None:
                events += p.type == PacketType.EVENT
                done = done or p.type == PacketType.CMD_RESPONSE
        assert events == n
        slow.close()
        other.close()
    finally:
        d.stop()

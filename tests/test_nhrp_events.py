"""nhrpd's event socket: authorize-binding in nhrpd's exact format, faults, concurrency."""
import socket
import time
from dataclasses import replace

import pytest
from certgen import der, make_ca, make_cert, pem
from conftest import DaemonProc, run_hook, up_env, wait_until
from memory import MemoryDaemon

from nhrpbridge.assemble import Options
from nhrpbridge.client import ApiClient
from nhrpbridge.config import Config
from nhrpbridge.protocol.nhrpevent import Decoder

SPOKE1 = "C=XX, O=DMVPN Lab, CN=spoke1.dmvpn.example"
SPOKE3 = "C=XX, O=DMVPN Lab, CN=spoke3.dmvpn.example"


def block(eventid, remote_nbma="198.51.100.11", remote_addr="203.0.113.11", cert=b"", **extra):
    """An authorize-binding block as nhrpd's nhrp_event.c writes it."""
    fields = {"eventid": eventid, "event": "authorize-binding", "type": "dynamic",
              "old_type": "invalid", "num_nhs": "0", "interface": "gre1",
              "local_addr": "203.0.113.1", "vc_initiated": "no", "local_nbma": "198.51.100.1",
              "local_cert": "", "remote_addr": remote_addr, "remote_nbma": remote_nbma,
              "remote_cert": cert.hex(), **extra}
    return "".join(f"{k}={v}\n" for k, v in fields.items()).encode() + b"\n"


def replies(sock, n, timeout=5.0):
    dec = Decoder()
    out = []
    sock.settimeout(timeout)
    while len(out) < n:
        data = sock.recv(65536)
        if not data:
            break
        dec.feed(data)
        while (b := dec.next_block()) is not None:
            out.append(b)
    return out


def _store(sockdir):
    ca = make_ca()
    store = sockdir / "peers"
    store.mkdir()
    (store / "spoke1.pem").write_bytes(pem(make_cert(ca, "spoke1.dmvpn.example",
                                                     ips=["203.0.113.11"])[1]))
    (store / "spoke3.pem").write_bytes(pem(make_cert(ca, "spoke3.dmvpn.example")[1]))   # no SAN
    (store / "broken.pem").write_bytes(b"junk")
    return store


def _two_spokes(spool, links):
    run_hook(up_env(peer="198.51.100.11", peer_id=SPOKE1), spool, "--no-chain")
    run_hook(up_env(peer="198.51.100.13", peer_id=SPOKE3, spi_in="0x33"), spool, "--no-chain")
    wait_until(lambda: links() == 2, what="links")


@pytest.fixture
def hub(sockdir):
    """The assembled daemon in memory (tests/memory.py): event socket, store, policy."""
    ev = sockdir / "nhrp-events.sock"
    cfg = replace(Config.for_state_dir(sockdir / "state"), event_socket=str(ev),
                  cert_store=str(_store(sockdir)))
    d = MemoryDaemon(cfg, Options(policy="gre-ip-in-cert-san", pluto=False)).start()
    d.events = str(ev)
    _two_spokes(d.state_dir / "spool", lambda: len(d.daemon.db.links))
    yield d
    d.stop()


@pytest.fixture
def hub_proc(sockdir):
    """The same as a real process, for the CLI."""
    d = DaemonProc(sockdir / "state", "--cert-store", str(_store(sockdir)),
                   "--policy", "gre-ip-in-cert-san").start()
    _two_spokes(d.state_dir / "spool",
                lambda: len(ApiClient(d.socket).request("list")["links"]))
    yield d
    d.kill9()


def connect(path, hub=None):
    if hub is not None:
        return hub.connect(path)
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    return s


def test_accept_reject_in_nhrpds_format(hub):
    s = connect(hub.events, hub)
    s.sendall(block(1) + block(2, remote_addr="203.0.113.99") + block(3, "198.51.100.13", "203.0.113.13")
              + block(4, "198.51.100.200", "203.0.113.200"))
    got = replies(s, 4)
    assert got == [{"eventid": "1", "result": "accept"}, {"eventid": "2", "result": "reject"},
                   {"eventid": "3", "result": "reject"}, {"eventid": "4", "result": "reject"}]
    log = hub.log_text()
    assert "binding-accepted: GRE 203.0.113.11 from NBMA 198.51.100.11" in log
    assert "203.0.113.99 is not in the subjectAltNames of CN=spoke1.dmvpn.example" in log
    assert "no IPsec Child SA for this NBMA pair" in log
    assert "broken.pem: not a certificate" in log


def test_decisions_are_published_to_subscribers(hub):
    with ApiClient(timeout=10, sock=hub.connect()) as c:
        c.send({"op": "subscribe", "id": 1})
        s = connect(hub.events, hub)
        s.sendall(block(7))
        for msg in c.messages():
            if msg["type"] == "binding-accepted":
                assert msg["gre-address"] == "203.0.113.11" and msg["peer-id"] == SPOKE1
                assert msg["cert-source"] == "store"
                break


def test_malformed_blocks_are_answered_or_logged_never_hang(hub):
    s = connect(hub.events, hub)
    s.sendall(b"eventid=5\nevent=authorize-binding\n\n"          # no NBMA/GRE: reject
              b"event=authorize-binding\nremote_nbma=1.2.3.4\n\n"  # no eventid: cannot answer
              b"\xff\xfe garbage without equals\n\n"
              b"eventid=6\nevent=something-else\n\n"            # unknown event: default
              + block(8))
    got = replies(s, 3)
    assert got == [{"eventid": "5", "result": "reject"}, {"eventid": "6", "result": "default"},
                   {"eventid": "8", "result": "accept"}]
    assert "without a usable eventid" in hub.log_text()


def test_partial_block_then_disconnect_and_reconnect(hub):
    s = connect(hub.events, hub)
    s.sendall(block(9)[:40])
    s.close()
    wait_until(lambda: "in the middle of a block" in hub.log_text(), what="log line")
    s = connect(hub.events, hub)
    s.sendall(block(10))
    assert replies(s, 1) == [{"eventid": "10", "result": "accept"}]


def test_oversized_block_closes_only_that_connection(hub):
    s = connect(hub.events, hub)
    s.sendall(b"eventid=1\nremote_cert=" + b"a" * 70000)
    s.settimeout(5)
    assert s.recv(100) == b""
    s = connect(hub.events, hub)
    s.sendall(block(11))
    assert replies(s, 1) == [{"eventid": "11", "result": "accept"}]


def test_hundred_concurrent_events_all_answered_within_a_second(hub):
    socks = [connect(hub.events, hub) for _ in range(4)]
    start = time.monotonic()
    for i, s in enumerate(socks):
        s.sendall(b"".join(block(i * 25 + j, remote_addr="203.0.113.11" if j % 2 else "203.0.113.98")
                           for j in range(25)))
    results = {}
    for i, s in enumerate(socks):
        for b in replies(s, 25):
            results[int(b["eventid"])] = b["result"]
    assert time.monotonic() - start < 5
    assert len(results) == 100
    assert all(results[i] == ("accept" if (i % 25) % 2 else "reject") for i in range(100))


def test_api_authorize_dry_run_and_cli(hub_proc):
    hub = hub_proc
    with ApiClient(hub.socket) as c:
        r = c.request("authorize", connection="dmvpn", **{"remote-nbma": "198.51.100.11",
                                                           "gre-address": "203.0.113.11"})
        assert r["ok"] and r["decision"] == "accept" and r["policy"] == "gre-ip-in-cert-san"
        r = c.request("authorize", connection="dmvpn", **{"remote-nbma": "198.51.100.11",
                                                           "gre-address": "203.0.113.12"})
        assert r["decision"] == "reject"
    import subprocess
    import sys

    from conftest import ROOT
    out = subprocess.run([sys.executable, "-m", "nhrpbridge", "authorize", "--state-dir",
                          str(hub.state_dir), "dmvpn", "198.51.100.11", "203.0.113.12"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and out.stdout.startswith("reject: 203.0.113.12 is not in")


def test_vici_supplies_remote_cert_data_from_the_store(sockdir):
    vici = pytest.importorskip("vici")
    ca = make_ca()
    store = sockdir / "peers"
    store.mkdir()
    spoke = make_cert(ca, "spoke1.dmvpn.example", ips=["203.0.113.11"])[1]
    (store / "spoke1.pem").write_bytes(pem(spoke))
    path = sockdir / "charon.vici"
    d = DaemonProc(sockdir / "state", "--vici-socket", str(path), "--cert-store", str(store))
    d.start()
    try:
        run_hook(up_env(peer="198.51.100.11", peer_id=SPOKE1), d.state_dir / "spool", "--no-chain")
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(path))
        sas = wait_until(lambda: list(vici.Session(connect(str(path))).list_sas()), what="SA")
        assert sas[0]["dmvpn"]["remote-cert-data"] == der(spoke)
    finally:
        d.kill9()

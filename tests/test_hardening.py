"""Hostile local users, full disks, odd files: each case once broke nhrpbridge."""
import asyncio
import errno
import json
import logging
import os
import subprocess
from pathlib import Path

import pytest
from test_control import RecordingWhack, make

from nhrpbridge.errors import PlutoError
from nhrpbridge.pluto import check_ip
from nhrpbridge.wire import dump


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

from conftest import up_env, write_record

from nhrpbridge.config import Config
from nhrpbridge.daemon import Daemon
from nhrpbridge.errors import StateError


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
    assert dump(_daemon(tmp_path / "s").db) == dump(d.db)


def test_full_disk_keeps_the_old_state_file_and_every_record(tmp_path):
    d = _daemon(tmp_path / "s")
    write_record(d.spool.path, 1, up_env(peer=_peer(1)))
    d.ingest_once()
    assert d.checkpoint()
    good = (tmp_path / "s" / "state.json").read_bytes()
    name = write_record(d.spool.path, 2, up_env(peer=_peer(2), spi_in="0x10", spi_out="0x11"))
    d.ingest_once()
    expected = dump(d.db)
    d.state.write = FullDisk(50)
    assert not d.checkpoint()
    assert (tmp_path / "s" / "state.json").read_bytes() == good
    assert (d.spool.path / name).exists()                 # the record was not deleted
    assert not list((tmp_path / "s").glob(".state.json.tmp"))
    # the next start applies what the failed checkpoint did not save
    again = _daemon(tmp_path / "s")
    again.ingest_once()
    assert dump(again.db) == expected


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

from nhrpbridge.sa import ChildUp, Reconcile
from nhrpbridge.sadb import SaDatabase


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


# ---- the spool: who may write it, and files that are not records --------------------

from conftest import run_hook

from nhrpbridge.errors import SpoolError

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown to a second uid")


def test_group_or_world_writable_spool_is_refused(tmp_path):
    spool = tmp_path / "s" / "spool"
    spool.mkdir(parents=True)
    spool.chmod(0o777)
    with pytest.raises(SpoolError, match="writable by group or others"):
        _daemon(tmp_path / "s")


@ROOT_ONLY
def test_spool_owned_by_another_user_is_refused(tmp_path):
    spool = tmp_path / "s" / "spool"
    spool.mkdir(parents=True)
    os.chown(spool, 65534, 65534)
    spool.chmod(0o700)
    with pytest.raises(SpoolError, match="owned by uid 65534"):
        _daemon(tmp_path / "s")


def test_spool_that_is_a_symlink_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "spool").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SpoolError, match="not a directory"):
        _daemon(tmp_path / "s")


def test_hook_never_writes_through_a_planted_seq_symlink(tmp_path):
    target = tmp_path / "victim"
    target.write_text("precious\n")
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    (spool / ".seq").symlink_to(target)
    r = run_hook(up_env(), spool, "--no-chain")
    assert r.returncode == 0 and b"cannot write record" in r.stderr
    assert target.read_text() == "precious\n"


@ROOT_ONLY
def test_hook_refuses_a_spool_it_does_not_own(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o777)
    os.chown(spool, 65534, 65534)
    r = run_hook(up_env(), spool, "--no-chain")
    assert r.returncode == 0 and b"cannot write record" in r.stderr
    assert not list(spool.glob("*.rec"))


@pytest.mark.parametrize("kind", ["fifo", "symlink-to-dev-zero", "symlink-to-record", "huge"])
def test_odd_files_named_rec_are_set_aside_without_blocking(tmp_path, kind):
    d = _daemon(tmp_path / "s")
    odd = d.spool.path / "1000000000001-1.rec"
    if kind == "fifo":
        os.mkfifo(odd)
    elif kind == "symlink-to-dev-zero":
        odd.symlink_to("/dev/zero")
    elif kind == "symlink-to-record":
        real = tmp_path / "real.rec"
        real.write_text("export PLUTO_VERB='up-host'\n# nhrpbridge-end\n")
        odd.symlink_to(real)
    else:
        with open(odd, "wb") as f:
            f.truncate(64 * 1024 * 1024)          # sparse: costs no disk
    write_record(d.spool.path, 2, up_env())
    assert d.ingest_once() == 1                   # returns: never blocks, never reads 64 MiB
    assert len(d.db.links) == 1
    assert os.path.lexists(d.spool.path / "bad" / odd.name)


# ---- one daemon per state directory; a busy socket is not a stale one -------------

def test_second_daemon_on_the_same_state_dir_touches_nothing(tmp_path):
    first = Daemon(Config.for_state_dir(tmp_path / "s"))
    first.lock_state_dir()
    first.load_state()
    name = write_record(first.spool.path, 1, up_env())
    r = subprocess.run([os.sys.executable, "-m", "nhrpbridge", "serve", "--state-dir",
                        str(tmp_path / "s"), "--no-pluto"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1 and "in use by another nhrpbridge" in r.stderr
    assert (first.spool.path / name).exists()                # not consumed
    assert not (tmp_path / "s" / "state.json").exists()


def test_socket_with_a_full_backlog_is_not_taken_over(tmp_path):
    import socket as so

    from nhrpbridge.errors import SocketInUse
    from nhrpbridge.unixsock import bind_unix
    path = str(tmp_path / "live.sock")
    live = so.socket(so.AF_UNIX, so.SOCK_STREAM)
    live.bind(path)
    live.listen(0)
    fillers = []
    for _ in range(8):                           # fill the accept queue: connect gets EAGAIN
        c = so.socket(so.AF_UNIX, so.SOCK_STREAM)
        c.setblocking(False)
        try:
            c.connect(path)
        except BlockingIOError:
            break
        fillers.append(c)
    with pytest.raises(SocketInUse):
        bind_unix(path, 0o600)
    assert os.path.exists(path)
    live.close()
    for c in fillers:
        c.close()


# ---- signals, the certificate store, certutil ----------------------------------------

import signal

from certgen import der, make_ca, make_cert
from conftest import DaemonProc, wait_until

from nhrpbridge.authorize import Authorizer
from nhrpbridge.certs import CertStore


def test_sighup_does_not_kill_the_daemon_and_reloads_the_store(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    d = DaemonProc(tmp_path / "s", "--cert-store", str(store)).start()
    try:
        ca = make_ca()
        (store / "spoke1.der").write_bytes(der(make_cert(ca, "spoke1", ips=["203.0.113.11"])[1]))
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded: " in d.log.read_text(), what="reload log")
        assert d.proc.poll() is None
        assert f"certificate store {store}: 1 certificates" in d.log.read_text()
    finally:
        d.stop()
    assert d.proc.returncode == 0


def _duplicate_extension_cert() -> bytes:
    """A certificate with two subjectAltName extensions: issuerAltName's OID bytes
    (2.5.29.18) patched to subjectAltName's (2.5.29.17); same length, DER stays valid."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    ca_key, ca_cert = make_ca()
    _, cert = make_cert((ca_key, ca_cert), "dup", ips=["203.0.113.50"])
    b = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
         .public_key(cert.public_key()).serial_number(7)
         .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc)
         .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
             ipaddress.ip_address("203.0.113.50"))]), critical=False)
         .add_extension(x509.IssuerAlternativeName([x509.IPAddress(
             ipaddress.ip_address("203.0.113.50"))]), critical=False))
    raw = der(b.sign(ca_key, hashes.SHA256()))
    assert raw.count(b"\x06\x03\x55\x1d\x12") == 1
    return raw.replace(b"\x06\x03\x55\x1d\x12", b"\x06\x03\x55\x1d\x11")


def test_store_certificate_with_a_duplicated_extension_is_skipped(tmp_path):
    ca = make_ca()
    (tmp_path / "dup.der").write_bytes(_duplicate_extension_cert())
    (tmp_path / "good.der").write_bytes(der(make_cert(ca, "good", ips=["203.0.113.11"])[1]))
    store = CertStore(str(tmp_path)).load()
    assert [p.path for p in store.problems] == [str(tmp_path / "dup.der")]
    assert sum(len(v) for v in store.by_subject.values()) == 1


def test_certutil_never_runs_on_the_event_loop(tmp_path, monkeypatch):
    """A certutil that hangs (a locked NSS database) must not stall the loop."""
    gate, done = tmp_path / "gate", tmp_path / "done"
    certutil = tmp_path / "bin" / "certutil"
    certutil.parent.mkdir()
    ca = make_ca()
    (tmp_path / "me.der").write_bytes(der(make_cert(ca, "me")[1]))
    certutil.write_text(f"#!/bin/sh\ni=0\nwhile [ ! -e {gate} ] && [ $i -lt 100 ]; do sleep 0.05; "
                        f"i=$((i+1)); done\ncat {tmp_path / 'me.der'}\ntouch {done}\n")
    certutil.chmod(0o755)
    d = _daemon(tmp_path / "s")
    auth = Authorizer(d.cfg.connections, d.db, d.bus, None, None, str(tmp_path / "nss"), "me")
    monkeypatch.setenv("PATH", f"{certutil.parent}:{os.environ['PATH']}")

    async def scenario():
        first = auth.local_cert()                  # returns at once: certutil is waiting
        assert first is None and not done.exists()
        gate.touch()
        await asyncio.wait_for(auth._refreshing, 10)
        return auth.local_cert()
    assert asyncio.run(scenario()) == (tmp_path / "me.der").read_bytes()


# ---- every API line is valid JSON in valid UTF-8 -------------------------------------

import socket as _socket

NB_CLI = [os.sys.executable, "-m", "nhrpbridge"]


def _api_lines(where, request: bytes, want: int = 1) -> list[bytes]:
    """Lines of the API's answer; `where` is a socket path or a MemoryDaemon."""
    if isinstance(where, str):
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(where)
    else:
        s = where.connect()
    s.sendall(request)
    buf = b""
    while buf.count(b"\n") < want:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return buf.splitlines()


def test_non_utf8_peer_id_gives_valid_utf8_everywhere(tmp_path):
    d = DaemonProc(tmp_path / "s").start()
    try:
        run_hook(up_env(peer_id="CN=sp\udcffke"), tmp_path / "s" / "spool", "--no-chain")
        wait_until(lambda: b"sp" in b"".join(_api_lines(d.socket, b'{"op":"list","id":1}\n')),
                   what="the SA in the list")
        for line in _api_lines(d.socket, b'{"op":"list","id":1}\n'):
            msg = json.loads(line.decode("utf-8"))           # strict UTF-8, valid JSON
        assert "CN=sp\udcffke" in json.dumps(msg, ensure_ascii=False)
        for args in (["status"], ["status", "--json"]):
            r = subprocess.run(NB_CLI + args + ["--state-dir", str(tmp_path / "s")],
                               capture_output=True, timeout=30)
            assert r.returncode == 0, r.stderr
            r.stdout.decode("utf-8")
            assert b"sp" in r.stdout and b"Traceback" not in r.stderr
    finally:
        d.stop()


def test_lone_surrogate_in_a_request_id_gets_a_reply(memd):
    memd.start()
    lines = _api_lines(memd, b'{"op":"list","id":"\\ud800"}\n{"op":"list","id":2}\n', want=2)
    replies = [json.loads(l.decode("utf-8")) for l in lines]
    assert [r.get("id") for r in replies if r.get("type") == "reply"] == ["\ud800", 2]
    assert "Traceback" not in memd.log_text() and "ERROR" not in memd.log_text()


# ---- one oversized SA over VICI hides no other, and stops no publishing -----------------

from nhrpbridge.protocol.vici import Decoder as ViciDecoder
from nhrpbridge.viciserver import ViciServer


class _Collect:
    """A sink (push_event) and a VICI connection (event) that record what they get."""

    closed = False

    def __init__(self, events=()):
        self.events = set(events)
        self.got = []
        self.writer = self                   # the dump asks how much waits in the socket
        self.backlog = self

    @staticmethod
    def buffered():
        return 0

    def event(self, name, data):
        if name in self.events:
            self.got.append((name, data))

    def push_event(self, ev):
        self.got.append(ev.seq)

    def push_notice(self, msg):
        pass


def _child(peer, spi, remote_id):
    return ChildUp("dmvpn", "dmvpn", "198.51.100.1", peer, "@hub", remote_id,
                   spi_in=spi, spi_out=spi + 1, source="test")


def test_oversized_sa_is_skipped_in_list_sas_and_events_go_on(tmp_path):
    d = _daemon(tmp_path / "s")
    vici = ViciServer(d.db, d, d.listen, str(tmp_path / "vici"), 0o660, "", frozenset())
    d.bus.add_sink(vici)
    listener = _Collect({"child-updown", "list-sa"})
    vici.connections.add(listener)
    api = _Collect()
    d.bus.add_sink(api)
    d.apply(_child("198.51.100.11", 0x10, "@spoke1"))
    d.apply(_child("198.51.100.12", 0x20, "x" * 70000))     # over VICI's 64 KiB per value
    d.apply(_child("198.51.100.13", 0x30, "@spoke3"))
    assert api.got == list(range(1, d.db.seq + 1))             # no gap for the API sink
    assert len([n for n, _ in listener.got if n == "child-updown"]) == 2
    listener.got.clear()
    asyncio.run(vici.cmd_list_sas(listener, {}))
    hosts = []
    for _, data in listener.got:
        dec = ViciDecoder()
        dec.feed(data)
        while (pkt := dec.next_packet()) is not None:
            for section in pkt.message.values():
                hosts.append(section["remote-host"])
    assert sorted(h.decode() if isinstance(h, bytes) else h for h in hosts) == [
        "198.51.100.11", "198.51.100.13"]


# ---- forged pluto log lines -------------------------------------------------------

from nhrpbridge.sources.logfollow import FileFollower, JournalFollower

FORGED_IKE = ("Dec  3 07:00:00 hub pluto[4242]: \"dmvpn\"[9] 198.51.100.66 #90: responder "
              "established IKE SA; authenticated peer certificate 'C=XX, O=DMVPN Lab, CN=spoke1."
              "dmvpn.example' and 2048-bit RSASSA-PSS with SHA2_512 digital signature issued by "
              "'C=XX, O=DMVPN Lab, CN=DMVPN Lab CA'")
FORGED_CHILD = ("Dec  3 07:00:00 hub pluto[4242]: \"dmvpn\"[9] 198.51.100.66 #91: responder "
                "established Child SA using #90; IPsec transport [198.51.100.1/32/GRE/0===198.51"
                ".100.66/32/GRE/0] {ESP/ESN=>0x0000abcd <0x0000dcba xfrm=AES_GCM_16_256 DPD=active}")


def test_syslog_lines_never_create_an_sa_that_authorization_accepts(tmp_path):
    d = _daemon(tmp_path / "s")
    d.apply_log_lines([FORGED_IKE, FORGED_CHILD], trusted=True)      # even in a root-only file
    assert not d.db.ike_sas and not d.db.child_sas and not d.db.links
    decision = Authorizer(d.cfg.connections, d.db, d.bus).authorize(
        "dmvpn", "198.51.100.66", "203.0.113.11")
    assert decision["decision"] == "reject"


def test_syslog_lines_never_take_a_real_link_down(tmp_path):
    d = _daemon(tmp_path / "s")
    write_record(d.spool.path, 1, up_env(peer="198.51.100.11", spi_in="0x10", spi_out="0x11"))
    d.ingest_once()
    d.apply_log_lines([
        'Dec  3 07:00:01 hub pluto[4242]: "dmvpn"[2] 198.51.100.11 #5: ESP traffic information: '
        "in=0B out=0B",
        'Dec  3 07:00:01 hub pluto[4242]: "dmvpn"[2] 198.51.100.11 #4: deleting IKE SA '
        "(established IKE SA)"], trusted=True)
    assert [l.up for l in d.db.links.values()] == [True]


def test_untrusted_lines_may_still_annotate_what_the_hook_reported(tmp_path):
    d = _daemon(tmp_path / "s")
    # the hook's SPI_IN is the log's "=>" (outbound) SPI: pluto swaps the names
    write_record(d.spool.path, 1, up_env(peer="198.51.100.11", spi_in="0x0000abcd",
                                         spi_out="0x0000dcba"))
    d.ingest_once()
    line = FORGED_CHILD.replace("198.51.100.66", "198.51.100.11")
    d.apply_log_lines([line], trusted=False)
    (child,) = d.db.child_sas.values()
    assert child.serial == 91                                # the annotation was taken
    assert len(d.db.child_sas) == 1 and len(d.db.links) == 1


def test_logfile_writable_by_others_is_not_trusted(tmp_path):
    log = tmp_path / "pluto.log"
    log.write_text("")
    f = FileFollower(str(log))
    f.restore(None)
    assert f.trusted()
    log.chmod(0o666)
    assert not f.trusted()
    f.stop()


@pytest.mark.parametrize("entry, ok", [
    ({"_UID": "0", "_COMM": "pluto"}, True),
    ({"_UID": "0", "_SYSTEMD_UNIT": "ipsec.service", "_COMM": "pluto"}, True),
    ({"_UID": "1000", "_COMM": "logger"}, False),           # logger -t pluto
    ({"_UID": "1000", "_COMM": "pluto"}, False),            # a user's own binary named pluto
    ({"_UID": "0", "_COMM": "logger"}, False),              # root's logger is not pluto either
    ({"SYSLOG_IDENTIFIER": "pluto"}, False),
])
def test_journal_entries_count_only_by_trusted_fields(entry, ok):
    assert JournalFollower.written_by_pluto(entry) is ok


def test_journal_follower_skips_forged_entries(tmp_path):
    fake = tmp_path / "journalctl"
    entries = [{"MESSAGE": FORGED_IKE.split(": ", 1)[1], "_UID": "1000", "_COMM": "logger",
                "__CURSOR": "c1"},
               {"MESSAGE": "real", "_UID": "0", "_COMM": "pluto", "__CURSOR": "c2"}]
    fake.write_text("#!/bin/sh\n" + "".join(f"echo '{json.dumps(e)}'\n" for e in entries)
                    + "exec sleep 30\n")
    fake.chmod(0o755)
    got = []
    jf = JournalFollower(str(fake))

    async def scenario():
        await jf.start(lambda lines, trusted: got.append((lines, trusted)), None)
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        await jf.aclose()
    asyncio.run(scenario())
    assert got == [(["real"], True)] and jf.forged == 1 and jf.cursor == "c2"


# ---- descriptors and memory: connection limits, one pool for all clients -------------

from test_backlog import StandInTransport

from nhrpbridge.backlog import SOFT, Backlog, Pool
from nhrpbridge.listen import MAX_CLIENTS_PER_UID

FLOOD = """
import socket, sys
path, n = sys.argv[1], int(sys.argv[2])
socks, refused = [], 0
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    socks.append(s)
for s in socks:
    s.settimeout(5)
    try:
        s.sendall(b'{"op":"hello","version":1}\\n')
        refused += s.recv(100) == b""
    except OSError:
        refused += 1
print(refused)
"""


def test_idle_connections_are_limited_per_uid():
    import tempfile
    tmp_path = Path(tempfile.mkdtemp(prefix="nb-flood-"))     # reachable by uid 65534
    tmp_path.chmod(0o755)
    d = DaemonProc(tmp_path / "s").start()
    try:
        limit = MAX_CLIENTS_PER_UID
        argv = [os.sys.executable, "-c", FLOOD, d.socket, str(limit + 5)]
        if os.geteuid() == 0:                  # root is bound by the total only: use nobody
            os.chmod(d.socket, 0o666)
            os.chmod(tmp_path / "s", 0o755)
            argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + argv
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert int(r.stdout) == 5
        assert "refused a connection" in d.log.read_text()
        # the daemon still applies records and serves new clients after the flood
        run_hook(up_env(), tmp_path / "s" / "spool", "--no-chain")
        wait_until(lambda: b"198.51.100.11" in b"".join(
            _api_lines(d.socket, b'{"op":"list","id":1}\n')), what="the record applied")
    finally:
        d.stop()
        import shutil
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_pending_bytes_of_all_clients_have_one_bound():
    pool = Pool(limit=3 * SOFT)
    dropped = []
    clients = []
    for i in range(5):
        t = StandInTransport()
        clients.append((t, Backlog(t, lambda why, i=i: (dropped.append(i), clients[i][1].cancel()),
                                   pool)))
    for t, b in clients:                       # each alone stays under its own soft limit...
        t.pending = SOFT + 1
        b.allowance = SOFT                     # (as after a subscribe dump)
        b.wrote(SOFT + 1)
    assert dropped == [2, 3, 4]                # ...but together they may not pass the pool
    for t, b in clients:
        b.cancel()
    assert pool.pending == 0


def test_out_of_descriptors_is_retry_later_never_a_bad_record(tmp_path):
    d = _daemon(tmp_path / "s")
    name = write_record(d.spool.path, 1, up_env())
    real = d.spool.read

    def no_fds(n):
        raise OSError(errno.EMFILE, "Too many open files")
    d.spool.read = no_fds
    assert d.ingest_once() == 0
    assert (d.spool.path / name).exists() and not list((d.spool.path / "bad").iterdir())
    d.spool.read = real
    assert d.ingest_once() == 1 and len(d.db.links) == 1

"""Pluto log parsing: each event kind in libreswan 4.x and 5.x wording."""
import pytest
from conftest import SAMPLES
from hypothesis import given, settings
from hypothesis import strategies as st

from nhrpbridge.loginterp import LogInterpreter
from nhrpbridge.plutolog import Notice, parse_line
from nhrpbridge.replay import parse_updown_log_line
from nhrpbridge.sa import ChildDown, ChildUp, IkeDown, IkeUp
from nhrpbridge.sadb import SaDatabase
from nhrpbridge.updown import parse_updown_env

CERT4 = ("\"dmvpn\"[1] 192.0.2.11 #1: responder established IKE SA; authenticated peer "
         "'2048-bit RSASSA-PSS with SHA2_512' digital signature using peer certificate "
         "'C=XX, O=DMVPN Lab, CN=spoke1.dmvpn.example' issued by CA 'C=XX, O=DMVPN Lab, CN=DMVPN Lab CA'")
CERT5 = ("\"ikev2-x509\" #1: initiator established IKE SA; authenticated peer certificate "
         "'C=CA, O=Libreswan, CN=east.testing.libreswan.org, E=user-east@testing.libreswan.org' and "
         "3072-bit RSASSA-PSS with SHA2_512 digital signature issued by "
         "'C=CA, O=Libreswan, CN=Libreswan test CA for mainca, E=testing@libreswan.org'")

CASES = [
    # (version, line, kind, conn, instance, peer, serial, expected data subset)
    ("4", "Nov 30 00:21:51.074335: " + CERT4, "ike-established", "dmvpn", 1, "192.0.2.11", 1,
     {"auth": "cert", "subject": "C=XX, O=DMVPN Lab, CN=spoke1.dmvpn.example",
      "issuer": "C=XX, O=DMVPN Lab, CN=DMVPN Lab CA", "initiator": False}),
    ("5", CERT5, "ike-established", "ikev2-x509", None, None, 1,
     {"auth": "cert", "subject": "C=CA, O=Libreswan, CN=east.testing.libreswan.org, "
      "E=user-east@testing.libreswan.org", "initiator": True,
      "issuer": "C=CA, O=Libreswan, CN=Libreswan test CA for mainca, E=testing@libreswan.org"}),
    ("4", "\"hub\" #1: initiator established IKE SA; authenticated peer using authby=secret and "
          "ID_FQDN '@hub'", "ike-established", "hub", None, None, 1,
     {"auth": "secret", "id": "@hub", "idtype": "ID_FQDN"}),
    ("5", "\"east\" #1: responder established IKE SA; authenticated peer using authby=secret and "
          "FQDN '@east'", "ike-established", "east", None, None, 1, {"id": "@east"}),
    ("4", "\"dmvpn\"[2] 198.51.100.11 #2: responder established Child SA using #1; IPsec transport "
          "[198.51.100.1-198.51.100.1:0-65535 47] -> [198.51.100.11-198.51.100.11:0-65535 47] "
          "{ESP/ESN=>0xa102364e <0x057e50fc xfrm=AES_GCM_16_256-NONE DPD=passive}",
     "child-established", "dmvpn", 2, "198.51.100.11", 2,
     {"ike": 1, "spi_out": 0xa102364e, "spi_in": 0x057e50fc, "mode": "TRANSPORT",
      "local-ts": "198.51.100.1", "remote-ts": "198.51.100.11"}),
    ("5", "\"dmvpn\"[3] 198.51.100.11 #4: responder established Child SA using #3; IPsec transport "
          "[198.51.100.1/32/GRE/0===198.51.100.11/32/GRE/0] {ESP/ESN=>0x1a2b3c4d <0x5e6f7a8b "
          "xfrm=AES_GCM_16_256 DPD=passive}", "child-established", "dmvpn", 3, "198.51.100.11", 4,
     {"ike": 3, "spi_out": 0x1a2b3c4d, "spi_in": 0x5e6f7a8b, "local-ts": "198.51.100.1",
      "remote-ts": "198.51.100.11"}),
    ("5", "\"north-any-east\"[1] 192.1.3.33 #2: responder established Child SA using #1; IPsec "
          "tunnel [192.0.2.0/24===192.0.2.101/32] {ESP/ESN=>0x00000001 <0x00000002 xfrm=AES_GCM_16_256 "
          "DPD=passive}", "child-established", "north-any-east", 1, "192.1.3.33", 2,
     {"mode": "TUNNEL"}),
    ("4", "\"ipv4\" #3: initiator rekeyed Child SA #2 using #1; IPsec transport [192.1.2.45-192.1.2.45:"
          "0-65535 0] -> [192.1.2.23-192.1.2.23:0-65535 0] {ESP/ESN=>0x000000aa <0x000000bb "
          "xfrm=3DES_CBC-HMAC_SHA2_256_128-MODP2048 DPD=passive}", "child-rekeyed", "ipv4", None,
     None, 3, {"old": 2, "spi_out": 0xaa, "spi_in": 0xbb}),
    ("5", "\"ipv4\" #3: initiator rekeyed Child SA #2 using #1; IPsec transport [192.1.2.45/32==="
          "192.1.2.23/32] {ESP/ESN=>0x000000aa <0x000000bb xfrm=3DES_CBC-HMAC_SHA2_256_128-DH19 "
          "DPD=passive}", "child-rekeyed", "ipv4", None, None, 3, {"old": 2, "ike": 1}),
    ("4", "\"w\" #4: initiator rekeyed IKE SA #1 {cipher=AES_GCM_16_256 integ=n/a prf=HMAC_SHA2_512 "
          "group=MODP2048}", "ike-rekeyed", "w", None, None, 4, {"old": 1}),
    ("5", "\"w\" #4: initiator rekeyed IKE SA #1 {cipher=AES_GCM_16_256 integ=n/a prf=HMAC_SHA2_512 "
          "ke=DH19}", "ike-rekeyed", "w", None, None, 4, {"old": 1}),
    ("4", "002 \"w\" #1: deleting state (STATE_V2_ESTABLISHED_IKE_SA) and sending notification",
     "ike-deleted", "w", None, None, 1, {"notify": True}),
    ("4", "\"dmvpn\"[2] 198.51.100.11 #1: deleting state (STATE_V2_ESTABLISHED_IKE_SA) aged "
          "4.605307s and NOT sending notification", "ike-deleted", "dmvpn", 2, "198.51.100.11", 1,
     {"notify": False}),
    ("5", "\"w\" #1: deleting IKE SA (established IKE SA)", "ike-deleted", "w", None, None, 1, {}),
    ("4", "\"w\" #2: ESP traffic information: in=84B out=84B", "child-deleted", "w", None, None, 2, {}),
    ("4", "\"ipv4\" #2: deleting established Child SA using IKE SA #1", "child-deleted", "ipv4",
     None, None, 2, {}),
    ("5", "\"ipv4\" #2: sent INFORMATIONAL request to delete established Child SA using IKE SA #1",
     "child-deleted", "ipv4", None, None, 2, {}),
    ("4", "\"w\" #1: STATE_V2_ESTABLISHED_IKE_SA: 10 second timeout exceeded after 5 retransmits.  "
          "No response (or no acceptable response) to our IKEv2 message", "liveness-timeout", "w",
     None, None, 1, {"seconds": 10.0}),
    ("5", "\"w\" #1: ESTABLISHED_IKE_SA: 5 second timeout exceeded after 4 retransmits.  No response "
          "(or no acceptable response) to our IKEv2 message", "liveness-timeout", "w", None, None, 1,
     {"seconds": 5.0}),
    ("4", "\"dmvpn\"[4] 192.0.2.12 #9: deleting IKE SA but connection is supposed to remain up; "
          "schedule EVENT_REVIVE_CONNS", "ike-deleted", "dmvpn", 4, "192.0.2.12", 9, {"revive": True}),
    ("5", "\"w\" #2: connection is supposed to remain up; revival attempt 1 scheduled in 0 seconds",
     "revival", "w", None, None, 2, {}),
    ("4", "\"w\" #1: liveness action - putting connection into hold", "liveness-action", "w", None,
     None, 1, {}),
    ("4", "\"dmvpn\"[1] 192.0.2.11: deleting connection instance with peer 192.0.2.11 "
          "{isakmp=#0/ipsec=#0}", "instance-deleted", "dmvpn", 1, "192.0.2.11", None, {}),
    ("5", "\"dmvpn\"[1] 192.0.2.11: deleting connection instance with peer 192.0.2.11",
     "instance-deleted", "dmvpn", 1, "192.0.2.11", None, {}),
    ("4", "\"dmvpn\"[1] 198.51.100.11 #1: switched to \"dmvpn\"[2] 198.51.100.11", "switched",
     "dmvpn", 1, "198.51.100.11", 1, {"to-conn": "dmvpn", "to-instance": 2}),
    ("4", "\"hub\" #1: sent IKE_SA_INIT request to 198.51.100.1:500", "ike-init", "hub", None, None,
     1, {"addr": "198.51.100.1", "port": 500}),
    ("4", "\"dmvpn\": route-host command exited with status 1", "updown-failed", "dmvpn", None,
     None, None, {"verb": "route-host", "status": 1}),
    ("5", "warning: \"w\" #2: command \"up\": exited with status 1", "updown-failed", "w", None,
     None, 2, {"verb": "up", "status": 1, "severity": "warning"}),
]


@pytest.mark.parametrize("version, line, kind, conn, inst, peer, serial, data", CASES,
                         ids=[f"{c[0]}.x-{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_line_kinds(version, line, kind, conn, inst, peer, serial, data):
    p = parse_line(line)
    assert p is not None, line
    assert (p.kind, p.conn, p.instance, p.peer, p.serial) == (kind, conn, inst, peer, serial)
    for k, v in data.items():
        assert p.data[k] == v, k


def test_every_kind_has_4x_and_5x_cases():
    kinds = {}
    for c in CASES:
        kinds.setdefault(c[2], set()).add(c[0])
    for kind, versions in kinds.items():
        # same text in both; 4.x says revival inside its ike-deleted line (revive=True)
        if kind not in ("switched", "ike-init", "liveness-action", "revival"):
            assert versions == {"4", "5"}, kind


@pytest.mark.parametrize("prefix", ["", "Nov 30 00:21:51.074335: ",
                                    "Nov 30 00:21:51 hub pluto[827]: ",
                                    "2026-11-30T00:21:51.074335+00:00 hub pluto[827]: ", "003 "])
def test_prefixes(prefix):
    p = parse_line(prefix + CERT4)
    assert p is not None and p.kind == "ike-established" and p.serial == 1


@pytest.mark.parametrize("junk", ["", "\n", "Pluto is shutting down", "| debug \"x\" #1: established",
                                  "\"unterminated", "\"x\" #notanumber: deleting IKE SA",
                                  "\xff\xfe\x00 garbage \"a\" #1:", "\"a\"[1] zz #1: frobnicated"])
def test_garbage_is_ignored(junk):
    assert parse_line(junk) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_never_raises(text):
    parse_line(text)
    parse_line('"c"[1] 1.2.3.4 #5: ' + text)


def test_5x_line_on_a_4x_setup_is_understood():
    it = LogInterpreter()
    out = []
    for line in (open(SAMPLES / "lab" / "initiate-hub-pluto.log").read().splitlines()[:60]
                 + [CASES[5][1], '"dmvpn"[3] 198.51.100.11 #4: ESP traffic information: in=1B out=1B']):
        p = parse_line(line)
        if p:
            out += it.feed(p)
    assert any(isinstance(c, ChildUp) and c.serial == 4 and c.spi_out == 0x1a2b3c4d for c in out)
    assert any(isinstance(c, ChildDown) and c.serial == 4 for c in out)


def _interpret(path):
    it = LogInterpreter()
    out = []
    for line in open(path, encoding="utf-8", errors="replace"):
        p = parse_line(line)
        if p:
            out += it.feed(p)
    return out


def test_real_hub_log_gives_ike_and_children_with_serials():
    out = _interpret(SAMPLES / "lab" / "initiate-hub-pluto.log")
    ups = [c for c in out if isinstance(c, IkeUp)]
    assert [(u.remote_host, u.serial, u.instance, u.remote_id) for u in ups] == [
        ("198.51.100.11", 1, 2, "@spoke1"), ("198.51.100.12", 3, 4, "@spoke2")]
    kids = [c for c in out if isinstance(c, ChildUp)]
    assert [(k.local_host, k.remote_host, k.serial, k.ike_serial, hex(k.spi_out)) for k in kids] == [
        ("198.51.100.1", "198.51.100.11", 2, 1, "0x96b21f90"),
        ("198.51.100.1", "198.51.100.12", 4, 3, "0x7e314422")]
    assert [c.serial for c in out if isinstance(c, IkeDown)] == [1, 3]


def test_permanent_conn_initiator_peer_comes_from_ike_sa_init():
    out = _interpret(SAMPLES / "lab" / "initiate-spoke1-pluto.log")
    ups = [c for c in out if isinstance(c, IkeUp)]
    assert [(u.conn_name, u.remote_host, u.remote_port) for u in ups] == [
        ("hub", "198.51.100.1", 500), ("spoke2", "198.51.100.12", 500)]


def test_hook_and_log_reporting_the_same_sa_gives_one_set_of_events():
    """Real hub data: hook records and log lines, interleaved as they happen."""
    db = SaDatabase()
    hook = [parse_updown_env(parse_updown_log_line(l)) for l in
            open(SAMPLES / "lab" / "initiate-hub-updown.log").read().splitlines() if l]
    log = _interpret(SAMPLES / "lab" / "initiate-hub-pluto.log")
    events = []
    # pluto runs updown before it logs "established Child SA"; the log's IKE line comes first
    order = [log[0], hook[0], log[1], log[2], hook[3], log[3]] + hook[6:] + log[4:]
    for change in order:
        if change is not None and not isinstance(change, Notice):
            events += db.apply(change, 0)
    kinds = [e.kind for e in events]
    assert kinds.count("child-up") == 2 and kinds.count("link-up") == 2
    assert kinds.count("child-down") == 2 and kinds.count("link-down") == 2
    assert kinds.count("ike-up") == 2 and kinds.count("ike-down") == 2
    assert not db.links and not db.child_sas and not db.ike_sas


def test_liveness_failure_brings_link_down_without_the_hook():
    db = SaDatabase()
    it = LogInterpreter()
    lines = [
        '"dmvpn"[2] 198.51.100.11 #1: responder established IKE SA; authenticated peer using '
        "authby=secret and ID_FQDN '@spoke1'",
        '"dmvpn"[2] 198.51.100.11 #2: responder established Child SA using #1; IPsec transport '
        "[198.51.100.1-198.51.100.1:0-65535 47] -> [198.51.100.11-198.51.100.11:0-65535 47] "
        "{ESP/ESN=>0x96b21f90 <0xd4515cb6 xfrm=AES_GCM_16_256-NONE DPD=active}",
        '"dmvpn"[2] 198.51.100.11 #1: STATE_V2_ESTABLISHED_IKE_SA: 15 second timeout exceeded '
        "after 5 retransmits.  No response (or no acceptable response) to our IKEv2 message",
        '"dmvpn"[2] 198.51.100.11 #1: liveness action - clearing connection kind CK_INSTANCE',
        '"dmvpn"[2] 198.51.100.11 #1: deleting state (STATE_V2_ESTABLISHED_IKE_SA) aged 60.1s '
        "and NOT sending notification",
    ]
    events, notices = [], []
    for line in lines:
        for item in it.feed(parse_line(line)):
            if isinstance(item, Notice):
                notices.append(item.kind)
            else:
                events += db.apply(item, 0)
    assert [e.kind for e in events] == ["ike-up", "child-up", "link-up", "child-down",
                                        "link-down", "ike-down"]
    assert notices == ["liveness-timeout", "liveness-action"]


def test_rekeys_keep_ids_and_follow_serials():
    db = SaDatabase()
    it = LogInterpreter()
    for line in [
        '"dmvpn"[2] 198.51.100.11 #1: responder established IKE SA; authenticated peer using '
        "authby=secret and ID_FQDN '@spoke1'",
        '"dmvpn"[2] 198.51.100.11 #2: responder established Child SA using #1; IPsec transport '
        "[198.51.100.1-198.51.100.1:0-65535 47] -> [198.51.100.11-198.51.100.11:0-65535 47] "
        "{ESP/ESN=>0x00000001 <0x00000002 xfrm=AES_GCM_16_256-NONE DPD=passive}",
        '"dmvpn"[2] 198.51.100.11 #3: responder rekeyed IKE SA #1 {cipher=AES_GCM_16_256}',
        '"dmvpn"[2] 198.51.100.11 #4: responder rekeyed Child SA #2 using #3; IPsec transport '
        "[198.51.100.1-198.51.100.1:0-65535 47] -> [198.51.100.11-198.51.100.11:0-65535 47] "
        "{ESP/ESN=>0x00000005 <0x00000006 xfrm=AES_GCM_16_256-NONE DPD=passive}",
    ]:
        for item in it.feed(parse_line(line)):
            db.apply(item, 0)
    (ike,) = db.ike_sas.values()
    (child,) = db.child_sas.values()
    assert ike.uniqueid == 1 and ike.serial == 3
    assert child.uniqueid == 1 and child.serial == 4 and (child.spi_in, child.spi_out) == (6, 5)
    assert len(db.links) == 1


@pytest.mark.parametrize("text, nat", [
    # the initiator's line, the same on 4.10 and 5.2 (lab NAT probe, spoke behind MASQUERADE)
    ('Dec  4 00:35:44.374747: "dmvpn" #2: IKE_AUTH response rejected Child SA with '
     'TS_UNACCEPTABLE', False),
    # the responder's, 4.10, for a peer that came through NAT (port 4500)
    ('Dec  4 00:36:05.045500: "dmvpn"[1] 198.51.100.20 #3: responding to CREATE_CHILD_SA '
     'message (ID 2) from 198.51.100.20:4500 with encrypted notification TS_UNACCEPTABLE', True),
])
def test_refused_traffic_selectors_are_a_warning_naming_the_nat_fix(text, nat):
    line = parse_line(text)
    assert line is not None and line.kind == "ts-unacceptable"
    [notice] = LogInterpreter().feed(line)
    assert isinstance(notice, Notice) and notice.kind == "ts-unacceptable"
    assert "narrowing=yes" in notice.text and "rightsubnet=" in notice.text
    assert ("the peer talks NAT-T" in notice.text) == nat
    if nat:
        assert notice.peer == "198.51.100.20"

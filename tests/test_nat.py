"""A peer behind NAT: its Child SA sits on render's NAT conn `T-nat`, whose peer ID is the
peer's post-NAT address, while its IKE SA (on `T`) carries the certificate's ID. The link
must be the peer's, keyed by that certificate ID, whatever source speaks first.

The pluto lines and whack output are those of the lab's probe (hub 198.51.100.1, spoke
s4 192.0.2.14 behind a MASQUERADE router 198.51.100.20), libreswan 4.10 and 5.2."""
import pytest
from certgen import make_ca, make_cert, pem
from conftest import up_env

from nhrpbridge.authorize import Authorizer
from nhrpbridge.bus import Bus
from nhrpbridge.certs import CertStore
from nhrpbridge.loginterp import LogInterpreter
from nhrpbridge.pluto import parse_showstates, parse_trafficstatus, pluto_view
from nhrpbridge.plutolog import parse_line
from nhrpbridge.sa import Reconcile
from nhrpbridge.sadb import SaDatabase
from nhrpbridge.updown import parse_updown_env, profile_of
from nhrpbridge.wire import ike_message

HUB, NAT, INSIDE = "198.51.100.1", "198.51.100.20", "192.0.2.14"
S4 = "C=XX, O=DMVPN Lab, CN=s4.dmvpn.example"
IKE4 = (f'Dec  4 02:52:48.004369: "dmvpn"[2] {NAT} #3: responder established IKE SA; '
        "authenticated peer '2048-bit RSASSA-PSS with SHA2_512' digital signature using peer "
        f"certificate '{S4}' issued by CA 'C=XX, O=DMVPN Lab, CN=DMVPN Lab CA'")
CHILD4 = (f'Dec  4 02:52:48.452485: "dmvpn-nat"[1] {NAT} #4: responder established Child SA '
          f"using #3; IPsec transport [{HUB}-{HUB}:0-65535 47] -> [{INSIDE}-{INSIDE}:0-65535 47] "
          "{ESPinUDP/ESN=>0x4bf2c0a5 <0x2cc39e70 xfrm=AES_GCM_16_256-NONE NATD=198.51.100.20:4500 "
          "DPD=passive}")
IKE5 = (f'Dec  4 02:53:12.071779: "dmvpn"[2] {NAT} #3: responder established IKE SA; '
        f"authenticated peer certificate '{S4}' and 2048-bit RSASSA-PSS with SHA2_512 digital "
        "signature issued by 'C=XX, O=DMVPN Lab, CN=DMVPN Lab CA'")
CHILD5 = (f'Dec  4 02:53:12.750752: "dmvpn-nat"[1] {NAT} #4: responder established Child SA '
          f"using #3; IPsec transport [{HUB}/32/GRE/0==={INSIDE}/32/GRE/0] "
          "{ESPinUDP/ESN=>0x4bf2c0a5 <0x2cc39e70 xfrm=AES_GCM_16_256-NONE "
          "NATD=198.51.100.20:4500 DPD=passive}")
# the hook on the hub: pluto's SPI_IN is the outbound SPI (names swapped)
# PLUTO_PEER_CLIENT: the post-NAT address, as pluto writes it for a transport-mode peer
# behind NAT (4.10 kernel.c, 5.2 updown.c), not the selector the peer proposed
HOOK = up_env(conn="dmvpn-nat", peer=NAT, me=HUB, peer_id=NAT, spi_in="0x4bf2c0a5",
              spi_out="0x2cc39e70")


def log_changes(*lines):
    interp = LogInterpreter()
    return [c for line in lines for c in interp.feed(parse_line(line))]


def kinds(events):
    return [e.kind for e in events]


def test_the_nat_conn_maps_to_its_profile_and_its_address_id_is_dropped():
    up = parse_updown_env(HOOK)
    assert (up.conn_name, up.connection, up.remote_host, up.remote_id) == \
        ("dmvpn-nat", "dmvpn", NAT, "")
    assert profile_of("dmvpn-nat", NAT) == "dmvpn"
    assert profile_of("dmvpn-198-51-100-20", NAT) == "dmvpn"
    # any other conn keeps the ID pluto reported
    assert parse_updown_env(up_env(peer=NAT, peer_id=NAT)).remote_id == NAT


@pytest.mark.parametrize("ike_line,child_line", [(IKE4, CHILD4), (IKE5, CHILD5)],
                         ids=["4.10", "5.2"])
@pytest.mark.parametrize("hook_first", [False, True], ids=["log-first", "hook-first"])
def test_one_link_keyed_by_the_certificate_whichever_source_comes_first(
        ike_line, child_line, hook_first):
    db, events = SaDatabase(hold=0), []
    ike_up, child_up = log_changes(ike_line, child_line)
    hook = parse_updown_env(HOOK)
    order = [hook, ike_up, child_up] if hook_first else [ike_up, hook, child_up]
    for i, change in enumerate(order):
        events += db.apply(change, float(i))
    (link,) = db.links.values()
    assert (link.connection, link.remote_host, link.remote_id) == ("dmvpn", NAT, S4)
    (child,) = db.child_sas.values()
    (ike,) = db.ike_sas.values()
    assert child.ike_uniqueid == ike.uniqueid and child.remote_id == S4 == ike.remote_id
    assert ike.remote_cert_subject == S4 and child.conn_name == "dmvpn-nat"
    # nhrpd sees one child-up and never a child-down; a link first keyed without an ID
    # (the hook came first) is moved, announced as link-down/link-up of that key
    assert kinds(events).count("child-up") == 1 and "child-down" not in kinds(events)
    if hook_first:
        downs = [e.link.remote_id for e in events if e.kind == "link-down"]
        assert downs == [""]
        assert [e.link.remote_id for e in events if e.kind == "link-up"] == ["", S4]
    else:
        assert "link-down" not in kinds(events)


def test_whack_reports_the_nat_conns_address_id_and_it_is_not_taken():
    states = parse_showstates(
        f'000 #3: "dmvpn"[2] {NAT}:4500 STATE_V2_ESTABLISHED_IKE_SA (established IKE SA); '
        "newest; idle;\n"
        f'000 #4: "dmvpn-nat"[1] {NAT}:4500 STATE_V2_ESTABLISHED_CHILD_SA (established Child '
        "SA); IKE SA #3; idle;\n"
        f'000 #4: "dmvpn-nat"[1] {NAT} esp.4bf2c0a5@{NAT} esp.2cc39e70@{HUB} Traffic: '
        "ESPin=0B ESPout=0B ESPmax=2^63B \n")
    traffic = parse_trafficstatus(
        f'006 #4: "dmvpn-nat"[1] {NAT}, type=ESP, add_time=1796352767, inBytes=0, outBytes=0, '
        f"maxBytes=2^63B, id='{NAT}'\n")
    view = pluto_view(states, traffic, {"dmvpn": HUB, "dmvpn-nat": HUB})
    (ike,), (child,) = view.ike_sas, view.child_sas
    assert ike.remote_id == "" and child.remote_id == "" and child.connection == "dmvpn"
    # a reconciliation after the log named the certificate keeps the certificate's ID
    db = SaDatabase(hold=0)
    for change in log_changes(IKE4, CHILD4):
        db.apply(change, 0.0)
    db.apply(Reconcile(view.ike_sas, view.child_sas, grace=0.0), 20.0)
    (link,) = db.links.values()
    assert link.remote_id == S4 and db.ike_sas[child_ike_uid(db)].remote_id == S4


def child_ike_uid(db):
    (child,) = db.child_sas.values()
    return child.ike_uniqueid


def test_two_peers_behind_one_address_keep_their_own_ids():
    """The hook cannot tell which IKE SA a NAT conn's Child SA uses when two peers share
    the post-NAT address; the log line (`using #N`) can, and moves it to its own link."""
    other = IKE4.replace("#3:", "#5:").replace("CN=s4.", "CN=s5.").replace('"[2]', '"[3]')
    db = SaDatabase(hold=0)
    changes = log_changes(IKE4, other)
    for change in changes:
        db.apply(change, 0.0)
    db.apply(parse_updown_env(HOOK), 1.0)       # guessed: the newest IKE SA of that address
    (child_ike,) = {db.ike_sas[c.ike_uniqueid].remote_id for c in db.child_sas.values()}
    assert child_ike.endswith("CN=s5.dmvpn.example")
    interp = LogInterpreter()
    for line in (IKE4, other, CHILD4):
        for change in interp.feed(parse_line(line)):
            db.apply(change, 2.0)
    (link,) = db.links.values()
    (child,) = db.child_sas.values()
    assert link.remote_id == S4 == db.ike_sas[child.ike_uniqueid].remote_id


def vici_section(db):
    (ike,) = db.ike_sas.values()
    msg = ike_message(ike, db.children_of_ike(ike.uniqueid), 100.0)
    return msg["dmvpn"]


def test_vici_shows_the_nat_on_the_hub_from_the_hook_alone():
    db = SaDatabase(hold=0)
    db.apply(parse_updown_env(HOOK), 1.0)
    section = vici_section(db)
    (child,) = section["child-sas"].values()
    assert (section["remote-host"], section["nat-remote"], section["nat-any"]) == \
        (NAT, "yes", "yes")
    assert "nat-local" not in section and section["local-port"] == 4500
    assert child["encap"] == "yes" and child["remote-ts"] == [f"{NAT}/32"]


def test_vici_shows_the_peers_nat_from_the_log_alone():
    db = SaDatabase(hold=0)
    for change in log_changes(IKE5, CHILD5):
        db.apply(change, 1.0)
    section = vici_section(db)
    (child,) = section["child-sas"].values()
    assert section["nat-remote"] == "yes" and "nat-local" not in section
    assert child["encap"] == "yes" and child["remote-ts"] == [f"{INSIDE}/32"]


def test_vici_shows_the_nat_on_the_spoke_behind_it_from_the_log():
    """spoke4's own view: it proposed its address, the hub answered with its own, ESP in UDP:
    the NAT is on this side."""
    lines = ['"dmvpn" #1: initiator established IKE SA; authenticated peer certificate '
             "'C=XX, O=DMVPN Lab, CN=hub.dmvpn.example' and 2048-bit RSASSA-PSS with SHA2_512 "
             "digital signature issued by 'C=XX, O=DMVPN Lab, CN=DMVPN Lab CA'",
             f'"dmvpn" #2: initiator established Child SA using #1; IPsec transport '
             f"[{INSIDE}/32/GRE/0==={HUB}/32/GRE/0] {{ESPinUDP/ESN=>0xc3a90e5c <0xae223168 "
             "xfrm=AES_GCM_16_256-NONE NATD=198.51.100.1:4500 DPD=passive}"]
    db = SaDatabase(hold=0)
    for change in log_changes(*lines):
        db.apply(change, 1.0)
    section = vici_section(db)
    assert section["nat-local"] == "yes" and "nat-remote" not in section
    (child,) = section["child-sas"].values()
    assert child["encap"] == "yes" and section["local-host"] == INSIDE


def test_vici_shows_no_nat_without_one():
    db = SaDatabase(hold=0)
    db.apply(parse_updown_env(up_env(peer="198.51.100.11", me=HUB)), 1.0)
    section = vici_section(db)
    assert not {"nat-local", "nat-remote", "nat-any"} & set(section)
    assert section["local-port"] == section["remote-port"] == 500
    (child,) = section["child-sas"].values()
    assert "encap" not in child


def two_peers_behind_the_nat():
    """s4 and s5 behind one NAT address, each with its IKE SA and Child SA (pluto's lines)."""
    ike_s5 = IKE4.replace("#3:", "#5:").replace("CN=s4.", "CN=s5.").replace('"[2]', '"[3]')
    child_s5 = (CHILD4.replace("#4:", "#6:").replace("using #3", "using #5")
                .replace('"dmvpn-nat"[1]', '"dmvpn-nat"[2]').replace("0x4bf2c0a5", "0x5555")
                .replace("0x2cc39e70", "0x6666").replace("192.0.2.14", "192.0.2.15"))
    db = SaDatabase(hold=0)
    for change in log_changes(IKE4, CHILD4, ike_s5, child_s5):
        db.apply(change, 0.0)
    return db


@pytest.mark.parametrize("gre", ["203.0.113.14", "203.0.113.15"])
def test_two_peers_behind_one_address_never_vouch_for_each_other(tmp_path, gre):
    """nhrpd asks by NBMA alone: neither certificate may authorize a registration that
    could have come from the other peer (the operator reads why)."""
    ca = make_ca()
    for cn, ip in (("s4", "203.0.113.14"), ("s5", "203.0.113.15")):
        (tmp_path / f"{cn}.pem").write_bytes(pem(make_cert(ca, f"{cn}.dmvpn.example", ips=[ip])[1]))
    db = two_peers_behind_the_nat()
    assert len({lk.remote_id for lk in db.links.values()}) == 2
    auth = Authorizer({}, db, Bus(), CertStore(str(tmp_path)).load(), policy="gre-ip-in-cert-san")
    got = auth.authorize(None, NAT, gre)
    assert (got["decision"], got["code"]) == ("reject", "ambiguous-peer")
    assert f"2 peers share NBMA {NAT}" in got["reason"]
    assert "CN=s4.dmvpn.example" in got["reason"] and "CN=s5.dmvpn.example" in got["reason"]
    assert "is not in the subjectAltNames" in got["reason"]
    # a policy every peer there satisfies is no wrong authorization
    auth_any = Authorizer({}, db, Bus(), None, policy="any-authenticated")
    assert auth_any.authorize(None, NAT, gre)["decision"] == "accept"
    # one peer alone behind the address: its own certificate decides, as before
    del db.links[next(k for k, lk in db.links.items() if lk.remote_id.endswith("CN=s5.dmvpn.example"))]
    alone = auth.authorize(None, NAT, gre)
    assert alone["decision"] == ("accept" if gre.endswith(".14") else "reject")
    assert alone["code"] != "ambiguous-peer"


def test_a_hook_alone_never_lends_one_peers_identity_to_anothers_child_sa(tmp_path):
    """The hook for a NAT conn's Child SA names no ID; with two peers' IKE SAs at that
    address the database does not guess one (the link has no ID until the log's `using #N`
    says), and authorization vouches for nobody meanwhile."""
    other = IKE4.replace("#3:", "#5:").replace("CN=s4.", "CN=s5.").replace('"[2]', '"[3]')
    db = SaDatabase(hold=0)
    for change in log_changes(IKE4, other):
        db.apply(change, 0.0)
    db.apply(parse_updown_env(HOOK), 1.0)
    (link,) = db.links.values()
    assert link.remote_id == ""
    ca = make_ca()
    (tmp_path / "s5.pem").write_bytes(pem(make_cert(ca, "s5.dmvpn.example", ips=["203.0.113.14"])[1]))
    auth = Authorizer({}, db, Bus(), CertStore(str(tmp_path)).load(), policy="gre-ip-in-cert-san")
    assert auth.authorize(None, NAT, "203.0.113.14")["decision"] == "reject"
    interp = LogInterpreter()
    for line in (IKE4, other, CHILD4):
        for change in interp.feed(parse_line(line)):
            db.apply(change, 2.0)
    (link,) = db.links.values()
    assert link.remote_id == S4

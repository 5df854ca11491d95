"""The pluto log and whack forms that libreswan 5.x (and NAT-T, IPv6, raw keys) print.

Each form once failed: a peer read as `2001:db8` port 1, SPIs dropped from ESPinUDP
lines (so the log's Child SA and the hook's never merged), an empty remote ID for raw
keys, an initiation timeout announced as a liveness failure, 5.x's revival line missed.
"""
import pytest

from nhrpbridge.loginterp import LogInterpreter
from nhrpbridge.pluto import parse_showstates, parse_trafficstatus
from nhrpbridge.plutolog import Notice, parse_line
from nhrpbridge.sa import ChildDown, ChildUp, IkeUp
from nhrpbridge.sadb import SaDatabase
from nhrpbridge.updown import parse_updown_env

V6 = "2001:db8:1:2::23"


@pytest.mark.parametrize("line, addr, port, transport", [
    ('"west" #1: sent IKE_SA_INIT request to 192.1.2.23:UDP/500', "192.1.2.23", 500, "UDP"),
    ('"west" #1: sent IKE_SA_INIT request to 192.1.2.23:UDP/4500', "192.1.2.23", 4500, "UDP"),
    ('"west" #1: sent IKE_SA_INIT request to 192.1.2.23:TCP/4500', "192.1.2.23", 4500, "TCP"),
    ('"west" #1: sent IKE_SA_INIT request to 192.1.2.23:500', "192.1.2.23", 500, "UDP"),
    (f'"west" #1: sent IKE_SA_INIT request to [{V6}]:UDP/500', V6, 500, "UDP"),
    ('"west" #1: sent IKE_SA_INIT request to [2001:0db8:0001:0002::0023]:500', V6, 500, "UDP"),
])
def test_ike_sa_init_request_target(line, addr, port, transport):
    p = parse_line(line)
    assert p is not None and p.kind == "ike-init"
    assert (p.data["addr"], p.data["port"], p.data["transport"]) == (addr, port, transport)


def test_permanent_conn_on_5x_gets_its_peer_and_port():
    it = LogInterpreter()
    out = []
    for line in ['"dmvpn-198-51-100-1" #3: sent IKE_SA_INIT request to 198.51.100.1:UDP/4500',
                 '"dmvpn-198-51-100-1" #3: initiator established IKE SA; authenticated peer '
                 "certificate 'C=XX, O=DMVPN Lab, CN=hub.dmvpn.example' and 2048-bit RSASSA-PSS "
                 "with SHA2_512 digital signature issued by 'C=XX, O=DMVPN Lab, CN=DMVPN Lab CA'"]:
        out += it.feed(parse_line(line))
    (up,) = out
    assert isinstance(up, IkeUp)
    assert (up.remote_host, up.remote_port, up.connection) == ("198.51.100.1", 4500, "dmvpn")
    assert up.remote_id == "C=XX, O=DMVPN Lab, CN=hub.dmvpn.example"


@pytest.mark.parametrize("proto, encap", [
    ("ESPinUDP/ESN", "UDP"), ("ESPinUDP", "UDP"), ("ESPinTCP", "TCP"), ("ESP/TFC/ESN", None),
    ("ESP/IPTFS", None), ("ESPinUDP/TFC/ESN", "UDP")])
def test_child_sa_spis_under_every_encapsulation(proto, encap):
    p = parse_line('"dmvpn"[2] 203.0.113.9 #2: responder established Child SA using #1; IPsec '
                   "transport [198.51.100.1/32/GRE/0===192.0.2.4/32/GRE/0] "
                   f"{{{proto}=>0xcafe0001 <0xbeef0002 xfrm=AES_GCM_16_256-NONE NATD=203.0.113.9:4500 "
                   "DPD=active}")
    assert p is not None and p.kind == "child-established"
    assert (p.data["spi_out"], p.data["spi_in"]) == (0xcafe0001, 0xbeef0002)
    assert p.data.get("encap") == encap
    assert p.data["natd"] == ("203.0.113.9", 4500)


def _hook(verb, spi_in, spi_out, peer="203.0.113.9"):
    return parse_updown_env({
        "PLUTO_VERB": verb, "PLUTO_CONNECTION": "dmvpn", "PLUTO_ME": "198.51.100.1",
        "PLUTO_PEER": peer, "PLUTO_PEER_ID": "CN=spoke4", "PLUTO_CONNECTION_TYPE": "transport",
        "PLUTO_MY_CLIENT": "198.51.100.1/32", "PLUTO_PEER_CLIENT": f"{peer}/32",
        "PLUTO_MY_PROTOCOL": "47", "PLUTO_PEER_PROTOCOL": "47", "PLUTO_SA_TYPE": "ESP",
        "SPI_IN": hex(spi_in), "SPI_OUT": hex(spi_out), "PLUTO_CONN_POLICY": "RSASIG+ENCRYPT"})


def test_nat_t_child_from_log_and_hook_is_one_child():
    """Hook says SPI_IN=out, SPI_OUT=in (pluto's swap); the log says =>out <in."""
    db = SaDatabase(hold=0)        # rule 5 (hold) off: downs end at once here
    it = LogInterpreter()
    log = [
        "\"dmvpn\"[2] 203.0.113.9 #1: responder established IKE SA; authenticated peer certificate "
        "'CN=spoke4' and 2048-bit RSASSA-PSS with SHA2_512 digital signature issued by 'CN=CA'",
        '"dmvpn"[2] 203.0.113.9 #2: responder established Child SA using #1; IPsec transport '
        "[198.51.100.1/32/GRE/0===203.0.113.9/32/GRE/0] {ESPinUDP/ESN=>0x0000aaaa <0x0000bbbb "
        "xfrm=AES_GCM_16_256-NONE NATD=203.0.113.9:4500 DPD=active}"]
    events = []
    events += db.apply(it.feed(parse_line(log[0]))[0], 0)
    events += db.apply(_hook("up-host", 0xaaaa, 0xbbbb), 0)
    events += db.apply(it.feed(parse_line(log[1]))[0], 0)
    assert [e.kind for e in events].count("child-up") == 1
    events = db.apply(_hook("down-host", 0xaaaa, 0xbbbb), 0)
    assert "link-down" in [e.kind for e in events]
    assert not db.child_sas and not db.links


@pytest.mark.parametrize("line", [
    f'"v6"[1] [{V6}]:500 #1: deleting IKE SA (established IKE SA)',
    f'"v6"[1] {V6} #1: deleting IKE SA (established IKE SA)',
])
def test_ipv6_peer_in_the_line_head(line):
    p = parse_line(line)
    assert p is not None and (p.peer, p.serial, p.instance) == (V6, 1, 1)


def test_ipv6_showstates_sa_line_does_not_replace_the_state():
    text = (f'#1: "v6"[1] [{V6}]:500 ESTABLISHED_IKE_SA (established IKE SA); REKEY in 1s\n'
            f'#2: "v6"[1] [{V6}]:500 ESTABLISHED_CHILD_SA (established Child SA); IKE SA #1\n'
            f'#2: "v6"[1] [{V6}]:500 esp:0000aaaa@{V6} esp:0000bbbb@2001:db8:1:2::45 ref=0 refhim=0\n')
    states = {s.serial: s for s in parse_showstates(text)}
    child = states[2]
    assert child.name == "ESTABLISHED_CHILD_SA" and child.is_child and child.ike_serial == 1
    assert (child.peer, child.port, child.spi_out, child.spi_in, child.local) == (
        V6, 500, 0xaaaa, 0xbbbb, "2001:db8:1:2::45")


def test_ipv6_trafficstatus():
    (t,) = parse_trafficstatus(f'#2: "v6"[1] {V6}, type=ESP, add_time=1700000000, inBytes=0, '
                               "outBytes=0, maxBytes=2^63B, id='@east'")
    assert (t.peer, t.remote_id) == (V6, "@east")


@pytest.mark.parametrize("line, remote_id", [
    ("\"c\" #1: initiator established IKE SA; authenticated peer '3584-bit PKCS#1 1.5 RSA with "
     "SHA1' signature using preloaded certificate '172.31.32.196'", "172.31.32.196"),
    ("\"c\" #1: responder established IKE SA; authenticated peer using preloaded certificate "
     "'C=CA, O=Libreswan, CN=west.testing.libreswan.org' and 3072-bit RSASSA-PSS with SHA2_512 "
     "digital signature", "C=CA, O=Libreswan, CN=west.testing.libreswan.org"),
    ("\"c\" #1: responder established IKE SA; authenticated peer '2048-bit RSA with SHA1' "
     "signature using ID_FQDN '@west'", "@west"),
])
def test_raw_key_and_rsa_logins_keep_the_remote_id(line, remote_id):
    it = LogInterpreter()
    it.feed(parse_line('"c" #1: sent IKE_SA_INIT request to 192.1.2.23:UDP/500'))
    (up,) = it.feed(parse_line(line))
    assert isinstance(up, IkeUp) and up.remote_id == remote_id and up.remote_host == "192.1.2.23"


@pytest.mark.parametrize("line, kind", [
    ('"d" #3: IKE_SA_INIT_I: 10 second timeout exceeded after 5 retransmits.  No response (or no '
     "acceptable response) to our first IKEv2 message", "initiate-timeout"),
    ('"d" #3: IKE_AUTH_I: 10 second timeout exceeded after 5 retransmits.  Possible authentication '
     "failure: no acceptable response to our first encrypted message", "initiate-timeout"),
    ('"d" #3: STATE_V2_PARENT_I1: 60 second timeout exceeded after 7 retransmits.  No response '
     "(or no acceptable response) to our first IKEv2 message", "initiate-timeout"),
    ('"d" #3: STATE_V2_PARENT_I2: 60 second timeout exceeded after 7 retransmits.  Possible '
     "authentication failure", "initiate-timeout"),
    ('"d" #3: ESTABLISHED_IKE_SA: 10 second timeout exceeded after 5 retransmits.  No response',
     "liveness-timeout"),
])
def test_initiation_timeout_is_not_a_liveness_failure(line, kind):
    p = parse_line(line)
    assert p is not None and p.kind == kind
    (notice,) = LogInterpreter().feed(p)
    assert isinstance(notice, Notice) and notice.kind == kind


@pytest.mark.parametrize("why", ["received Delete/Notify", "timeout IKE SA", "delete Child SA",
                                 "timeout Child SA"])
def test_5x_revival_line(why):
    p = parse_line(f'"dmvpn-198-51-100-1": reviving connection which {why} but must remain up '
                   "per local policy (serial $2)")
    assert p is not None and p.kind == "revival" and p.conn == "dmvpn-198-51-100-1"


def test_5x_child_rekey_keeps_every_field_and_the_peer():
    it = LogInterpreter()
    lines = [
        '"dmvpn-198-51-100-1" #1: sent IKE_SA_INIT request to 198.51.100.1:UDP/500',
        "\"dmvpn-198-51-100-1\" #1: initiator established IKE SA; authenticated peer certificate "
        "'CN=hub' and 2048-bit RSASSA-PSS with SHA2_512 digital signature issued by 'CN=CA'",
        '"dmvpn-198-51-100-1" #2: initiator established Child SA using #1; IPsec transport '
        "[198.51.100.11/32/GRE/0===198.51.100.1/32/GRE/0] {ESP/ESN=>0x00000001 <0x00000002 "
        "xfrm=AES_GCM_16_256-NONE DPD=active}",
        '"dmvpn-198-51-100-1" #3: initiator rekeyed Child SA #2 using #1; IPsec transport '
        "[198.51.100.11/32/GRE/0===198.51.100.1/32/GRE/0] {ESP/ESN=>0x00000003 <0x00000004 "
        "xfrm=AES_GCM_16_256-NONE DPD=active}",
        '"dmvpn-198-51-100-1" #2: ESP traffic information: in=84B out=84B',
        '"dmvpn-198-51-100-1" #3: ESP traffic information: in=84B out=84B',
    ]
    out = [c for line in lines for c in it.feed(parse_line(line))]
    p = parse_line(lines[3])
    assert p.data == {"old": 2, "ike": 1, "protocol": "ESP", "spi_out": 3, "spi_in": 4,
                      "mode": "TRANSPORT", "local-ts": "198.51.100.11", "remote-ts": "198.51.100.1"}
    downs = [c for c in out if isinstance(c, ChildDown)]
    assert [(d.serial, d.remote_host, d.connection) for d in downs] == [
        (2, "198.51.100.1", "dmvpn"), (3, "198.51.100.1", "dmvpn")]
    assert [c.serial for c in out if isinstance(c, ChildUp)] == [2]

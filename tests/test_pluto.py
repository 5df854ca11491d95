"""whack output parsers (golden 4.x/5.x text) and argv builders."""
import pytest
from conftest import DATA

from nhrpbridge.errors import ControlError
from nhrpbridge.pluto import (
    Result,
    Whack,
    error_for,
    parse_showstates,
    parse_trafficstatus,
    parse_version,
    pluto_view,
)
from nhrpbridge.sadb import SaDatabase


def test_version():
    assert parse_version("Libreswan 4.10\n") == (4, 10)
    assert parse_version("Libreswan U5.2/K6.1.0\n") == (5, 2)
    with pytest.raises(ControlError):
        parse_version("strongSwan 5.9")


def test_showstates_4x():
    states = {s.serial: s for s in parse_showstates((DATA / "showstates-4.10.txt").read_text())}
    assert states[1].established and not states[1].is_child and states[1].peer == "198.51.100.11"
    assert states[2].is_child and states[2].ike_serial == 1
    assert (hex(states[2].spi_out), hex(states[2].spi_in), states[2].local) == (
        "0x96b21f90", "0xd4515cb6", "198.51.100.1")
    assert not states[5].established and states[5].conn == "dmvpn-198-51-100-13"


def test_showstates_5x_including_permanent_conn():
    states = {s.serial: s for s in parse_showstates((DATA / "showstates-5.txt").read_text())}
    assert states[7].established and states[7].port == 4500
    assert states[8].is_child and states[8].ike_serial == 7
    assert states[9].established and not states[9].is_child and states[9].peer is None
    assert states[10].peer == "198.51.100.254" and states[10].local == "198.51.100.1"


@pytest.mark.parametrize("version", ["4.10", "5"])
def test_golden_outputs_reconcile_to_the_right_links(version):
    view = pluto_view(parse_showstates((DATA / f"showstates-{version}.txt").read_text()),
                      parse_trafficstatus((DATA / f"trafficstatus-{version}.txt").read_text()))
    db = SaDatabase()
    db.apply(view, 0)
    links = sorted((l.connection, l.local_host, l.remote_host, l.remote_id, len(l.children))
                   for l in db.links.values())
    if version == "4.10":
        assert links == [("dmvpn", "198.51.100.1", "198.51.100.11", "@spoke1", 1),
                         ("dmvpn", "198.51.100.1", "198.51.100.12", "@spoke2", 1)]
        assert sorted(i.serial for i in db.ike_sas.values()) == [1, 3]
    else:
        assert links == [
            ("dmvpn", "198.51.100.1", "198.51.100.11", "C=XX, O=DMVPN Lab, CN=spoke1.dmvpn.example", 1),
            ("hub", "198.51.100.1", "198.51.100.254", "C=XX, O=DMVPN Lab, CN=hub.dmvpn.example", 1)]
        assert sorted(i.serial for i in db.ike_sas.values()) == [7, 9]
    assert db.apply(view, 1) == []


def test_terminate_argv_4x_vs_5x():
    w4, w5 = Whack(version=(4, 10)), Whack(version=(5, 2), rundir="/run/p")
    assert w4.delete_ike(7) == ["ipsec", "whack", "--deletestate", "7"]
    assert w5.delete_ike(7) == ["ipsec", "whack", "--rundir", "/run/p", "--name", "#7", "--down"]
    assert w4.terminate_conn("dmvpn") == ["ipsec", "whack", "--name", "dmvpn", "--terminate"]
    assert w5.terminate_conn("dmvpn")[-1] == "--down"
    assert Whack(ctlsocket="/x/pluto.ctl").addconn("/s/peers.conf", "dmvpn-1-2-3-4") == [
        "ipsec", "addconn", "--ctlsocket", "/x/pluto.ctl", "--config", "/s/peers.conf",
        "dmvpn-1-2-3-4"]


@pytest.mark.parametrize("name", ["x; touch /tmp/p", "$(id)", "-dmvpn", "--name", "", "a b",
                                  "x" * 65, "dmvpn\n", "`id`"])
def test_hostile_connection_names_are_rejected(name):
    with pytest.raises(ControlError) as exc:
        Whack().initiate(name)
    assert exc.value.code == "bad-request"


@pytest.mark.parametrize("addr", ["1.2.3.4; id", "$(id)", "-1", "999.1.1.1", "host.example"])
def test_hostile_addresses_are_rejected(addr):
    with pytest.raises(ControlError):
        Whack().initiate("dmvpn", addr)


@pytest.mark.parametrize("rc, out, code", [
    (21, "021 no connection named \"x\"", "unknown-connection"),
    (25, "025 \"dmvpn\": could not route", "could-not-route"),
    (29, "029 cannot instantiate non-template connection", "not-a-template"),
    (24, "024 need --listen before --initiate", "pluto-not-ready"),
    (33, 'whack: Pluto is not running (no "/run/pluto/pluto.ctl")', "pluto-not-running"),
    (1, "something else", "pluto-error"),
])
def test_error_mapping(rc, out, code):
    err = error_for(Result(rc, out, ""), "whack --initiate")
    assert err.code == code and f"rc {rc}" in str(err)


def test_asynchronous_initiate_of_an_unknown_conn_exits_0_but_is_an_error():
    """Observed with libreswan 4.10: rc 0 with --asynchronous, rc 21 without."""
    out = '000 initiating all conns with alias=\'nosuch\'\n021 no connection named "nosuch"\n'
    from nhrpbridge.pluto import reply_code
    assert reply_code(Result(0, out, "")) == 21
    assert error_for(Result(0, out, ""), "whack --initiate").code == "unknown-connection"
    assert reply_code(Result(0, 'no connection named "nosuch"\n', "")) == 21     # 5.x: no codes
    assert reply_code(Result(0, "002 \"dmvpn\" #1: initiating IKEv2 connection\n", "")) == 0


def test_whack_binary_runs_without_the_ipsec_script(tmp_path):
    from nhrpbridge.pluto import find_whack
    (tmp_path / "whack").write_text("#!/bin/sh\n")
    (tmp_path / "whack").chmod(0o755)
    assert find_whack("ipsec", (str(tmp_path / "none"), str(tmp_path))) == str(tmp_path / "whack")
    # an operator's own ipsec command is used as given, never bypassed
    assert find_whack("/opt/ls/sbin/ipsec", (str(tmp_path),)) == ""
    assert find_whack("ipsec", (str(tmp_path / "none"),)) == ""
    w = Whack(rundir="/run/x", binary=str(tmp_path / "whack"))
    assert w.showstates() == [str(tmp_path / "whack"), "--rundir", "/run/x", "--showstates"]
    assert w.delete_ike(7)[0] == str(tmp_path / "whack")

"""Real libreswan 5.2 output from the debian13 lab (samples/lab/libreswan-5.2/).

pluto.log, the updown environments (as the hook records them) and whack's
--showstates/--trafficstatus of a hub and a spoke, captured by `lab/run-lab.sh
--flavour debian13 --keep --record-updown`. Replayed here through the log interpreter and the hook's
record path: one clean event sequence, the right peer, SPIs and ports on every SA.
"""
import pytest
from conftest import SAMPLES

from nhrpbridge.loginterp import LogInterpreter
from nhrpbridge.pluto import parse_showstates, parse_trafficstatus, pluto_view
from nhrpbridge.plutolog import Notice, parse_line
from nhrpbridge.protocol.record import TRAILER, decode_record
from nhrpbridge.sa import ChildDown, ChildUp, IkeUp
from nhrpbridge.sadb import SaDatabase
from nhrpbridge.updown import parse_updown_env

S52 = SAMPLES / "lab" / "libreswan-5.2"
SPOKES = {"198.51.100.11": "spoke1", "198.51.100.12": "spoke2", "198.51.100.13": "spoke3"}


def log_changes(node):
    it = LogInterpreter()
    out = []
    for line in (S52 / f"{node}-pluto.log").read_text(errors="replace").splitlines():
        if (p := parse_line(line)) is not None:
            out += it.feed(p)
    return out


def hook_changes(node):
    data = (S52 / f"{node}-updown.env").read_bytes()
    records = [r + TRAILER for r in data.split(TRAILER) if r.strip()]
    return [parse_updown_env(decode_record(r)) for r in records]


def test_hub_log_every_sa_has_its_peer_id_and_spis():
    out = log_changes("hub")
    ikes = [c for c in out if isinstance(c, IkeUp)]
    assert ikes and all(i.remote_host in SPOKES for i in ikes)
    for i in ikes:
        assert i.remote_id == f"C=XX, O=DMVPN Lab, CN={SPOKES[i.remote_host]}.dmvpn.example"
        assert i.auth == "cert" and i.serial and i.instance
    kids = [c for c in out if isinstance(c, ChildUp)]
    assert {k.remote_host for k in kids} == set(SPOKES)
    assert all(k.spi_in and k.spi_out and k.local_host == "198.51.100.1" and k.ike_serial
               for k in kids)


def test_spoke_permanent_conns_get_peer_and_port_from_5x_init_line():
    out = log_changes("spoke1")
    ikes = {(i.conn_name, i.remote_host, i.remote_port) for i in out if isinstance(i, IkeUp)}
    assert ("dmvpn-198-51-100-1", "198.51.100.1", 500) in ikes      # spoke -> hub
    assert ("dmvpn-198-51-100-12", "198.51.100.12", 500) in ikes    # the shortcut
    assert all(i.remote_id.startswith("C=XX, O=DMVPN Lab, CN=") for i in out
               if isinstance(i, IkeUp))


def interleave(hook, log, down_hook_first):
    """Hook records placed where pluto runs them relative to its log lines: up-host just
    before "established Child SA" of the same SPIs, down-host (and its unroute) next to
    the line that deletes that SA; hook records with no such line keep their order at the
    end."""
    hook = list(hook)
    spis_of = {}
    out = []

    def take(kind, spis):
        for i, c in enumerate(hook):
            if type(c).__name__ == kind and (c.spi_in, c.spi_out) == spis:
                found = [hook.pop(i)]
                if kind == "ChildDown" and i < len(hook) and type(hook[i]).__name__ == "Unroute":
                    found.append(hook.pop(i))
                return found
        return []

    for c in log:
        if isinstance(c, ChildUp):
            spis_of[c.serial] = (c.spi_in, c.spi_out)
            out += take("ChildUp", spis_of[c.serial]) + [c]
        elif isinstance(c, ChildDown) and c.serial in spis_of:
            downs = take("ChildDown", spis_of[c.serial])
            out += downs + [c] if down_hook_first else [c] + downs
        else:
            out.append(c)
    return out + hook


@pytest.mark.parametrize("node", ["hub", "spoke1"])
@pytest.mark.parametrize("down_hook_first", [True, False])
def test_hook_and_log_give_one_child_per_sa_and_end_clean(node, down_hook_first):
    """Each Child SA is announced once, and pluto's shutdown at the end of the run leaves
    nothing up (no phantom child keeps a link)."""
    hook = [c for c in hook_changes(node) if c is not None]
    log = [c for c in log_changes(node) if not isinstance(c, Notice)]
    spis = {(c.spi_in, c.spi_out) for c in hook + log if isinstance(c, ChildUp)}
    db = SaDatabase()
    events = []
    for change in interleave(hook, log, down_hook_first):
        events += db.apply(change, 0)
    kinds = [e.kind for e in events]
    assert kinds.count("child-up") == len(spis), kinds
    assert kinds.count("child-down") == len(spis), kinds
    assert not db.child_sas and not any(l.up for l in db.links.values())


def test_5_2_replaces_a_child_without_running_updown():
    """Seen on the hub: spoke1's pluto restarted, its new Child SA (#8) replaced #2 on the
    same instance and pluto 5.2 ran no up-host for #8 and no down-host for #2; the hook
    alone would keep #2 up until shutdown. The log follower is what sees the switch."""
    hook = {(c.spi_in, c.spi_out) for c in hook_changes("hub") if isinstance(c, ChildUp)}
    log = {c.serial: (c.spi_in, c.spi_out) for c in log_changes("hub") if isinstance(c, ChildUp)}
    assert log[2] in hook and log[8] not in hook
    downs = {(c.spi_in, c.spi_out) for c in hook_changes("hub") if isinstance(c, ChildDown)}
    assert log[8] in downs and log[2] not in downs


@pytest.mark.parametrize("node", ["hub", "spoke1"])
def test_whack_view_matches_the_hooks_spis(node):
    states = parse_showstates((S52 / f"{node}-showstates.txt").read_text())
    traffic = parse_trafficstatus((S52 / f"{node}-trafficstatus.txt").read_text())
    view = pluto_view(states, traffic)
    assert view.child_sas and len(view.child_sas) == len(traffic)
    hook = {(c.remote_host, c.spi_in, c.spi_out) for c in hook_changes(node)
            if isinstance(c, ChildUp)}
    for child in view.child_sas:
        assert (child.remote_host, child.spi_in, child.spi_out) in hook
        assert child.remote_id.startswith("C=XX, O=DMVPN Lab, CN=")
    for ike in view.ike_sas:
        assert ike.remote_host and ike.remote_port == 500

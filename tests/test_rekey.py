"""Rekeys never flap a link: real 4.10 lines, a reconciliation racing them, collisions."""
from pathlib import Path

from nhrpbridge.loginterp import LogInterpreter
from nhrpbridge.pluto import parse_showstates, parse_trafficstatus, pluto_view
from nhrpbridge.plutolog import parse_line
from nhrpbridge.sa import (
    ChildDown,
    ChildRekeyed,
    ChildUp,
    IkeDown,
    IkeRekeyed,
    IkeUp,
    Reconcile,
    Release,
    Unroute,
)
from nhrpbridge.sadb import SaDatabase

DATA = Path(__file__).parent / "data"
HUB, SPOKE = "198.51.100.1", "198.51.100.12"
CONN = "dmvpn-198-51-100-1"
HUB_ID = "C=XX, O=DMVPN Lab, CN=hub.dmvpn.example"


def feed(db, interp, line, now, events):
    parsed = parse_line(line)
    for change in interp.feed(parsed) if parsed else []:
        events += db.apply(change, now)


def kinds(events):
    return [e.kind for e in events]


def whack(children):
    """--showstates/--trafficstatus as 4.10 prints them, for the given Child SAs
    (serial, spi_in, spi_out) of IKE SA #1 (the lab's spoke2 to the hub)."""
    ss = [f'000 #1: "{CONN}":500 STATE_V2_ESTABLISHED_IKE_SA (established IKE SA); newest; idle;']
    ts = []
    for serial, spi_in, spi_out in children:
        ss.append(f'000 #{serial}: "{CONN}":500 STATE_V2_ESTABLISHED_CHILD_SA (established '
                  f'Child SA); IKE SA #1; idle;')
        ss.append(f'000 #{serial}: "{CONN}" esp.{spi_out:08x}@{HUB} esp.{spi_in:08x}@{SPOKE} '
                  'Traffic: ESPin=0B ESPout=0B ESPmax=2^63B ')
        ts.append(f'006 #{serial}: "{CONN}", type=ESP, add_time=1, inBytes=0, outBytes=0, '
                  f"maxBytes=2^63B, id='{HUB_ID}'")
    view = pluto_view(parse_showstates("\n".join(ss) + "\n"),
                      parse_trafficstatus("\n".join(ts) + "\n"), {CONN: SPOKE})
    return Reconcile(view.ike_sas, view.child_sas, grace=10.0)


def test_a_reconciliation_racing_a_rekey_does_not_flap_the_link():
    """The lab's flap (debian12, lifetimes 150/60/20): spoke2's log said #3 replaced #2,
    a reconciliation 0.7 s later saw #2 but not yet #3, pluto deleted #2 a second later."""
    lines = (DATA / "rekey-4.10-spoke2.log").read_text().splitlines()
    db, interp, events = SaDatabase(), LogInterpreter(), []
    for line in lines[:2]:                     # IKE SA #1, Child SA #2 established
        feed(db, interp, line, 0.0, events)
    assert kinds(events)[-2:] == ["child-up", "link-up"]
    old = next(iter(db.child_sas.values()))
    feed(db, interp, lines[2], 22.0, events)   # "#3: initiator rekeyed Child SA #2"
    assert kinds(events)[-1] == "child-rekeyed"
    new = next(iter(db.child_sas.values()))
    assert (new.uniqueid, new.serial, f"{new.spi_in:08x}", new.rekeyed) == (
        old.uniqueid, 3, "8eca7200", 22.0)
    events += db.apply(whack([(2, old.spi_in, old.spi_out)]), 22.7)    # #2 only
    for line in lines[3:]:                     # "#2: deleting established Child SA", traffic
        feed(db, interp, line, 23.0, events)
    assert "link-down" not in kinds(events)
    (link,) = db.links.values()
    assert link.up and [db.child_sas[c].serial for c in link.children] == [3]


def test_without_the_log_a_rekey_is_a_reconciliation_and_no_flap():
    """No log follower: pluto runs no updown for a rekey; the next reconciliation sees
    the new Child SA and not the old one: added first, then removed, link up throughout."""
    db = SaDatabase()
    events = db.apply(ChildUp(CONN, "dmvpn", SPOKE, HUB, "", HUB_ID, spi_in=0xa1,
                              spi_out=0xb1, source="updown"), 0.0)
    events += db.apply(whack([(3, 0xa2, 0xb2)]), 100.0)
    assert kinds(events) == ["ike-up", "child-up", "link-up", "ike-updated", "child-up",
                             "child-down"]
    assert [c.spi_in for c in db.child_sas.values()] == [0xa2]


def test_whack_calls_straddling_a_rekey_keep_the_link():
    """The lab's flap (debian12, spoke2 without the log follower): --showstates listed the
    old Child SA #15 only, pluto rekeyed it to #16 and deleted #15, then --trafficstatus
    listed #16 only, without an address (a per-peer conn prints none). The new Child SA
    must still count; the old one goes."""
    db = SaDatabase()
    db.apply(ChildUp(CONN, "dmvpn", SPOKE, HUB, "", HUB_ID, spi_in=0xa1, spi_out=0xb1,
                     serial=15, source="updown"), 0.0)
    ss = [f'000 #10: "{CONN}":500 STATE_V2_ESTABLISHED_IKE_SA (established IKE SA); newest;',
          f'000 #15: "{CONN}":500 STATE_V2_ESTABLISHED_CHILD_SA (established Child SA); '
          'IKE SA #10; idle;',
          f'000 #15: "{CONN}" esp.000000b1@{HUB} esp.000000a1@{SPOKE} Traffic: ESPin=0B ']
    ts = [f'006 #16: "{CONN}", type=ESP, add_time=1, inBytes=0, outBytes=0, '
          f"maxBytes=2^63B, id='{HUB_ID}'"]
    view = pluto_view(parse_showstates("\n".join(ss) + "\n"), parse_trafficstatus(ts[0] + "\n"),
                      {CONN: SPOKE}, {CONN: HUB})
    events = db.apply(Reconcile(view.ike_sas, view.child_sas, grace=10.0), 30.0)
    assert "link-down" not in kinds(events)
    (link,) = db.links.values()
    assert link.up and [db.child_sas[c].serial for c in link.children] == [16]
    # without the hint (the code before): the new Child SA was dropped and the link went down
    db2 = SaDatabase()
    db2.apply(ChildUp(CONN, "dmvpn", SPOKE, HUB, "", HUB_ID, spi_in=0xa1, spi_out=0xb1,
                      serial=15, source="updown"), 0.0)
    bare = pluto_view(parse_showstates("\n".join(ss) + "\n"),
                      parse_trafficstatus(ts[0] + "\n"), {CONN: SPOKE})
    assert "link-down" in kinds(db2.apply(Reconcile(bare.ike_sas, bare.child_sas,
                                                    grace=10.0), 30.0))


def test_both_ends_rekeying_one_child_sa_at_once_keeps_the_link():
    db = SaDatabase()
    db.apply(IkeUp(CONN, "dmvpn", HUB, serial=1, local_host=SPOKE), 0.0)
    db.apply(ChildUp(CONN, "dmvpn", SPOKE, HUB, spi_in=0xa1, spi_out=0xb1, serial=2,
                     ike_serial=1, source="log"), 0.0)
    events = db.apply(ChildRekeyed(old_serial=2, new_serial=6, spi_in=0xa6, spi_out=0xb6), 40.0)
    events += db.apply(ChildRekeyed(old_serial=2, new_serial=7, spi_in=0xa7, spi_out=0xb7), 40.0)
    (link,) = db.links.values()
    assert sorted(db.child_sas[c].serial for c in link.children) == [6, 7]
    events += db.apply(ChildDown(CONN, "dmvpn", "", HUB, serial=6), 41.0)    # the loser
    events += db.apply(ChildDown(CONN, "dmvpn", "", HUB, serial=2), 41.0)    # the replaced
    assert kinds(events) == ["child-rekeyed", "child-up", "child-down"]
    (link,) = db.links.values()
    assert [db.child_sas[c].spi_in for c in link.children] == [0xa7]
    # the same rekey line twice (hook and log, or a replay) adds nothing
    assert db.apply(ChildRekeyed(old_serial=2, new_serial=7), 42.0) == []


def test_both_ends_rekeying_the_ike_sa_at_once_keeps_its_child_sas():
    db = SaDatabase()
    db.apply(IkeUp(CONN, "dmvpn", HUB, serial=1, local_host=SPOKE), 0.0)
    db.apply(ChildUp(CONN, "dmvpn", SPOKE, HUB, spi_in=0xa1, spi_out=0xb1, serial=2,
                     ike_serial=1, source="log"), 0.0)
    events = db.apply(IkeRekeyed(old_serial=1, new_serial=4), 130.0)
    events += db.apply(IkeRekeyed(old_serial=1, new_serial=5), 130.0)
    events += db.apply(IkeDown(4), 131.0)      # pluto keeps #5, deletes #4
    assert kinds(events) == ["ike-rekeyed"]
    (ike,) = db.ike_sas.values()
    assert ike.serial == 5 and len(db.child_sas) == 1
    events += db.apply(IkeDown(1), 131.0)      # the replaced one: long gone from our tables
    assert kinds(events) == ["ike-rekeyed"]
    events += db.apply(IkeDown(5), 200.0)      # the survivor ends: so do its Child SAs
    assert kinds(events)[-3:] == ["child-down", "link-down", "ike-down"]


def test_the_alias_can_be_the_one_pluto_deletes_last():
    db = SaDatabase()
    db.apply(IkeUp(CONN, "dmvpn", HUB, serial=1, local_host=SPOKE), 0.0)
    db.apply(ChildUp(CONN, "dmvpn", SPOKE, HUB, spi_in=0xa1, spi_out=0xb1, serial=2,
                     ike_serial=1, source="log"), 0.0)
    db.apply(IkeRekeyed(old_serial=1, new_serial=4), 130.0)
    db.apply(IkeRekeyed(old_serial=1, new_serial=5), 130.0)
    assert db.apply(IkeDown(5), 131.0) == []   # the other end's successor lost
    (ike,) = db.ike_sas.values()
    assert ike.serial == 4 and db.links


# ---- rule 5: pluto's replacement of an expired Child SA, a gap without a link-down

def up(spi, conn=CONN):
    return ChildUp(conn, "dmvpn", SPOKE, HUB, "", HUB_ID, spi_in=spi, spi_out=spi + 1,
                   source="updown")


def down(spi, conn=CONN):
    return ChildDown(conn, "dmvpn", SPOKE, HUB, spi_in=spi, spi_out=spi + 1)


def test_a_replacement_after_a_failed_rekey_does_not_flap_the_link():
    """The lab (4.10, spoke2 without log follower): a rekey failed (the hub answered a
    retransmit with TS_UNACCEPTABLE), so at expiry pluto deleted #5 (down-host) and only
    then negotiated #9 (up-host 1.2 s later). nhrpd must not see the link at zero."""
    db = SaDatabase()                                  # the default hold: 5 s
    events = db.apply(up(0x10), 0.0)
    events += db.apply(down(0x10), 81.8)
    assert kinds(events) == ["ike-up", "child-up", "link-up"]       # held: no event yet
    events += db.apply(Reconcile((), (), grace=10.0), 82.0)         # pluto lists neither
    events += db.apply(up(0x20), 83.0)
    assert kinds(events)[3:] == ["child-up", "child-down"]          # link up throughout
    (link,) = db.links.values()
    assert [db.child_sas[c].spi_in for c in link.children] == [0x20] and not db.held


def test_without_a_replacement_the_held_end_comes_after_the_hold():
    db = SaDatabase(hold=5.0)
    db.apply(up(0x10), 0.0)
    assert db.apply(down(0x10), 10.0) == [] and db.apply(Release(), 14.9) == []
    assert kinds(db.apply(Release(), 15.0)) == ["child-down", "link-down", "ike-down"]
    assert not db.links and not db.held


def test_an_unroute_or_the_ike_sas_end_ends_a_held_child_at_once():
    db = SaDatabase()
    db.apply(up(0x10), 0.0)
    db.apply(down(0x10), 10.0)
    assert kinds(db.apply(Unroute(CONN, "dmvpn", SPOKE, HUB), 10.1)) == [
        "child-down", "link-down", "ike-down"]
    db.apply(IkeUp(CONN, "dmvpn", HUB, serial=1, local_host=SPOKE), 20.0)
    db.apply(ChildUp(CONN, "dmvpn", SPOKE, HUB, spi_in=0x30, spi_out=0x31, serial=2,
                     ike_serial=1, source="log"), 20.0)
    db.apply(ChildDown(CONN, "dmvpn", "", HUB, serial=2), 30.0)
    assert kinds(db.apply(IkeDown(1), 30.5)) == ["child-down", "link-down", "ike-down"]


def test_a_held_child_survives_a_restart_and_is_released_after_it():
    db = SaDatabase()
    db.apply(up(0x10), 0.0)
    db.apply(down(0x10), 10.0)
    again = SaDatabase.from_state(db.to_state())
    assert again.held and kinds(again.apply(Release(), 16.0))[:2] == ["child-down", "link-down"]


def test_the_daemon_releases_a_held_end(sockdir):
    from dataclasses import replace as dc_replace

    from conftest import run_hook, up_env, wait_until
    from memory import MemoryDaemon

    from nhrpbridge.config import Config
    cfg = dc_replace(Config.for_state_dir(sockdir / "state"), replace_hold=0.2)
    d = MemoryDaemon(cfg).start()
    try:
        spool = d.state_dir / "spool"
        run_hook(up_env(), spool, "--no-chain")
        wait_until(lambda: d.daemon.db.links, what="link up")
        run_hook(up_env(verb="down-host"), spool, "--no-chain")
        wait_until(lambda: not d.daemon.db.links, timeout=10, what="link down after the hold")
        assert "pluto replace-wait: dmvpn 198.51.100.11 #None: the link's last Child SA " \
            "ended: 0.2 s for its replacement" in d.log_text()
        assert "link-down seq=" in d.log_text()
    finally:
        d.stop()


def test_a_rekeyed_ike_sa_that_lingers_in_pluto_creates_no_second_record():
    """The lab (4.10 hub): '#33: responder rekeyed IKE SA #17', and 5 s later whack still
    listed #17 (deleted later) with a Child SA #31 under it: nhrpbridge had created a new
    IKE SA for #17 that nothing ever removed ([17 33] against whack's [33])."""
    db = SaDatabase()
    db.apply(IkeUp(CONN, "dmvpn", HUB, serial=17, local_host=SPOKE), 0.0)
    db.apply(ChildUp(CONN, "dmvpn", SPOKE, HUB, spi_in=0x31, spi_out=0x32, serial=31,
                     ike_serial=17, source="log"), 0.0)
    db.apply(IkeRekeyed(old_serial=17, new_serial=33), 10.0)
    view = Reconcile((IkeUp(CONN, "dmvpn", HUB, serial=17, local_host=SPOKE),
                      IkeUp(CONN, "dmvpn", HUB, serial=33, local_host=SPOKE)),
                     (ChildUp(CONN, "dmvpn", SPOKE, HUB, spi_in=0x31, spi_out=0x32, serial=31,
                              ike_serial=17, source="whack"),), grace=10.0)
    assert kinds(db.apply(view, 15.0)) == []
    view = Reconcile((IkeUp(CONN, "dmvpn", HUB, serial=33, local_host=SPOKE),),
                     (ChildUp(CONN, "dmvpn", SPOKE, HUB, spi_in=0x31, spi_out=0x32, serial=31,
                              ike_serial=33, source="whack"),), grace=10.0)
    db.apply(view, 40.0)
    db.apply(IkeDown(17), 41.0)                 # the replaced one deleted: nothing of ours
    assert [i.serial for i in db.ike_sas.values()] == [33] and len(db.child_sas) == 1


def test_a_child_sa_listed_under_another_ike_sa_moves_to_it():
    db = SaDatabase()
    db.apply(IkeUp(CONN, "dmvpn", HUB, serial=1, local_host=SPOKE), 0.0)
    db.apply(IkeUp(CONN, "dmvpn", HUB, serial=4, local_host=SPOKE), 0.0)
    db.apply(ChildUp(CONN, "dmvpn", SPOKE, HUB, spi_in=0x31, spi_out=0x32, serial=5,
                     ike_serial=1, source="log"), 0.0)
    db.apply(ChildUp(CONN, "dmvpn", SPOKE, HUB, spi_in=0x31, spi_out=0x32, serial=5,
                     ike_serial=4, source="whack"), 5.0)
    (child,) = db.child_sas.values()
    assert db.ike_sas[child.ike_uniqueid].serial == 4
    assert kinds(db.apply(IkeDown(1), 6.0)) == ["ike-down"]    # its Child SA is not taken
    assert db.links


def test_a_held_child_whose_ike_sa_whack_no_longer_lists_ends_at_once():
    """Without the log follower (the lab's spoke2) the peer's Delete of the IKE SA shows
    only as down-hosts and an IKE SA gone from whack; a new SA 4.6 s later was inside the
    hold, and nhrpd never saw its link go down (so it never registered again)."""
    db = SaDatabase()                                  # the default hold: 5 s
    db.apply(whack([(2, 0x10, 0x11)]), 0.0)            # IKE #1 and its child, from whack
    assert db.apply(down(0x10), 50.0) == []            # held
    ike_only = whack([(2, 0x10, 0x11)]).ike_sas        # IKE #1 still listed: a replacement
    listed = pluto_view(parse_showstates(f'000 #1: "{CONN}":500 STATE_V2_ESTABLISHED_IKE_SA '
                                         '(established IKE SA); newest; idle;\n'), [],
                        {CONN: SPOKE}, {CONN: HUB})    # (the peer from the held child)
    assert [i.serial for i in listed.ike_sas] == [i.serial for i in ike_only] == [1]
    still = db.apply(Reconcile(listed.ike_sas, (), grace=10.0), 50.5)
    assert still == [] and db.held                     # may come on it, as in rule 5
    gone = Reconcile((), (), grace=10.0)               # IKE #1 gone: down for real, now
    assert kinds(db.apply(gone, 51.0)) == ["child-down", "link-down", "ike-down"]
    assert not db.links and not db.held


def test_a_held_child_rekeyed_moments_ago_still_ends_when_its_ike_sa_is_gone():
    """The debian13 lab: spoke2's Child SA had been rekeyed 4 s before the hub deleted the
    IKE SA, so the reconciliation's grace for young Child SAs kept the held link up (and
    spoke2's nhrpd never registered again). The grace is for the IKE SA's age then."""
    db = SaDatabase()
    db.apply(whack([(2, 0x10, 0x11)]), 0.0)            # IKE #1, known for a long time
    db.apply(whack([(3, 0x20, 0x21)]), 46.0)           # its Child SA rekeyed (seen by whack)
    assert db.apply(down(0x20), 50.0) == []            # held
    assert kinds(db.apply(Reconcile((), (), grace=10.0), 51.0)) == [
        "child-down", "link-down", "ike-down"]


def test_a_held_child_whose_young_ike_sa_is_gone_ends_if_whack_was_asked_after():
    """debian12 lab, restarts: spoke2 (no log follower) learned its new IKE SA from whack
    9 s before the hub deleted it; the 10 s grace kept the held link up until a new SA
    replaced it, and spoke2's nhrpd never registered again. An IKE SA the database held,
    under the same serial, before whack was asked is gone when whack does not list it."""
    db = SaDatabase()
    db.apply(whack([(2, 0x10, 0x11)]), 40.0)           # IKE #1 learned from whack at 40 s
    assert db.apply(down(0x10), 48.0) == []            # held
    ike = next(iter(db.ike_sas.values()))
    young = Reconcile((), (), grace=10.0)              # asked without knowing: spared
    assert db.apply(young, 49.0) == [] and db.held
    known = Reconcile((), (), grace=10.0, known=((ike.uniqueid, 1),))
    assert kinds(db.apply(known, 49.0)) == ["child-down", "link-down", "ike-down"]


def test_an_ike_sa_rekeyed_while_whack_ran_is_not_taken_for_gone():
    """The snapshot names serial #1; the log then moved the IKE SA to #5 before whack's
    answer (listing #1, or nothing yet) arrived: the held child is spared by the grace."""
    db = SaDatabase()
    db.apply(whack([(2, 0x10, 0x11)]), 40.0)
    assert db.apply(down(0x10), 48.0) == []
    ike = next(iter(db.ike_sas.values()))
    db.apply(IkeRekeyed(1, 5), 48.5)                   # (what the log follower applies)
    stale = Reconcile((), (), grace=10.0, known=((ike.uniqueid, 1),))
    assert db.apply(stale, 49.0) == [] and db.held


def test_whack_listing_the_hooks_child_sa_without_spis_adds_no_twin():
    """debian12 lab, restarts: --showstates ran just before the new Child SA existed,
    --trafficstatus just after, so whack's view had it without SPIs; counted as a second
    Child SA, it kept spoke2's link up when pluto deleted the real one."""
    db = SaDatabase()
    hook = ChildUp(CONN, "dmvpn", SPOKE, HUB, "", HUB_ID, spi_in=0x30, spi_out=0x31,
                   source="updown")
    db.apply(hook, 10.0)
    no_spis = Reconcile((IkeUp(CONN, "dmvpn", HUB, serial=20, remote_id=HUB_ID),),
                        (ChildUp(CONN, "dmvpn", SPOKE, HUB, "", HUB_ID, serial=21,
                                 source="whack", ike_serial=20),), grace=10.0)
    db.apply(no_spis, 11.0)
    (link,) = db.links.values()
    assert link.children and len(link.children) == 1
    assert db.apply(down(0x30), 12.0) == [] and db.held     # the last one: held, as it should


def test_a_replacement_on_a_new_ike_sa_after_the_old_one_is_gone_flaps_the_link():
    """debian12 lab, restarts: the hub deleted spoke2's IKE SA (registration recovery) and
    spoke2's pluto had a new IKE SA and Child SA 2.3 s later; the next reconciliation saw
    both at once, the new Child SA took the held link over, and spoke2's nhrpd, never
    seeing it go down, never registered again. The old IKE SA's end comes first now."""
    db = SaDatabase()
    db.apply(whack([(2, 0x10, 0x11)]), 0.0)            # IKE #1 and its child
    assert db.apply(down(0x10), 50.0) == []            # held
    (ike,) = db.ike_sas.values()
    fresh = pluto_view(parse_showstates(
        f'000 #7: "{CONN}":500 STATE_V2_ESTABLISHED_IKE_SA (established IKE SA); newest;\n'
        f'000 #8: "{CONN}":500 STATE_V2_ESTABLISHED_CHILD_SA (IPsec SA established); '
        'newest; eroute owner; IKE SA #7; idle;\n'
        f'000 #8: "{CONN}" esp.20@{HUB} esp.21@{SPOKE} Traffic: ESPin=0B ESPout=0B\n'),
        parse_trafficstatus(f'006 #8: "{CONN}", type=ESP, add_time=1, inBytes=0, outBytes=0, '
                            f"id='{HUB_ID}'\n"), {CONN: SPOKE}, {CONN: HUB})
    events = kinds(db.apply(Reconcile(fresh.ike_sas, fresh.child_sas, grace=10.0,
                                      known=((ike.uniqueid, 1),)), 51.0))
    assert events.index("link-down") < events.index("link-up")
    (link,) = db.links.values()
    assert len(link.children) == 1 and not db.held


def test_a_replacement_on_the_same_ike_sa_still_does_not_flap():
    """Rule 5 unchanged: pluto's own replacement on the live IKE SA keeps the link up."""
    db = SaDatabase()
    db.apply(whack([(2, 0x10, 0x11)]), 0.0)
    assert db.apply(down(0x10), 50.0) == []
    (ike,) = db.ike_sas.values()
    assert "link-down" not in kinds(db.apply(
        Reconcile(whack([(3, 0x20, 0x21)]).ike_sas, whack([(3, 0x20, 0x21)]).child_sas,
                  grace=10.0, known=((ike.uniqueid, 1),)), 51.0))


def test_a_held_child_ends_when_its_ike_sa_dies_after_an_ike_rekey_collision():
    """debian13 lab, restarts: spoke1's and the hub's plutos rekeyed IKE SA #12 at once
    (#21 responder, #20 initiator); whack listing #20 then made an ID-less second record,
    and when the hub deleted #21 the held Child SA stayed on the surviving alias, so the
    revived SA took the link over and spoke1's nhrpd never registered again."""
    db = SaDatabase()
    db.apply(whack([(2, 0x10, 0x11)]), 0.0)            # IKE #1 (the lab's #12)
    db.apply(IkeRekeyed(1, 21), 10.0)                  # "#21: responder rekeyed IKE SA #1"
    db.apply(IkeRekeyed(1, 20), 10.1)                  # "#20: initiator rekeyed IKE SA #1"
    twin = Reconcile((IkeUp(CONN, "dmvpn", HUB, serial=20, local_host=SPOKE),),
                     whack([(2, 0x10, 0x11)]).child_sas, grace=10.0)
    assert "ike-up" not in kinds(db.apply(twin, 11.0)) and len(db.ike_sas) == 1
    assert db.apply(down(0x10), 50.0) == []            # the hub deletes the Child SA: held
    assert kinds(db.apply(IkeDown(21), 50.4)) == ["child-down", "link-down"]

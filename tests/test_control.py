"""Initiate/terminate/reconcile logic with a recording whack runner (no pluto here)."""
import asyncio
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import DATA, DaemonProc, until, up_env, wait_until, write_record

from nhrpbridge.client import ApiClient
from nhrpbridge.config import Config, ConnConfig
from nhrpbridge.control import PlutoController
from nhrpbridge.daemon import Daemon
from nhrpbridge.errors import ControlError, ErrorCode, PlutoError
from nhrpbridge.pluto import Result, Whack
from nhrpbridge.sa import ChildUp

L, R = "198.51.100.11", "198.51.100.12"


class RecordingWhack:
    """Stand-in runner: records every argv; answers from a table (showstates, rc...)."""

    def __init__(self, showstates="", traffic="", version="Libreswan 4.10", rc=None, delay=0.0,
                 stuck=False):
        self.calls = []
        self.showstates, self.traffic, self.version = showstates, traffic, version
        self.rc = rc or {}
        self.delay = delay
        self.stuck = stuck          # True: --deletestate is accepted and nothing happens

    def _forget(self, serial):
        self.showstates = "".join(line for line in self.showstates.splitlines(keepends=True)
                                  if f" #{serial}: " not in line)

    async def __call__(self, argv, timeout):
        self.calls.append(argv)
        await asyncio.sleep(self.delay)
        for word, rc in self.rc.items():
            if word in argv:
                return Result(rc, f"0{rc} failed for {word}", "")
        if "--version" in argv:
            return Result(0, self.version + "\n", "")
        if "--showstates" in argv:
            return Result(0, self.showstates, "")
        if "--deletestate" in argv and not self.stuck:
            self._forget(argv[argv.index("--deletestate") + 1])
        if "--trafficstatus" in argv:
            return Result(0, self.traffic, "")
        return Result(0, "", "")

    def named(self, word):
        return [c for c in self.calls if word in c]


def make(tmp_path, runner, shortcut_yield=3.0, keep_first=2.0, **cfg):
    cfg.setdefault("replace_hold", 0.0)      # a link's last down ends it at once here
    c = replace(Config.for_state_dir(tmp_path / "s"), initiate_timeout=2.0, **cfg)
    d = Daemon(c)
    d.load_state()
    ctl = PlutoController(c, d.db, d.apply, d.extra_state, Whack(), run=runner,
                          shortcut_yield=shortcut_yield, keep_first=keep_first)
    d.controller = ctl
    d.bus.add_sink(ctl)
    return d, ctl


def child_up(conn="dmvpn", remote=R, spi=1):
    return ChildUp(conn, "dmvpn", L, remote, "@s1", "@s2", spi_in=spi, spi_out=spi + 1,
                   source="test")


def test_ten_concurrent_initiates_one_whack_call_ten_identical_replies(tmp_path):
    runner = RecordingWhack(delay=0.05)
    d, ctl = make(tmp_path, runner)

    async def scenario():
        tasks = [asyncio.create_task(ctl.initiate("dmvpn", R)) for _ in range(10)]
        await until(lambda: len(ctl.waiters) == 10 and runner.named("--initiate"))
        assert len(runner.named("--initiate")) == 1
        d.apply(child_up(conn="dmvpn-198-51-100-12"))      # the hook reports the SA
        return await asyncio.gather(*tasks)
    replies = asyncio.run(scenario())
    assert len({json.dumps(r, sort_keys=True) for r in replies}) == 1
    assert replies[0]["result"] == "up" and replies[0]["link"]["remote-host"] == R
    assert runner.named("--initiate") == [["ipsec", "whack", "--name", "dmvpn-198-51-100-12",
                                           "--initiate", "--asynchronous"]]
    assert ctl.stats["joined"] == 9


def test_already_up_replies_at_once(tmp_path):
    runner = RecordingWhack()
    d, ctl = make(tmp_path, runner)
    d.apply(child_up())
    r = asyncio.run(ctl.initiate("dmvpn", R))
    assert r["result"] == "already-up" and runner.calls == []


def test_peer_initiating_while_ours_is_pending_resolves_it(tmp_path):
    runner = RecordingWhack()
    d, ctl = make(tmp_path, runner)

    async def scenario():
        task = asyncio.create_task(ctl.initiate("dmvpn", R))
        await until(lambda: ctl.waiters)
        d.apply(child_up(conn="dmvpn"))                   # the peer came in on the template
        return await task
    assert asyncio.run(scenario())["result"] == "up"


def test_state_with_the_peer_in_showstates_means_no_initiate(tmp_path):
    showstates = ('000 #5: "dmvpn"[3] 198.51.100.12:500 STATE_V2_PARENT_R1 (sent IKE_SA_INIT '
                  'reply); EVENT_SA_EXPIRE in 29s; idle;\n')
    runner = RecordingWhack(showstates=showstates)
    d, ctl = make(tmp_path, runner)

    async def scenario():
        task = asyncio.create_task(ctl.initiate("dmvpn", R))
        await until(lambda: ctl.stats["skipped-race"] == 1)
        d.apply(child_up(conn="dmvpn"))
        return await task
    r = asyncio.run(scenario())
    assert r == {**r, "result": "up", "how": "joined-pluto-state"}
    assert runner.named("--initiate") == [] and runner.named("addconn") == []
    assert ctl.stats["skipped-race"] == 1


def test_per_peer_conn_added_once_reused_and_deleted_after_idle(tmp_path):
    now = [1000.0]
    runner = RecordingWhack()
    d, ctl = make(tmp_path, runner, per_peer_idle=60.0)
    ctl.clock = lambda: now[0]

    async def up_then_down():
        before = len(runner.named("--initiate"))
        t = asyncio.create_task(ctl.initiate("dmvpn", R))
        await until(lambda: len(runner.named("--initiate")) > before)
        d.apply(child_up(conn="dmvpn-198-51-100-12", spi=len(runner.calls) * 10))
        await t
        d.apply(replace_down(d))
    asyncio.run(up_then_down())
    asyncio.run(up_then_down())
    assert len(runner.named("addconn")) == 1
    assert len(runner.named("--initiate")) == 2
    conf = (tmp_path / "s" / "peers.conf").read_text()
    assert "conn dmvpn-198-51-100-12\n\talso=dmvpn-base\n\tright=198.51.100.12\n\tauto=add" in conf
    assert conf.splitlines()[1] == "include /etc/ipsec.conf"
    asyncio.run(ctl.expire_per_peer())                  # down, but not long enough yet
    now[0] += 61
    asyncio.run(ctl.expire_per_peer())
    assert runner.named("--delete")[-1] == ["ipsec", "whack", "--name", "dmvpn-198-51-100-12",
                                            "--delete"]
    assert "dmvpn-198-51-100-12" not in (tmp_path / "s" / "peers.conf").read_text()


def replace_down(d):
    from nhrpbridge.sa import ChildDown
    (c,) = d.db.child_sas.values()
    return ChildDown(c.conn_name, c.connection, c.local_host, c.remote_host, c.spi_in, c.spi_out)


def test_template_mode_uses_remote_host(tmp_path):
    runner = RecordingWhack()
    d, ctl = make(tmp_path, runner, connections={"dmvpn": ConnConfig("dmvpn", per_peer="no")})
    with pytest.raises(ControlError):                     # no SA comes: times out
        asyncio.run(ctl.initiate("dmvpn", R, timeout=0.2))
    assert runner.named("--initiate") == [["ipsec", "whack", "--name", "dmvpn", "--remote-host",
                                           R, "--initiate", "--asynchronous"]]


def test_whack_failure_gives_a_clear_error(tmp_path):
    runner = RecordingWhack(rc={"--initiate": 21})
    d, ctl = make(tmp_path, runner)
    with pytest.raises(ControlError) as exc:
        asyncio.run(ctl.initiate("dmvpn", R))
    assert exc.value.code == "unknown-connection" and "rc 21" in str(exc.value)
    assert not ctl.inflight
    failed = [c for c in runner.calls if "--initiate" in c]
    assert ctl.stats["whack-failures"] == len(failed) >= 1     # what the metrics report


def test_terminate_peer_4x_and_ike_id_maps_to_serial(tmp_path):
    showstates = (DATA / "showstates-4.10.txt").read_text()
    runner = RecordingWhack(showstates=showstates,
                            traffic=(DATA / "trafficstatus-4.10.txt").read_text())
    d, ctl = make(tmp_path, runner)
    asyncio.run(ctl.reconcile())
    assert asyncio.run(ctl.terminate("dmvpn", "198.51.100.11")) == {"terminated": 1}
    assert ["ipsec", "whack", "--deletestate", "1"] in runner.calls
    ike = next(i for i in d.db.ike_sas.values() if i.serial == 3)
    asyncio.run(ctl.terminate("dmvpn", ike_id=ike.uniqueid))
    assert ["ipsec", "whack", "--deletestate", "3"] in runner.calls
    runner.version = "Libreswan 5.2"
    _, ctl5 = make(tmp_path / "v5", runner)
    asyncio.run(ctl5.detect_version())
    asyncio.run(ctl5.terminate("dmvpn"))
    assert ["ipsec", "whack", "--name", "dmvpn", "--down"] in runner.calls


def test_an_ike_sa_pluto_keeps_after_its_deletion_is_deleted_by_peer_id(tmp_path):
    """pluto 4.10 accepted `--deletestate` and kept the IKE SA (its Delete queued behind a
    lost exchange); the terminate says so and deletes that peer's IKE SAs at once."""
    runner = RecordingWhack(showstates=(DATA / "showstates-4.10.txt").read_text(),
                            traffic=(DATA / "trafficstatus-4.10.txt").read_text(), stuck=True)
    d, ctl = make(tmp_path, runner)
    ctl.terminate_confirm = 0.6
    asyncio.run(ctl.reconcile())
    peer_id = next(i.remote_id for i in d.db.ike_sas.values() if i.serial == 1)
    assert peer_id
    assert asyncio.run(ctl.terminate("dmvpn", "198.51.100.11")) == {"terminated": 1, "forced": 1}
    assert runner.named("--deleteid") == [["ipsec", "whack", "--deleteid", "--name", peer_id]]
    runner.stuck = False                    # pluto deletes as asked: nothing forced
    ike = next(i for i in d.db.ike_sas.values() if i.serial == 3)
    assert asyncio.run(ctl.terminate("dmvpn", ike_id=ike.uniqueid)) == {"terminated": 1}
    assert len(runner.named("--deleteid")) == 1


def test_an_ike_sa_in_the_middle_of_its_exchange_is_deleted_only_once_established(tmp_path):
    """pluto 5.2 crashed when a revoked spoke's new IKE SA was deleted while its IKE_AUTH
    was still being answered (a lab run); the delete now waits for the exchange to end."""
    busy = ('#125: "dmvpn"[44] 198.51.100.12:500 IKE_SA_INIT_R (sent IKE_SA_INIT response, '
            'waiting for IKE_INTERMEDIATE or IKE_AUTH request); EVENT_v2_DISCARD in 10s; idle;\n')
    done = busy.replace("IKE_SA_INIT_R (sent IKE_SA_INIT response, waiting for IKE_INTERMEDIATE"
                        " or IKE_AUTH request)", "ESTABLISHED_IKE_SA (established IKE SA)")
    runner = RecordingWhack(showstates=busy, version="Libreswan 5.2")
    _, ctl = make(tmp_path, runner)

    async def scenario():
        task = asyncio.create_task(ctl.terminate("dmvpn", "198.51.100.12"))
        await asyncio.sleep(1.2)
        before = runner.named("#125")
        runner.showstates = done
        await asyncio.wait_for(task, 5)
        return before

    assert asyncio.run(scenario()) == []
    assert runner.named("#125") == [["ipsec", "whack", "--name", "#125", "--down"]]


def test_delete_by_peer_id_refuses_what_whack_would_misread():
    with pytest.raises(PlutoError):
        Whack().delete_id("C=XX, CN=a\nb\x00")
    with pytest.raises(PlutoError):
        Whack().delete_id("")


def test_reconcile_pluto_restart_brings_every_link_down(tmp_path):
    runner = RecordingWhack(showstates=(DATA / "showstates-4.10.txt").read_text(),
                            traffic=(DATA / "trafficstatus-4.10.txt").read_text())
    d, ctl = make(tmp_path, runner)
    asyncio.run(ctl.reconcile())
    assert len(d.db.links) == 2
    assert ctl.stats["reconcile-changes"] > 0 and ctl.last_reconcile > 0
    runner.rc = {"--showstates": 33}
    runner.showstates = ""
    # rc 33 alone is not "not running": that needs pluto's words
    with pytest.raises(ControlError):
        asyncio.run(ctl.reconcile())
    assert len(d.db.links) == 2

    async def not_running(argv, timeout):
        return Result(33, "", 'whack: Pluto is not running (no "/run/pluto/pluto.ctl")\n')
    ctl.run_cmd = not_running
    asyncio.run(ctl.reconcile())
    assert not d.db.links


# ---- end to end: real processes --------------------------------------------------

@pytest.mark.skipif(not shutil.which("ipsec"), reason="libreswan not installed")
def test_real_whack_pluto_not_running(sockdir):
    d = DaemonProc(sockdir / "state", "--pluto-rundir", str(sockdir / "norun"), pluto=True)
    d.start()
    try:
        with ApiClient(d.socket, timeout=30) as c:
            r = c.request("initiate", connection="dmvpn", **{"remote-host": R})
        assert not r["ok"] and r["error"]["code"] == "pluto-not-running"
        assert "Pluto is not running" in r["error"]["message"]
    finally:
        d.kill9()


def test_stand_in_ipsec_gets_argv_without_a_shell(sockdir):
    """STAND-IN executable for `ipsec` (records argv); the real whack needs a running pluto."""
    standin = sockdir / "standin"
    standin.mkdir()
    (standin / "showstates.txt").write_text((DATA / "showstates-4.10.txt").read_text())
    (standin / "trafficstatus.txt").write_text((DATA / "trafficstatus-4.10.txt").read_text())
    os.environ["STANDIN_DIR"] = str(standin)
    d = DaemonProc(sockdir / "state", "--ipsec", str(DATA / "ipsec-stand-in"), pluto=True)
    d.start()
    try:
        with ApiClient(d.socket, timeout=30) as c:
            links = c.request("list")["links"]
            assert len(links) == 2          # reconciled before the socket was served
            r = c.request("initiate", connection="dmvpn", **{"remote-host": "198.51.100.20"},
                          timeout=1)
            assert r["error"]["code"] == "timeout"
            r = c.request("initiate", connection="$(touch x)", **{"remote-host": "198.51.100.20"})
            assert r["error"]["code"] == "bad-request"
        # the reply timed out at 1 s; the attempt goes on (addconn, a second race check)
        read = lambda: [json.loads(l) for l in (standin / "calls.jsonl").read_text().splitlines()]
        want = ["whack", "--name", "dmvpn-198-51-100-20", "--initiate", "--asynchronous"]
        wait_until(lambda: want in read(), timeout=20, what="whack --initiate")
        calls = read()
        assert want in calls
        assert ["addconn", "--config", str(sockdir / "state" / "peers.conf"),
                "dmvpn-198-51-100-20"] in calls
        assert not (Path.cwd() / "x").exists()
    finally:
        d.kill9()
        del os.environ["STANDIN_DIR"]


def test_per_peer_conn_forgotten_by_a_restarted_pluto_is_added_again(tmp_path):
    runner = RecordingWhack()
    d, ctl = make(tmp_path, runner)
    ctl.per_peer.restore({"dmvpn-198-51-100-12": ["dmvpn", R]})
    first = [True]

    async def run(argv, timeout):
        if "--initiate" in argv and first[0]:
            first[0] = False
            runner.calls.append(argv)       # what 4.10 really does with --asynchronous: rc 0
            return Result(0, "000 initiating all conns with alias='dmvpn-198-51-100-12'\n"
                             "021 no connection named \"dmvpn-198-51-100-12\"\n", "")
        return await runner(argv, timeout)
    ctl.run_cmd = run
    r = asyncio.run(ctl.initiate("dmvpn", R, wait=False))
    assert r == {"result": "initiated"}
    assert len(runner.named("addconn")) == 1 and len(runner.named("--initiate")) == 2


def test_transient_failure_is_retried_in_the_background(tmp_path):
    """Lab finding: nhrpd asks right after pluto restarts, and asks again only ~2 min later."""
    runner = RecordingWhack()
    d, ctl = make(tmp_path, runner)
    ctl.retry_first = 0.05
    down = [2]

    async def run(argv, timeout):
        if "--showstates" in argv and down[0] > 0:
            down[0] -= 1
            runner.calls.append(argv)
            return Result(33, "", 'whack: Pluto is not running (no "/run/pluto/pluto.ctl")\n')
        return await runner(argv, timeout)
    ctl.run_cmd = run

    async def scenario():
        r = await ctl.initiate("dmvpn", R, wait=False)       # answered at once
        assert r == {"result": "retrying"}
        await until(lambda: runner.named("--initiate"))
        d.apply(child_up(conn="dmvpn-198-51-100-12"))
        return await ctl.initiate("dmvpn", R)
    assert asyncio.run(scenario())["result"] == "already-up"
    assert len(runner.named("--initiate")) == 1


def test_permanent_failure_is_not_retried(tmp_path):
    runner = RecordingWhack(rc={"addconn": 3})
    d, ctl = make(tmp_path, runner)
    with pytest.raises(ControlError):
        asyncio.run(ctl.initiate("dmvpn", R, wait=False))
    assert len(runner.named("addconn")) == 1


def test_peer_negotiation_starting_during_addconn_is_joined_not_raced(tmp_path):
    """Lab finding (gotcha 3): addconn took seconds; the peer's IKE SA appeared meanwhile."""
    runner = RecordingWhack()
    d, ctl = make(tmp_path, runner)
    peer_state = ('000 #3: "dmvpn"[1] 198.51.100.12:500 STATE_V2_ESTABLISHED_IKE_SA (established IKE SA); idle;\n'
                  '000 #4: "dmvpn"[1] 198.51.100.12:500 STATE_V2_ESTABLISHED_CHILD_SA (IPsec SA established); IKE SA #3; idle;\n')

    async def run(argv, timeout):
        if "addconn" in argv:
            runner.showstates = peer_state          # the peer got there while we added
        return await runner(argv, timeout)
    ctl.run_cmd = run
    r = asyncio.run(ctl.initiate("dmvpn", R, wait=False))
    assert r == {"result": "joined-pluto-state"}
    assert runner.named("--initiate") == [] and len(runner.named("addconn")) == 1


def test_shortcut_higher_address_lets_the_peer_initiate(tmp_path):
    """Both spokes are asked at once; only the lower address initiates."""
    runner = RecordingWhack()
    d, ctl = make(tmp_path, runner)

    async def scenario():
        r = await ctl.initiate("dmvpn", "198.51.100.5", local=L, wait=False, shortcut=True)
        assert r == {"result": "yielding-to-peer"}          # 198.51.100.11 > .5
        await until(lambda: runner.named("--showstates"))     # it is looking: the peer starts
        runner.showstates = ('000 #9: "dmvpn"[2] 198.51.100.5:500 STATE_V2_PARENT_R1 '
                             '(sent IKE_SA_INIT reply); idle;\n')
        await until(lambda: ctl.stats.get("yielded"))
    asyncio.run(scenario())
    assert runner.named("--initiate") == [] and ctl.stats.get("yielded") == 1
    # the lower end initiates at once; a peer that never starts is initiated after the wait
    runner2 = RecordingWhack()
    d2, ctl2 = make(tmp_path / "b", runner2)
    assert asyncio.run(ctl2.initiate("dmvpn", "198.51.100.20", local=L, wait=False,
                                     shortcut=True)) == {"result": "initiated"}
    runner3 = RecordingWhack()
    d3, ctl3 = make(tmp_path / "c", runner3, shortcut_yield=0.5)

    async def lonely():
        await ctl3.initiate("dmvpn", "198.51.100.5", local=L, wait=False, shortcut=True)
        await until(lambda: runner3.named("--initiate"), timeout=5)
    asyncio.run(lonely())
    assert len(runner3.named("--initiate")) == 1


def test_remote_host_initiate_is_not_blocked_by_other_peers_of_the_template(tmp_path):
    """Seen on libreswan 5.2 with per-peer: no: every state of the template "dmvpn" was
    taken for a negotiation with the new peer, so the hub never initiated."""
    other = ('#4: "dmvpn"[2] 198.51.100.12:500 ESTABLISHED_CHILD_SA (established Child SA); '
             "IKE SA #3; idle;\n"
             '#4: "dmvpn"[2] 198.51.100.12 esp.1@198.51.100.12 esp.2@198.51.100.1 ref=0\n')
    runner = RecordingWhack(showstates=other, version="Libreswan 5.2")
    d, ctl = make(tmp_path, runner, connections={"dmvpn": ConnConfig("dmvpn", per_peer="no")})

    async def scenario():
        task = asyncio.create_task(ctl.initiate("dmvpn", "198.51.100.13"))
        await until(lambda: runner.named("--initiate"))
        task.cancel()
    asyncio.run(scenario())
    assert ["ipsec", "whack", "--name", "dmvpn", "--remote-host", "198.51.100.13", "--initiate",
            "--asynchronous"] in runner.calls


def test_link_to_an_nhs_is_kept_up_until_terminated(tmp_path):
    """A hub outage: nhrpd >= 10.1 asks again only every holdtime/4 (30 min by default),
    so the link to the NHS is initiated again by nhrpbridge, and its per-peer conn stays."""
    from nhrpbridge.config import NodeConfig
    runner = RecordingWhack()
    d, ctl = make(tmp_path, runner, keep_first=0.05, per_peer_idle=0.0,
                  node=NodeConfig(role="spoke", nhs=(R,)))

    async def scenario():
        await ctl.initiate("dmvpn", R, wait=False)            # nhrpd asks once
        assert ctl.keeps("dmvpn", R) and not ctl.keeps("dmvpn", "198.51.100.99")
        d.apply(child_up(conn="dmvpn-198-51-100-12"))
        d.apply(replace_down(d))                              # the hub goes away
        await until(lambda: len(runner.named("--initiate")) == 2, what="initiated again")
        await ctl.expire_per_peer()                           # idle 0 s, but kept
        assert not runner.named("--delete")
        d.apply(child_up(conn="dmvpn-198-51-100-12", spi=7))   # back
        await until(lambda: not ctl._keepers, what="keeper done")
        await ctl.terminate("dmvpn", R)                       # the operator: down for good
        assert not ctl.keeps("dmvpn", R)
        if d.db.child_sas:                                    # (reconcile may have taken it)
            d.apply(replace_down(d))
        await asyncio.sleep(0.3)
        assert len(runner.named("--initiate")) == 2           # not initiated again
    asyncio.run(scenario())
    assert d.extra_state["wanted"] == []


def test_a_kept_link_whose_last_child_sa_ended_is_initiated_within_the_hold(tmp_path):
    """The lab (4.10): an IKE SA rekey took the spoke's only Child SA with it and pluto
    started nothing for 10 s; the link is held (sadb rule 5), not down, so nhrpd asks
    nothing: nhrpbridge initiates the kept link itself, and the new Child SA arrives
    before the hold ends: no link-down at all."""
    from nhrpbridge.config import NodeConfig
    from nhrpbridge.sa import ChildDown
    runner = RecordingWhack()
    d, ctl = make(tmp_path, runner, replace_hold=5.0, node=NodeConfig(role="spoke", nhs=(R,)))
    seen = []
    d.bus.add_sink(type("Kinds", (), {"push_event": lambda self, ev: seen.append(ev.kind),
                                      "push_notice": lambda self, msg: None})())

    async def scenario():
        await ctl.initiate("dmvpn", R, wait=False)
        d.apply(child_up(conn="dmvpn-198-51-100-12"))
        (c,) = d.db.child_sas.values()
        d.apply(ChildDown(c.conn_name, c.connection, c.local_host, c.remote_host, c.spi_in,
                          c.spi_out))
        assert d.db.held and ctl._link_up("dmvpn", R, None) is None
        await until(lambda: len(runner.named("--initiate")) == 2, timeout=2.0,
                    what="initiated within the hold")
        d.apply(child_up(conn="dmvpn-198-51-100-12", spi=9))
    asyncio.run(scenario())
    assert "link-down" not in seen and seen[-2:] == ["child-up", "child-down"]
    assert not d.db.held


class GatedWhack(RecordingWhack):
    """RecordingWhack whose addconn and --initiate calls wait for `gate` (a pluto that
    takes its time), so what runs side by side can be counted."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.gate = asyncio.Event()

    async def __call__(self, argv, timeout):
        if "addconn" in argv or "--initiate" in argv:
            self.calls.append(argv)
            await self.gate.wait()
            return Result(0, "", "")
        return await super().__call__(argv, timeout)


def test_async_initiates_are_answered_while_their_attempts_go_on(tmp_path):
    runner = GatedWhack()
    c = replace(Config.for_state_dir(tmp_path / "s"))
    d = Daemon(c)
    d.load_state()
    ctl = PlutoController(c, d.db, d.apply, d.extra_state, Whack(), run=runner,
                          accept_wait=0.05, parallel=2)
    peers = [f"198.51.100.{20 + i}" for i in range(5)]

    async def scenario():
        replies = await asyncio.gather(*(ctl.initiate("dmvpn", p, wait=False) for p in peers))
        assert [r["result"] for r in replies] == ["initiating"] * 5
        await until(lambda: len(runner.named("addconn")) == 2, what="two attempts")
        await asyncio.sleep(0.1)
        assert len(runner.named("addconn")) == 2          # bounded: the others wait
        runner.gate.set()
        await until(lambda: len(runner.named("--initiate")) == 5, what="every attempt")
    asyncio.run(scenario())
    names = sorted(c[c.index("--name") + 1] for c in runner.named("--initiate"))
    assert names == [f"dmvpn-198-51-100-{20 + i}" for i in range(5)]


def test_a_permanent_error_within_the_wait_still_reaches_the_caller(tmp_path):
    runner = RecordingWhack(rc={"--initiate": 21})     # 21: unknown connection
    d, ctl = make(tmp_path, runner)
    with pytest.raises(ControlError):
        asyncio.run(ctl.initiate("dmvpn", R, wait=False))


def test_state_reads_at_the_same_time_share_one_showstates(tmp_path):
    runner = RecordingWhack(delay=0.05)
    d, ctl = make(tmp_path, runner)

    async def scenario():
        await asyncio.gather(*(ctl.states() for _ in range(5)))
        await ctl.states()                                # later: a new one
    asyncio.run(scenario())
    assert len(runner.named("--showstates")) == 2


def _view(ike, child, spi_peer, spi_me, peer="198.51.100.11"):
    """whack 4.10's --showstates and --trafficstatus with one IKE SA and its Child SA."""
    ss = (f'000 #{ike}: "dmvpn"[2] {peer}:500 STATE_V2_ESTABLISHED_IKE_SA (established IKE SA);'
          ' newest; idle;\n'
          f'000 #{child}: "dmvpn"[2] {peer}:500 STATE_V2_ESTABLISHED_CHILD_SA (IPsec SA '
          f'established); newest; eroute owner; IKE SA #{ike}; idle;\n'
          f'000 #{child}: "dmvpn"[2] {peer} esp.{spi_peer}@{peer} esp.{spi_me}@198.51.100.1 '
          'Traffic: ESPin=0B ESPout=0B ESPmax=2^63B\n')
    ts = (f'006 #{child}: "dmvpn"[2] {peer}, type=ESP, add_time=1, inBytes=0, outBytes=0, '
          f"maxBytes=2^63B, id='@{peer}'\n")
    return ss, ts


class Kinds:
    """A bus sink keeping the kinds of the events published."""

    def __init__(self):
        self.kinds = []

    def push_event(self, ev):
        self.kinds.append(ev.kind)

    def push_notice(self, msg):
        pass


@pytest.mark.parametrize("same_ike", [False, True])
def test_a_hook_only_replacement_waits_for_whack_to_tell_a_new_ike_sa(tmp_path, same_ike):
    """debian12 lab, restarts, spoke2 (no log follower): the hub deleted its IKE SA, the
    hook's down-host was held (sadb rule 5) and the hook's Child SA on the new IKE SA, 2 s
    later, came before the recheck's whack: it took the link over, spoke2's nhrpd never saw
    the link go down and registered again 55 s late. Now that hook record waits for whack:
    a new IKE SA brings the link down and up; pluto's replacement on the same IKE SA does
    not flap it."""
    runner = RecordingWhack()
    runner.showstates, runner.traffic = _view(1, 2, "0000a001", "0000b001")
    d, ctl = make(tmp_path, runner, replace_hold=5.0)
    d.ingest.hold_back = ctl.hold_back
    seen = Kinds()
    d.bus.add_sink(seen)
    spool = d.spool.path

    async def scenario():
        write_record(spool, 1, up_env(spi_in="0xa001", spi_out="0xb001"))
        d.ingest_once()
        await ctl.reconcile()
        assert [c.serial for c in d.db.child_sas.values()] == [2]
        write_record(spool, 2, up_env(verb="down-host", spi_in="0xa001", spi_out="0xb001"))
        d.ingest_once()
        assert d.db.held and "link-down" not in seen.kinds
        runner.showstates, runner.traffic = _view(1 if same_ike else 5, 6, "0000a002", "0000b002")
        write_record(spool, 3, up_env(spi_in="0xa002", spi_out="0xb002"))
        assert d.ingest_once() == 0                 # waits for whack
        await until(lambda: not d.db.held, what="the held Child SA settled")
        d.ingest_once()
        (link,) = d.db.links.values()
        return len(link.children)

    assert asyncio.run(scenario()) == 1
    tail = seen.kinds[seen.kinds.index("link-up") + 1:]
    if same_ike:
        assert "link-down" not in tail
    else:
        assert tail.index("link-down") < tail.index("link-up")


def test_a_4x_delete_whack_does_not_answer_and_the_peer_id_delete_follows(tmp_path):
    """debian12 lab, nat-rebind clean-up: `whack --deletestate` of an IKE SA whose peer had
    moved behind its NAT stayed 30 s without an answer, the terminate failed, and the stale
    SA stayed. Now the whack wait is the confirmation time and the peer-ID delete follows."""
    class Unanswered(RecordingWhack):
        async def __call__(self, argv, timeout):
            if "--deletestate" in argv:
                self.calls.append(argv)
                raise PlutoError(f"{' '.join(argv[:4])}... did not answer within {timeout:g} s",
                                 ErrorCode.TIMEOUT)
            return await super().__call__(argv, timeout)

    runner = Unanswered(showstates=(DATA / "showstates-4.10.txt").read_text(),
                        traffic=(DATA / "trafficstatus-4.10.txt").read_text())
    d, ctl = make(tmp_path, runner)
    ctl.terminate_confirm = 0.3
    asyncio.run(ctl.reconcile())
    peer_id = next(i.remote_id for i in d.db.ike_sas.values() if i.serial == 1)
    assert asyncio.run(ctl.terminate("dmvpn", "198.51.100.11")) == {"terminated": 1, "forced": 1}
    assert runner.named("--deleteid") == [["ipsec", "whack", "--deleteid", "--name", peer_id]]

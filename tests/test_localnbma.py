"""A dynamic local address (`nbma: auto`): nhrpd's my-host drives pluto's reload.

The whack runner is the recording stand-in of test_control (no pluto here); the lab's
`underlay-change` scenario runs the same path against real pluto and nhrpd.
"""
import asyncio
import re

import pytest
from test_control import RecordingWhack, make

from nhrpbridge.config import NodeConfig
from nhrpbridge.errors import ControlError

HUB, OLD, NEW = "198.51.100.1", "198.51.100.11", "198.51.100.31"


def node(nbma):
    return NodeConfig(role="spoke", nbma=nbma, gre_address="203.0.113.11", nhs=(HUB,),
                      cert="spoke1", line=14)


def spoke(tmp_path, nbma="auto"):
    runner = RecordingWhack()
    d, ctl = make(tmp_path, runner, node=node(nbma), source="/etc/nhrpbridge/spoke.yaml")
    ctl.local_nbma.is_local = lambda a: a in (OLD, NEW)
    return d, ctl, runner


def verbs(runner):
    """The whack/addconn calls after the version check, as short words."""
    out = []
    for argv in runner.calls:
        if "--version" in argv or "--showstates" in argv or "--trafficstatus" in argv:
            continue
        out.append(" ".join(a.rsplit("/", 1)[-1] for a in argv
                            if a not in ("ipsec", "whack", "--config", "--asynchronous")))
    return out


def test_address_change_reloads_pluto_once_and_per_peer_conns_name_my_host(tmp_path):
    d, ctl, runner = spoke(tmp_path)
    peers = tmp_path / "s" / "peers.conf"

    async def scenario():
        await ctl.initiate("dmvpn", HUB, OLD, wait=False)
        first = verbs(runner)
        runner.calls.clear()
        # DHCP moved the address: nhrpd asks for the hub and a shortcut at once
        await asyncio.gather(ctl.initiate("dmvpn", HUB, NEW, wait=False),
                             ctl.initiate("dmvpn", "198.51.100.12", NEW, wait=False))
        return first, verbs(runner)

    first, second = asyncio.run(scenario())
    assert first == ["addconn peers.conf dmvpn-198-51-100-1", "--name dmvpn-198-51-100-1 --initiate"]
    assert second[:7] == ["--listen", "--name dmvpn --delete", "addconn ipsec.conf dmvpn",
                          "--name dmvpn-nat --delete", "addconn ipsec.conf dmvpn-nat",
                          "--name dmvpn-198-51-100-1 --delete", "addconn peers.conf dmvpn-198-51-100-1"]
    assert second.count("--listen") == 1
    assert "--name dmvpn-198-51-100-12 --initiate" in second
    text = peers.read_text()
    assert f"left={OLD}" not in text and text.count(f"left={NEW}") == 2
    assert d.extra_state["local-nbma"] == NEW
    assert ctl.local_nbma.moves == 1


def test_an_initiate_without_my_host_keeps_the_loaded_address(tmp_path):
    """nhrpbridge's own re-initiation of an NHS link names no local address."""
    d, ctl, runner = spoke(tmp_path)
    asyncio.run(ctl.initiate("dmvpn", "198.51.100.12", wait=False))     # nothing known yet
    asyncio.run(ctl.initiate("dmvpn", HUB, OLD, wait=False))
    asyncio.run(ctl.terminate("dmvpn", HUB))
    runner.calls.clear()
    asyncio.run(ctl.initiate("dmvpn", HUB, wait=False))
    assert verbs(runner) == ["--name dmvpn-198-51-100-1 --initiate"]
    text = (tmp_path / "s" / "peers.conf").read_text()
    assert f"left={OLD}" in text and "left=%defaultroute" in text


def test_a_restart_remembers_which_address_the_conns_were_loaded_with(tmp_path):
    d, ctl, runner = spoke(tmp_path)
    asyncio.run(ctl.initiate("dmvpn", HUB, OLD, wait=False))
    d.touch()   # (in the daemon the link that comes up next does that)
    assert d.checkpoint()
    d2, ctl2, runner2 = spoke(tmp_path)
    d2.controller.restore(d2.extra_state.get("per-peer"))
    assert d2.extra_state["local-nbma"] == OLD
    asyncio.run(ctl2.initiate("dmvpn", HUB, NEW, wait=False))
    assert "--listen" in verbs(runner2)


@pytest.mark.parametrize("nbma,asked,says", [
    ("auto", "198.51.100.99", "198.51.100.99, which is not an address of this node"),
    (OLD, NEW, "but node.nbma in /etc/nhrpbridge/spoke.yaml (line 14) is 198.51.100.11"),
])
def test_an_address_the_node_does_not_use_is_refused_and_nothing_reloads(tmp_path, nbma, asked, says):
    d, ctl, runner = spoke(tmp_path, nbma)
    with pytest.raises(ControlError, match=re.escape(says)):
        asyncio.run(ctl.initiate("dmvpn", HUB, asked, wait=False))
    assert verbs(runner) == []


def test_fixed_address_initiates_as_before_without_left(tmp_path):
    d, ctl, runner = spoke(tmp_path, OLD)
    asyncio.run(ctl.initiate("dmvpn", HUB, OLD, wait=False))
    assert verbs(runner) == ["addconn peers.conf dmvpn-198-51-100-1", "--name dmvpn-198-51-100-1 --initiate"]
    assert "left=" not in (tmp_path / "s" / "peers.conf").read_text()

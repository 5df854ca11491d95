"""`nhrpbridge status --peers`: links and SAs joined with nhrpd's cache, one line per peer."""
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DaemonProc, run_hook, up_env, wait_until
from test_nhrp_events import block, replies

from nhrpbridge.peerview import format_peers, parse_nhrp_cache, peer_rows

ROOT = Path(__file__).resolve().parents[1]
S1, S2, S9 = "198.51.100.11", "198.51.100.12", "198.51.100.99"
# what FRR 8.4's `show ip nhrp cache json` printed in the lab (fields of nhrp_vty.c)
CACHE_JSON = json.dumps({"attr": {"entriesCount": 3}, "table": [
    {"interface": "gre1", "type": "local", "protocol": "203.0.113.1", "nbma": "198.51.100.1",
     "claimed_nbma": "-", "used": False, "timeout": False, "auth": False, "identity": "-"},
    {"interface": "gre1", "type": "dynamic", "protocol": "203.0.113.11", "nbma": S1,
     "claimed_nbma": S1, "used": False, "timeout": True, "auth": False,
     "identity": "C=XX, O=DMVPN Lab, CN=spoke1"},
    {"interface": "gre1", "type": "dynamic", "protocol": "203.0.113.99", "nbma": S9,
     "claimed_nbma": S9, "used": False, "timeout": True, "auth": False, "identity": "-"}]})
CACHE_TEXT = """Iface    Type     Protocol                 NBMA                     Claimed NBMA             Flags  Identity
gre1     dynamic  203.0.113.11             198.51.100.11            198.51.100.11            T      C=XX, O=DMVPN Lab, CN=spoke1
"""


def test_nhrpd_cache_json_and_text_forms():
    entries = parse_nhrp_cache(CACHE_JSON)
    assert [(e["type"], e["nbma"], e["timeout"]) for e in entries] == [
        ("local", "198.51.100.1", False), ("dynamic", S1, True), ("dynamic", S9, True)]
    (e,) = parse_nhrp_cache(CACHE_TEXT)
    assert (e["type"], e["protocol"], e["nbma"]) == ("dynamic", "203.0.113.11", S1)
    for bad in ("% Unknown command", '{"table": 3}'):
        with pytest.raises(ValueError):
            parse_nhrp_cache(bad)


def listing():
    return {"links": [
        {"connection": "dmvpn", "local-host": "198.51.100.1", "remote-host": S1,
         "remote-id": "C=XX, O=DMVPN Lab, CN=spoke1", "children": 2, "child-ids": [3, 4],
         "up": True},
        {"connection": "dmvpn", "local-host": "198.51.100.1", "remote-host": S2,
         "remote-id": "@s2", "children": 0, "child-ids": [], "up": False}],
        "ike-sas": [{"uniqueid": 1, "serial": 7, "established": 1000.0}],
        "child-sas": [{"uniqueid": 3, "ike-uniqueid": 1, "installed": 1000.5},
                      {"uniqueid": 4, "ike-uniqueid": 1, "installed": 1003.0,
                       "rekeyed": 1600.0}]}


def test_rows_join_links_sas_cache_and_bindings():
    bindings = {S1: {"time": 1700.0, "decision": "accept", "code": "in-san",
                     "gre-address": "203.0.113.11", "reason": "..."},
                S2: {"time": 1750.0, "decision": "reject", "code": "revoked",
                     "gre-address": "203.0.113.12", "reason": "..."}}
    rows = peer_rows(listing(), bindings, parse_nhrp_cache(CACHE_JSON), now=1800.0)
    by = {r["nbma"]: r for r in rows}
    assert list(by) == [S1, S2, S9]              # links first, then cache-only entries
    r1 = by[S1]
    assert (r1["gre-address"], r1["link"], r1["ike-serials"], r1["children"], r1["up-for"],
            r1["last-rekey"], r1["nhrp-type"], r1["nhrp-timer"], r1["binding"],
            r1["binding-age"]) == ("203.0.113.11", "up", [7], 2, 800, 1600.0, "dynamic", True,
                                   "accept", 100)
    assert (by[S2]["link"], by[S2]["nhrp-type"], by[S2]["binding-code"], by[S2]["gre-address"]) \
        == ("down", None, "revoked", "203.0.113.12")
    assert (by[S9]["link"], by[S9]["connection"], by[S9]["nhrp-type"]) == (None, None, "dynamic")
    table = format_peers(rows)
    line = next(ln for ln in table.splitlines() if ln.startswith(S1))
    assert "#7" in line and "800s" in line and "200s" in line and "dynamic+timer" in line
    assert "accept:in-san 100s ago" in line
    assert "nhrpd's view unavailable: vtysh: no" in format_peers(rows, "vtysh: no")


@pytest.fixture
def hub(sockdir):
    ev = sockdir / "ev.sock"
    d = DaemonProc(sockdir / "state", "--nhrp-event-socket", str(ev), "--policy",
                   "any-authenticated").start()
    run_hook(up_env(peer=S1, peer_id="C=XX, O=DMVPN Lab, CN=spoke1"), d.state_dir / "spool",
             "--no-chain")
    wait_until(lambda: "link-up" in d.log.read_text(), what="link")
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(ev))
    s.sendall(block(1, remote_nbma=S1))
    assert replies(s, 1)[0]["result"] == "accept"
    s.close()
    yield d
    d.kill9()


def vtysh_stand_in(tmp_path, body, rc=0):
    """A stand-in for vtysh (no nhrpd runs here): prints what nhrpd printed in the lab."""
    f = tmp_path / "vtysh"
    (tmp_path / "out").write_text(body)
    f.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/argv\ncat {tmp_path}/out\nexit {rc}\n")
    f.chmod(0o755)
    return str(f)


def status_peers(d, *extra):
    return subprocess.run([sys.executable, "-m", "nhrpbridge", "status", "--peers",
                           "--state-dir", str(d.state_dir), *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)


def test_cli_status_peers_json(hub, tmp_path):
    out = status_peers(hub, "--json", "--vtysh", vtysh_stand_in(tmp_path, CACHE_JSON),
                       "--vty-socket", "/run/frr-x")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["nhrpd"] == "ok"
    assert (tmp_path / "argv").read_text().split() == [
        "--vty_socket", "/run/frr-x", "-c", "show", "ip", "nhrp", "cache", "json"]
    p1 = next(p for p in data["peers"] if p["nbma"] == S1)
    assert (p1["link"], p1["nhrp-type"], p1["binding"], p1["binding-code"], p1["children"]) == \
        ("up", "dynamic", "accept", "authenticated", 1)


def test_cli_status_peers_without_nhrpd_still_shows_nhrpbridges_view(hub, tmp_path):
    out = status_peers(hub, "--vtysh", vtysh_stand_in(tmp_path, "", rc=1))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].startswith(S1)
    assert "nhrpd's view unavailable:" in out.stdout and "exited 1" in out.stdout
    out = status_peers(hub, "--vtysh", "/nonexistent/vtysh")
    assert "nhrpd's view unavailable: /nonexistent/vtysh:" in out.stdout

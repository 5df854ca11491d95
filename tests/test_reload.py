"""Reload: the config file again, in place; what cannot change in place is named."""
import json
import subprocess
import sys

from conftest import ROOT, DaemonProc, run_hook, up_env, wait_until
from memory import MemoryDaemon

from nhrpbridge.client import ApiClient
from nhrpbridge.config import load_config

BASE = """\
state-dir: {state}
log-level: info
api:
  socket: {state}/api.sock
vici:
  socket: {sock}/vici.sock
connections:
  dmvpn:
    policy: {policy}
"""


def write(path, **kw):
    path.write_text(BASE.format(**kw))


def test_reload_applies_policies_and_names_what_needs_a_restart(sockdir):
    conf = sockdir / "nb.yaml"
    state = sockdir / "state"
    write(conf, state=state, sock=sockdir, policy="deny")
    d = MemoryDaemon(load_config(conf), loader=lambda: load_config(conf)).start()
    try:
        run_hook(up_env(peer="198.51.100.11", peer_id="@spoke1"), state / "spool", "--no-chain")
        wait_until(lambda: d.daemon.db.links, what="link")
        with ApiClient(sock=d.connect()) as c:
            ask = {"connection": "dmvpn", "remote-nbma": "198.51.100.11",
                   "gre-address": "203.0.113.11"}
            assert c.request("authorize", **ask)["decision"] == "reject"
            write(conf, state=state, sock=sockdir / "elsewhere", policy="any-authenticated")
            r = c.request("reload")
            assert r["ok"] and r["reloaded"]
            assert r["changed"] == ["connections"] and r["needs-restart"] == ["vici.socket"]
            assert c.request("authorize", **ask)["decision"] == "accept"     # in place
            # a broken file changes nothing and says where it is broken
            conf.write_text(conf.read_text().replace("any-authenticated", "anybody"))
            r = c.request("reload")
            assert r["ok"] and not r["reloaded"]
            assert r["problems"] and r["problems"][0].startswith(f"{conf}:9: connections.dmvpn.policy")
            assert c.request("authorize", **ask)["decision"] == "accept"
        assert "needs a restart (nhrpbridge restart): vici.socket" in d.log_text()
    finally:
        d.stop()


def test_reload_is_a_control_op_and_the_cli_prints_the_outcome(sockdir):
    conf = sockdir / "nb.yaml"
    state = sockdir / "state"
    write(conf, state=state, sock=sockdir, policy="deny")
    d = DaemonProc(state, "-c", str(conf)).start()
    try:
        write(conf, state=state, sock=sockdir, policy="gre-ip-in-cert-san")
        out = subprocess.run([sys.executable, "-m", "nhrpbridge", "reload", "-c", str(conf)],
                             capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == ["reloaded: changed in place: connections"]
        conf.write_text(conf.read_text().replace("log-level: info", "log-level: loud"))
        # (the CLI itself would refuse the broken file: it finds the socket through --socket)
        out = subprocess.run([sys.executable, "-m", "nhrpbridge", "reload", "--json", "--socket",
                              d.socket], capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert out.returncode == 1
        r = json.loads(out.stdout)
        assert r["reloaded"] is False and "log-level" in r["problems"][0]
        assert "reload" in ApiClient(d.socket).request("hello")["capabilities"]
    finally:
        d.stop()

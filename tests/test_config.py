"""check-config: every problem, with FILE:LINE: field: message, exit 1."""
import subprocess
import sys

import pytest
from conftest import ROOT, SAMPLES

from nhrpbridge.config import load_config


def check(tmp_path, text, name="nb.yaml"):
    f = tmp_path / name
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    return subprocess.run([sys.executable, "-m", "nhrpbridge", "check-config", "-c", str(f)],
                          capture_output=True, text=True, cwd=ROOT), f


def test_reports_all_errors_at_once(tmp_path):
    r, f = check(tmp_path, "log-level: loud\napi:\n  mode: '0666'\n  sockett: /x\n"
                           "pluto:\n  whack-timeout: soon\n  whack-timeout: 3\n"
                           "connections:\n  dmvpn:\n    policy: maybe\n")
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        f"{f}:1: log-level: 'loud' is not one of debug, info, warning, error",
        f"{f}:3: api.mode: sockets must not be accessible to others (last digit 0)",
        f"{f}:4: api.sockett: unknown key (known: control-groups, group, mode, socket)",
        f"{f}:6: pluto.whack-timeout: 'soon' is not a number",
        f"{f}:7: pluto.whack-timeout: duplicate key",
        f"{f}:10: connections.dmvpn.policy: 'maybe' is not one of gre-ip-in-cert-san, "
        "gre-prefix-by-peer-id, any-authenticated, deny",
    ]


def test_yaml_syntax_error_has_a_line(tmp_path):
    r, f = check(tmp_path, "api:\n  mode: [\n")
    assert r.returncode == 1 and r.stdout.startswith(f"{f}:3: (syntax):")


def test_strings_yaml_would_mangle_are_kept_verbatim(tmp_path):
    cfg = load_config(tmp_path / "x.yaml", text="api:\n  group: no\n  mode: 0640\n"
                                                 "pluto:\n  ipsec: 0123\n")
    assert cfg.api_group == "no" and cfg.api_mode == 0o640 and cfg.ipsec == "0123"


@pytest.mark.parametrize("text, message", [
    (b"\xff\xfe: x\n", "not UTF-8"),
    ("- just\n- a list\n", "expected a mapping"),
    ("api: /run/x\n", "api: expected a mapping"),
    ("api:\n  socket: relative/path\n", "must be an absolute path"),
    ("api:\n  socket: /" + "x" * 120 + "\n", "shorter than 108 bytes"),
    ("pluto:\n  log: \"a\\nb\"\n", "must not contain a newline"),
    ("connections:\n  dmvpn:\n    allowed-prefixes:\n      'CN=a': 10.0.0.300/24\n",
     "does not appear to be an IPv4 or IPv6 network"),
])
def test_bad_values(tmp_path, text, message):
    r, _ = check(tmp_path, text)
    assert r.returncode == 1 and message in r.stdout, r.stdout


def test_missing_file(tmp_path):
    r = subprocess.run([sys.executable, "-m", "nhrpbridge", "check-config", "-c",
                        str(tmp_path / "nope.yaml")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "No such file or directory" in r.stdout


def test_samples_are_valid(tmp_path):
    for sample in ("hub.yaml", "spoke.yaml"):
        load_config(SAMPLES / sample)
    r = subprocess.run([sys.executable, "-m", "nhrpbridge", "check-config", "--json", "-c",
                        str(SAMPLES / "hub.yaml"), str(SAMPLES / "spoke.yaml")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and '"ok": true' in r.stdout


def test_state_dir_puts_every_runtime_path_under_it(tmp_path):
    cfg = load_config(tmp_path / "x.yaml", text=f"state-dir: {tmp_path}/s\n")
    assert cfg.spool_dir == tmp_path / "s" / "spool"
    assert cfg.api_socket == tmp_path / "s" / "api.sock"
    assert cfg.state_file == tmp_path / "s" / "state.json"

"""`nhrpbridge install`: every file in place with its mode, idempotent, errors that say where."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from nhrpbridge.errors import InstallError
from nhrpbridge.install import apply, plan, sources

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([sys.executable, "-m", "nhrpbridge", "install", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_install_places_every_file_and_a_second_run_changes_nothing(tmp_path):
    out = run("--destdir", str(tmp_path), "--json")
    assert out.returncode == 0, out.stderr
    files = json.loads(out.stdout)["files"]
    assert {f["state"] for f in files} == {"installed"}
    hook = tmp_path / "usr/local/libexec/nhrpbridge/updown"
    unit = tmp_path / "usr/local/lib/systemd/system/nhrpbridge.service"
    tmpfiles = tmp_path / "usr/local/lib/tmpfiles.d/nhrpbridge.conf"
    assert hook.read_bytes() == (ROOT / "hooks/nhrpbridge-updown").read_bytes()
    assert stat.S_IMODE(hook.stat().st_mode) == 0o755
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert "d /run/nhrpbridge/spool  0700" in tmpfiles.read_text()
    assert (tmp_path / "usr/local/share/nhrpbridge/templates/ipsec.conf.j2").exists()
    exec_start = next(ln for ln in unit.read_text().splitlines() if ln.startswith("ExecStart="))
    assert "/usr/bin/nhrpbridge" not in exec_start and exec_start.endswith(
        "serve -c /etc/nhrpbridge/nhrpbridge.yaml")
    again = run("--destdir", str(tmp_path))
    assert again.returncode == 0
    assert all(ln.split()[0] == "unchanged" for ln in again.stdout.splitlines()[:-1])
    assert 'leftupdown="/usr/local/libexec/nhrpbridge/updown --spool' in again.stdout


def test_a_changed_file_or_mode_is_updated_and_dry_run_writes_nothing(tmp_path):
    items = plan(destdir=str(tmp_path), cmd="/usr/bin/nhrpbridge")
    apply(items)
    hook = next(i for i in items if i.what == "hook")
    os.chmod(hook.target, 0o777)
    tmpl = next(i for i in items if i.what == "template")
    tmpl.target.write_text("edited")
    states = {i.target: s for i, s in apply(items, dry_run=True)}
    assert states[hook.target] == states[tmpl.target] == "updated"
    assert tmpl.target.read_text() == "edited"                   # dry run: untouched
    apply(items)
    assert stat.S_IMODE(hook.target.stat().st_mode) == 0o755
    assert tmpl.target.read_bytes() == tmpl.content
    assert not list(tmpl.target.parent.glob(".*.tmp"))


def test_prefix_and_config_go_into_the_unit(tmp_path):
    items = plan(prefix="/opt/nb", destdir=str(tmp_path), config="/etc/nb/hub.yaml",
                 cmd="/opt/nb/bin/nhrpbridge")
    unit = next(i for i in items if i.what == "unit")
    assert unit.path == Path("/opt/nb/lib/systemd/system/nhrpbridge.service")
    assert unit.target == tmp_path / "opt/nb/lib/systemd/system/nhrpbridge.service"
    assert b"ExecStart=/opt/nb/bin/nhrpbridge serve -c /etc/nb/hub.yaml" in unit.content
    assert b"ExecReload=/opt/nb/bin/nhrpbridge restart -c /etc/nb/hub.yaml" in unit.content


@pytest.mark.parametrize("kwargs, message", [
    ({"prefix": "usr/local"}, "--prefix 'usr/local' must be an absolute path"),
    ({"prefix": "/usr/local; rm -rf /"}, "must be an absolute path of plain characters"),
    ({"config": "/etc/nb/a b.yaml"}, "--config '/etc/nb/a b.yaml' must be"),
])
def test_unsafe_paths_are_refused(tmp_path, kwargs, message):
    with pytest.raises(InstallError, match=message.replace("(", r"\(").replace("[", r"\[")):
        plan(destdir=str(tmp_path), cmd="/usr/bin/nhrpbridge", **kwargs)


def test_a_missing_source_file_is_named(tmp_path):
    found = dict(sources())
    found["hook"] = tmp_path / "nope"
    with pytest.raises(InstallError, match=f"cannot read {tmp_path}/nope: No such file"):
        plan(destdir=str(tmp_path), found=found, cmd="/usr/bin/nhrpbridge")


def test_an_unwritable_target_is_an_error_naming_it(tmp_path):
    (tmp_path / "usr").write_text("a file where a directory must go")
    out = run("--destdir", str(tmp_path))
    assert out.returncode == 1
    assert "nhrpbridge install:" in out.stderr and str(tmp_path / "usr") in out.stderr
    assert "Not a directory" in out.stderr

"""The updown hook as pluto runs it: exit status, chaining, spool, faults."""
import os
import shutil
import time

import pytest
from conftest import HOOK, run_hook, up_env

from nhrpbridge.protocol.record import decode_record


def records(spool):
    return sorted(p.name for p in spool.glob("*.rec"))


def test_success_of_chained_updown_is_returned(tmp_path):
    r = run_hook(up_env(), tmp_path, "--chain", "true")
    assert r.returncode == 0
    assert len(records(tmp_path)) == 1


def test_failure_of_chained_updown_still_vetoes(tmp_path):
    # a stock route/up failure must keep failing the SA, as without nhrpbridge
    r = run_hook(up_env(), tmp_path, "--chain", "false")
    assert r.returncode == 1
    assert len(records(tmp_path)) == 1   # the record is written before chaining


def test_chained_updown_gets_remaining_arguments(tmp_path):
    out = tmp_path / "args"
    script = tmp_path / "stock.sh"
    script.write_text(f'#!/bin/sh\nprintf "%s|" "$@" > {out}\nexit 0\n')
    script.chmod(0o755)
    spool = tmp_path / "spool"
    spool.mkdir()
    r = run_hook(up_env(), spool, "--chain", str(script), "--", "--route", "yes")
    assert r.returncode == 0
    assert out.read_text() == "--route|yes|"


def test_absent_chained_updown_is_skipped_with_a_message(tmp_path):
    r = run_hook(up_env(), tmp_path, "--chain", "/nonexistent/_updown")
    assert r.returncode == 0
    assert b"not found; skipped" in r.stderr
    assert len(records(tmp_path)) == 1


@pytest.mark.skipif(not shutil.which("ipsec"), reason="libreswan not installed")
def test_real_stock_updown_is_chained_by_default(tmp_path):
    env = up_env(PLUTO_STACK="xfrm", PLUTO_CONN_ADDRFAMILY="ipv4")
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    r = run_hook(env, tmp_path)
    assert r.returncode == 0, r.stderr
    # the stock script rejects an unknown verb (exit 1): proof it really ran
    r = run_hook(dict(env, PLUTO_VERB="bogus-host"), tmp_path)
    assert r.returncode == 1


def _can_mount():
    import subprocess
    return os.getuid() == 0 and shutil.which("unshare") and subprocess.run(
        ["unshare", "-m", "true"], capture_output=True).returncode == 0


def _hook_on_mounted_spool(tmp_path, opts):
    """Run the hook with its spool on a tmpfs mounted with `opts` (own mount namespace)."""
    import subprocess
    spool = tmp_path / "spool"
    spool.mkdir()
    script = (f"mount -t tmpfs -o size=64k tmpfs {spool} && "
              f"dd if=/dev/zero of={spool}/fill bs=1k count=200 2>/dev/null; "
              f"{'mount -o remount,ro ' + str(spool) + ' && ' if 'ro' in opts else ''}"
              f"exec /bin/sh {HOOK} --spool {spool} --chain true")
    env = {"PATH": os.environ["PATH"], **up_env()}
    return subprocess.run(["unshare", "-m", "sh", "-c", script], env=env,
                          capture_output=True, timeout=20)


@pytest.mark.parametrize("problem", ["missing", "not-a-dir", "full", "readonly"])
def test_unwritable_spool_never_fails_pluto(tmp_path, problem):
    spool = tmp_path / "spool"
    start = time.monotonic()
    if problem in ("full", "readonly"):
        if not _can_mount():
            pytest.skip("needs root and mount namespaces")
        r = _hook_on_mounted_spool(tmp_path, (problem == "readonly" and "ro") or "")
    else:
        if problem == "not-a-dir":
            spool.write_text("")
        r = run_hook(up_env(), spool, "--chain", "true")
    assert time.monotonic() - start < 5
    assert r.returncode == 0, r.stderr
    assert b"cannot write record for up-host dmvpn 198.51.100.11" in r.stderr


def test_records_sort_in_arrival_order_and_survive_a_lost_counter(tmp_path):
    for i in range(12):
        run_hook(up_env(spi_in=hex(i + 1)), tmp_path, "--no-chain")
        if i == 5:
            (tmp_path / ".seq").unlink()       # counter lost
        if i == 8:
            (tmp_path / ".seq").write_text("garbage\n")
    names = records(tmp_path)
    assert len(names) == 12
    spis = [decode_record((tmp_path / n).read_bytes())["SPI_IN"] for n in names]
    assert spis == [hex(i + 1) for i in range(12)]
    assert all(p.read_bytes().endswith(b"\n# nhrpbridge-end\n") for p in tmp_path.glob("*.rec"))


def test_records_are_private(tmp_path):
    run_hook(up_env(), tmp_path, "--no-chain")
    (rec,) = tmp_path.glob("*.rec")
    assert rec.stat().st_mode & 0o077 == 0


def test_hook_leaves_nothing_holding_pluto_stdout(tmp_path):
    # pluto reads the hook's stdout to EOF: a background child would stall it
    import subprocess
    env = {"PATH": os.environ["PATH"], **up_env()}
    start = time.monotonic()
    p = subprocess.run(["/bin/sh", "-c", f"{HOOK} --spool {tmp_path} --no-chain | cat"],
                       env=env, capture_output=True, timeout=10)
    assert p.returncode == 0
    assert time.monotonic() - start < 2


def test_hook_is_posix_sh_without_python():
    text = HOOK.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert "python" not in text.split("\n", 20)[-1]
    import subprocess
    assert subprocess.run(["dash", "-n", str(HOOK)]).returncode == 0

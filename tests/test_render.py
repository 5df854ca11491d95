"""render: samples pass libreswan's own parser; golden output; bad input; installed copy."""
import os
import re
import shutil
import subprocess
import sys
import venv

import pytest
from conftest import DATA, ROOT, SAMPLES

from nhrpbridge.config import load_config
from nhrpbridge.errors import RenderError
from nhrpbridge.render import check_ipsec, render_frr, render_ipsec, render_peers

SAMPLE_FILES = ["hub.yaml", "spoke.yaml", "hub-psk.yaml", "spoke-psk.yaml"]
HAVE_IPSEC = shutil.which("ipsec") is not None
NB = [sys.executable, "-m", "nhrpbridge"]


def golden(name: str, text: str) -> None:
    path = DATA / "render" / name
    if os.environ.get("NHRPBRIDGE_REGEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs (NHRPBRIDGE_REGEN=1 rewrites it)"


@pytest.mark.parametrize("sample", SAMPLE_FILES)
def test_samples_render_to_golden_files(sample):
    cfg = load_config(SAMPLES / sample)
    golden(sample.replace(".yaml", ".ipsec.conf"), render_ipsec(cfg).replace(str(SAMPLES), "samples"))
    golden(sample.replace(".yaml", ".frr.conf"), render_frr(cfg).replace(str(SAMPLES), "samples"))


@pytest.mark.skipif(not HAVE_IPSEC, reason="libreswan not installed")
@pytest.mark.parametrize("sample", SAMPLE_FILES)
def test_samples_pass_real_checkconfig_with_empty_stderr(sample):
    r = subprocess.run(NB + ["render", "-c", str(SAMPLES / sample), "--check"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "pass ipsec addconn --checkconfig" in r.stderr


@pytest.mark.skipif(not HAVE_IPSEC, reason="libreswan not installed")
def test_check_reports_libreswans_message_even_when_it_exits_0(tmp_path):
    # 4.10 exits 0 on a bad protoport; only stderr tells
    tpl = tmp_path / "tpl"
    tpl.mkdir()
    text = (ROOT / "templates" / "ipsec.conf.j2").read_text().replace(
        "leftprotoport=gre", "leftprotoport=grex")
    (tpl / "ipsec.conf.j2").write_text(text)
    r = subprocess.run(NB + ["render", "-c", str(SAMPLES / "hub.yaml"), "--check",
                             "--templates", str(tpl)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1
    assert "bad leftprotoport=grex" in r.stderr
    # and the per-peer layout itself is checked: drop the -base conn
    (tpl / "ipsec.conf.j2").write_text(text.replace("leftprotoport=grex", "leftprotoport=gre")
                                       .replace("also={{ node.profile }}-base\n\tright=%any",
                                                "right=%any"))
    assert check_ipsec(render_ipsec(load_config(SAMPLES / "hub.yaml"), str(tpl)).replace(
        "conn dmvpn-base", "conn dmvpn-basis"), "dmvpn")


@pytest.mark.parametrize("text, expected", [
    ("node:\n  nbma: 198.51.100.1\n  gre:\n    address: 203.0.113.1\n  auth:\n    method: psk\n"
     "    psk: x\n", ":1: node.role: missing: hub or spoke"),
    ("node:\n  role: hub\n  nbma: 198.51.100.300\n  gre:\n    address: 203.0.113.1\n",
     ":3: node.nbma: '198.51.100.300' is neither an IP address nor auto"),
    ("node:\n  role: hub\n  nbma: 198.51.100.1\n  gre:\n    address: 203.0.113.1\n  auth:\n"
     "    cert: hub\n    peer-id: \"CN=a\\nCN=b\"\n", ":8: node.auth.peer-id: must not contain a newline"),
    ("node:\n  role: hub\n  nbma: 198.51.100.1\n  gre:\n    adress: 203.0.113.1\n",
     ":5: node.gre.adress: unknown key"),
    ("node:\n  role: spoke\n  nbma: 198.51.100.2\n  gre:\n    address: 203.0.113.2\n  auth:\n"
     "    method: psk\n    psk: x\n", ":1: node.nhs: a spoke needs at least one hub"),
    ("node:\n  role: hub\n  nbma: 198.51.100.1\n  gre:\n    address: 203.0.113.1\n  auth:\n"
     "    cert: hub\n  lifetimes:\n    child: 60\n    rekey-margin: 60\n",
     ":1: node.lifetimes.rekey-margin: 60 s is not shorter than the child lifetime (60 s)"),
    ("node:\n  role: hub\n  nbma: 198.51.100.1\n  gre:\n    address: 203.0.113.1\n  auth:\n"
     "    cert: hub\n  lifetimes:\n    ike: 1h\n", ":9: node.lifetimes.ike: '1h' is not a whole"),
])
def test_bad_node_yaml_gives_file_line_errors(tmp_path, text, expected):
    f = tmp_path / "node.yaml"
    f.write_text(text)
    r = subprocess.run(NB + ["render", "-c", str(f)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1
    assert f"{f}{expected}" in r.stderr, r.stderr


def test_values_that_cannot_be_written_safely_are_refused(tmp_path):
    f = tmp_path / "node.yaml"
    f.write_text('node:\n  role: hub\n  nbma: 198.51.100.1\n  gre:\n    address: 203.0.113.1\n'
                 '  auth:\n    cert: \'hub" leftupdown="/bin/evil\'\n')
    r = subprocess.run(NB + ["render", "-c", str(f)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "cannot be written into ipsec.conf safely" in r.stderr
    with pytest.raises(RenderError):
        render_peers("/etc/ipsec conf", [])


def test_lifetimes_are_rendered_only_when_set(tmp_path):
    base = (SAMPLES / "hub.yaml").read_text()
    assert "lifetime" not in render_ipsec(load_config(SAMPLES / "hub.yaml"))
    f = tmp_path / "hub.yaml"
    f.write_text(base.replace("  liveness:", "  lifetimes:\n    ike: 150\n    child: 60\n"
                                            "    rekey-margin: 20\n  liveness:"))
    text = render_ipsec(load_config(f))
    assert "\tikelifetime=150s\n\tsalifetime=60s\n\trekeymargin=20s\n" in text
    if shutil.which("ipsec"):
        assert check_ipsec(text, "dmvpn") == []


def test_dn_values_are_quoted():
    text = render_ipsec(load_config(SAMPLES / "hub.yaml"))
    assert 'rightca="C=XX, O=DMVPN Lab, CN=DMVPN Lab CA"' in text
    assert "keyexchange" not in text


def test_only_the_nat_conn_accepts_any_id_and_any_selector():
    """Certificates: the template and the base (per-peer conns) keep %fromcert; the NAT conn
    answers a peer behind NAT, whose inside address is its traffic selector."""
    text = render_ipsec(load_config(SAMPLES / "hub.yaml"))
    stanzas = {b.split("\n", 1)[0]: b for b in text.split("\nconn ")[1:]}
    assert set(stanzas) == {"dmvpn-base", "dmvpn", "dmvpn-nat"}
    assert "\trightid=%fromcert\n" in stanzas["dmvpn-base"]
    nat = stanzas["dmvpn-nat"]
    assert "also=" not in nat and nat.count("rightid=") == 1 and "\trightid=%any\n" in nat
    assert "\trightsubnet=0.0.0.0/0\n\tnarrowing=yes\n" in nat and "\trightca=" in nat
    assert "rightid=%any" not in stanzas["dmvpn-base"] + stanzas["dmvpn"]
    psk = render_ipsec(load_config(SAMPLES / "hub-psk.yaml"))
    assert "dmvpn-nat" not in psk and "rightsubnet" not in psk
    if shutil.which("ipsec"):
        assert check_ipsec(text, "dmvpn") == []


def test_per_peer_stanza_comes_from_the_same_template():
    text = render_peers("/etc/ipsec.conf", [("dmvpn-198-51-100-12", "dmvpn", "198.51.100.12", None),
                                            ("dmvpn-198-51-100-13", "dmvpn", "198.51.100.13",
                                             "198.51.100.31")])
    assert ("conn dmvpn-198-51-100-12\n\talso=dmvpn-base\n\tright=198.51.100.12\n\tauto=add\n"
            in text)
    assert ("conn dmvpn-198-51-100-13\n\talso=dmvpn-base\n\tleft=198.51.100.31\n"
            "\tright=198.51.100.13\n\tauto=add\n" in text)


@pytest.mark.parametrize("sample", ["spoke.yaml", "spoke-psk.yaml"])
def test_dynamic_local_address_renders_defaultroute_and_no_left_in_base(tmp_path, sample):
    """nbma: auto: the template (and the NAT conn) take %defaultroute; the base has no
    left=, so a per-peer conn can name the address nhrpd asks for (4.10 refuses a key set
    twice through also=). libreswan's own parser accepts both, per-peer sample included."""
    f = tmp_path / sample
    f.write_text(re.sub(r"nbma: \S+", "nbma: auto", (SAMPLES / sample).read_text()))
    text = render_ipsec(load_config(f))
    stanzas = {b.split("\n", 1)[0]: b for b in text.split("\nconn ")[1:]}
    assert "left=" not in stanzas["dmvpn-base"].replace("leftid=", "").replace(
        "leftcert=", "").replace("leftupdown=", "").replace("leftprotoport=", "")
    assert "\tleft=%defaultroute\n" in stanzas["dmvpn"]
    if "dmvpn-nat" in stanzas:
        assert "\tleft=%defaultroute\n" in stanzas["dmvpn-nat"]
    if shutil.which("ipsec"):
        assert check_ipsec(text, "dmvpn", dynamic=True) == []


def test_templates_are_found_after_pip_install(tmp_path):
    """Build a wheel, install it into a fresh venv, render from outside the checkout."""
    wheel_dir = tmp_path / "wheel"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(wheel_dir), str(ROOT)], capture_output=True, text=True,
                       cwd=tmp_path)
    if r.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {r.stderr[-300:]}")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    (wheel,) = wheel_dir.glob("*.whl")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                        "-q", str(wheel)], capture_output=True, text=True)
    if r.returncode != 0:   # older pip without --python
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                            "--prefix", str(env_dir), str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (env_dir / "share" / "nhrpbridge" / "templates" / "ipsec.conf.j2").exists()
    assert os.access(env_dir / "libexec" / "nhrpbridge" / "nhrpbridge-updown", os.X_OK)
    out = subprocess.run([str(env_dir / "bin" / "nhrpbridge"), "render", "-c",
                          str(SAMPLES / "hub.yaml")], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    assert "conn dmvpn-base" in out.stdout
    loc = subprocess.run([str(py), "-c", "import nhrpbridge; print(nhrpbridge.__file__)"],
                         capture_output=True, text=True, cwd=tmp_path).stdout
    assert str(ROOT) not in loc
    # `nhrpbridge install` from the installed copy: its data files, its own command
    dest = tmp_path / "dest"
    out = subprocess.run([str(env_dir / "bin" / "nhrpbridge"), "install", "--destdir", str(dest)],
                         capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    unit = (dest / "usr/local/lib/systemd/system/nhrpbridge.service").read_text()
    assert f"ExecStart={env_dir}/bin/nhrpbridge serve" in unit
    assert (dest / "usr/local/libexec/nhrpbridge/updown").read_bytes() == \
        (ROOT / "hooks/nhrpbridge-updown").read_bytes()


@pytest.mark.parametrize("major, keyword, absent", [(4, "\tikev2=insist\n", "keyexchange"),
                                                    (5, "\tkeyexchange=ikev2\n", "ikev2=")])
def test_conns_are_written_for_the_libreswan_version(major, keyword, absent):
    """4.10 refuses keyexchange=ikev2; 5.x logs a warning per conn for ikev2=insist."""
    cfg = load_config(SAMPLES / "hub.yaml")
    text = render_ipsec(cfg, libreswan=major)
    assert keyword in text and absent not in text.split("conn ", 1)[1]
    golden("hub.ipsec.conf" if major == 4 else "hub.ipsec5.conf",
           text.replace(str(SAMPLES), "samples"))


def test_version_comes_from_the_config_or_from_ipsec(tmp_path):
    fake = tmp_path / "ipsec"
    fake.write_text("#!/bin/sh\necho 'Libreswan U5.2/K6.1.0'\n")
    fake.chmod(0o755)
    cfg_file = tmp_path / "n.yaml"
    cfg_file.write_text((SAMPLES / "hub.yaml").read_text())
    r = subprocess.run(NB + ["render", "-c", str(cfg_file), "--ipsec-cmd", str(fake)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "keyexchange=ikev2" in r.stdout
    r = subprocess.run(NB + ["render", "-c", str(cfg_file), "--ipsec-cmd", str(fake),
                             "--libreswan", "4"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "ikev2=insist" in r.stdout
    r = subprocess.run(NB + ["render", "-c", str(cfg_file), "--ipsec-cmd", str(tmp_path / "none")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1
    assert "set `pluto: version: 4` or `5`" in r.stderr and str(cfg_file) in r.stderr

"""Certificates, DNs, the store, NSS, and every policy outcome."""
import shutil
import subprocess

import pytest
from certgen import der, make_ca, make_cert, pem

from nhrpbridge.certs import CertStore, cert_info, dn_of, format_dn, nss_cert_der, parse_dn
from nhrpbridge.policy import decide


@pytest.fixture(scope="module")
def pki():
    ca = make_ca()
    other = make_ca("Rogue CA")
    return {
        "ca": ca,
        "san": make_cert(ca, "spoke1.dmvpn.example", ips=["203.0.113.11", "198.51.100.11"]),
        "dirname": make_cert(ca, "spoke2.dmvpn.example", dirname_gre="203.0.113.12"),
        "nosan": make_cert(ca, "spoke3.dmvpn.example"),
        "expired": make_cert(ca, "spoke4.dmvpn.example", ips=["203.0.113.14"], expired=True),
        "wrongca": make_cert(other, "spoke1.dmvpn.example", ips=["203.0.113.11"]),
    }


@pytest.mark.parametrize("text, dn", [
    ("C=XX, O=DMVPN Lab, CN=hub.dmvpn.example",
     (("C", "XX"), ("O", "DMVPN Lab"), ("CN", "hub.dmvpn.example"))),
    ('C=XX, O="Org, Inc", CN=a\\,b', (("C", "XX"), ("O", "Org, Inc"), ("CN", "a,b"))),
    ("C=XX, O=Quote\\\"d, E=x@y", (("C", "XX"), ("O", 'Quote"d'), ("E", "x@y"))),
    ("emailAddress=x@y, cn=low", (("E", "x@y"), ("CN", "low"))),
])
def test_dn_parsing_and_round_trip(text, dn):
    assert parse_dn(text) == dn
    assert parse_dn(format_dn(dn)) == dn


def test_libreswan_dn_matches_cryptography_rfc4514_reverse_order(pki):
    _, cert = pki["san"]
    assert cert.subject.rfc4514_string() == "CN=spoke1.dmvpn.example,O=DMVPN Lab,C=XX"
    assert dn_of(cert.subject) == parse_dn("C=XX, O=DMVPN Lab, CN=spoke1.dmvpn.example")
    _, tricky = make_cert(pki["ca"], "a, b", org='Org "Q", Inc')
    text = format_dn(dn_of(tricky.subject))
    assert parse_dn(text) == dn_of(tricky.subject)


def test_store_indexes_and_reports_bad_files(tmp_path, pki):
    (tmp_path / "spoke1.pem").write_bytes(pem(pki["san"][1]))
    (tmp_path / "spoke2.der").write_bytes(der(pki["dirname"][1]))
    (tmp_path / "expired.pem").write_bytes(pem(pki["expired"][1]))
    (tmp_path / "garbage.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64!\n"
                                           b"-----END CERTIFICATE-----\n")
    (tmp_path / "key.der").write_bytes(b"\x30\x03\x02\x01\x00")
    store = CertStore(str(tmp_path)).load()
    problems = {p.path.rsplit("/", 1)[1]: p.reason for p in store.problems}
    assert set(problems) == {"expired.pem", "garbage.pem", "key.der"}
    assert "expired" in problems["expired.pem"] and "not a certificate" in problems["key.der"]
    c = store.lookup(subject="C=XX, O=DMVPN Lab, CN=spoke1.dmvpn.example",
                     issuer="C=XX, O=DMVPN Lab, CN=DMVPN Lab CA")
    assert c is not None and "203.0.113.11" in c.san_ips
    assert store.lookup(peer_id="203.0.113.11") is c                   # by SAN IP ID
    assert store.lookup(subject="C=XX, O=DMVPN Lab, CN=spoke1.dmvpn.example",
                        issuer="C=XX, CN=Rogue CA") is None
    assert store.lookup(peer_id="@nobody") is None


def test_policy_outcomes(pki):
    info = {k: cert_info(der(v[1])) for k, v in pki.items() if k != "ca"}
    ca_dn = dn_of(pki["ca"][1].subject)
    san = lambda gre, cert, **kw: decide("gre-ip-in-cert-san", gre, has_child_sa=True,
                                         cert=cert, expected_issuer=ca_dn, **kw)
    assert san("203.0.113.11", info["san"]).accept
    assert not san("203.0.113.99", info["san"]).accept
    assert "not in the subjectAltNames" in san("203.0.113.99", info["san"]).reason
    assert san("203.0.113.12", info["dirname"]).accept
    assert not san("203.0.113.13", info["nosan"]).accept
    assert "expired" in san("203.0.113.14", info["expired"]).reason
    assert "not issued by the CA" in san("203.0.113.11", info["wrongca"]).reason
    assert "no certificate" in san("203.0.113.11", None).reason
    assert "not an IP" in san("spoke", info["san"]).reason
    assert not decide("gre-ip-in-cert-san", "203.0.113.11", has_child_sa=False,
                      cert=info["san"]).accept
    prefixes = {"C=XX, O=DMVPN Lab, CN=spoke1*": ("203.0.113.0/28",), "@branch-*": ("10.1.0.0/16",)}
    by_id = lambda gre, pid: decide("gre-prefix-by-peer-id", gre, has_child_sa=True,
                                    peer_id=pid, allowed_prefixes=prefixes)
    assert by_id("203.0.113.11", "C=XX, O=DMVPN Lab, CN=spoke1.dmvpn.example").accept
    assert not by_id("203.0.113.20", "C=XX, O=DMVPN Lab, CN=spoke1.dmvpn.example").accept
    assert by_id("10.1.2.3", "@branch-7").accept
    assert "no allowed-prefixes entry" in by_id("10.1.2.3", "@other").reason
    assert decide("any-authenticated", "10.0.0.1", has_child_sa=True, peer_id="@x").accept
    assert not decide("any-authenticated", "10.0.0.1", has_child_sa=False).accept
    assert not decide("deny", "10.0.0.1", has_child_sa=True).accept


@pytest.mark.skipif(not shutil.which("certutil"), reason="libnss3-tools not installed")
def test_real_nss_database_round_trip(tmp_path, pki):
    nss = tmp_path / "nss"
    nss.mkdir()
    subprocess.run(["certutil", "-N", "-d", f"sql:{nss}", "--empty-password"], check=True,
                   capture_output=True)
    (tmp_path / "hub.der").write_bytes(der(pki["san"][1]))
    subprocess.run(["certutil", "-A", "-d", f"sql:{nss}", "-n", "hub", "-t", "P,,",
                    "-i", str(tmp_path / "hub.der")], check=True, capture_output=True)
    assert nss_cert_der(str(nss), "hub") == der(pki["san"][1])
    with pytest.raises(ValueError, match="certutil"):
        nss_cert_der(str(nss), "missing")
    with pytest.raises(ValueError):
        nss_cert_der(str(nss), "-h")

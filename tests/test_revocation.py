"""Revocation: CRLs in the certificate store, rejected bindings, terminated links."""
import asyncio
import datetime as dt

from certgen import NOW, make_ca, make_cert, pem
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from nhrpbridge.authorize import Authorizer
from nhrpbridge.bus import Bus
from nhrpbridge.certs import CertStore
from nhrpbridge.config import ConnConfig
from nhrpbridge.errors import ControlError
from nhrpbridge.policy import decide
from nhrpbridge.revocation import Revocation
from nhrpbridge.sa import ChildUp
from nhrpbridge.sadb import SaDatabase

HUB, S1, S2 = "198.51.100.1", "198.51.100.11", "198.51.100.12"
DN1 = "C=XX, O=DMVPN Lab, CN=spoke1"
DN2 = "C=XX, O=DMVPN Lab, CN=spoke2"


def crl_of(ca, *certs, next_update=dt.timedelta(days=7), encoding=Encoding.PEM):
    key, cert = ca
    b = (x509.CertificateRevocationListBuilder().issuer_name(cert.subject)
         .last_update(NOW - dt.timedelta(days=1)).next_update(NOW + next_update))
    for c in certs:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(
            c.serial_number).revocation_date(NOW - dt.timedelta(hours=1)).build())
    return b.sign(key, hashes.SHA256()).public_bytes(encoding)


def pki(tmp_path):
    ca = make_ca()
    s1 = make_cert(ca, "spoke1", ips=["203.0.113.11"])[1]
    s2 = make_cert(ca, "spoke2", ips=["203.0.113.12"])[1]
    store = tmp_path / "store"
    store.mkdir()
    (store / "ca.pem").write_bytes(pem(ca[1]))
    (store / "s1.pem").write_bytes(pem(s1))
    (store / "s2.pem").write_bytes(pem(s2))
    return ca, s1, s2, store


def test_a_crl_in_the_store_revokes_by_issuer_and_serial(tmp_path):
    ca, s1, s2, store = pki(tmp_path)
    (store / "revoked.crl").write_bytes(crl_of(ca, s2, encoding=Encoding.DER))
    st = CertStore(str(store)).load()
    assert st.problems == []
    assert st.revocation(st.lookup(peer_id=DN1)) is None
    why = st.revocation(st.lookup(peer_id=DN2))
    assert why is not None and why.serial == s2.serial_number
    assert "revoked on" in str(why) and "revoked.crl" in str(why)


def test_a_crl_dir_and_an_expired_crl_still_revoke(tmp_path, caplog):
    ca, _, s2, store = pki(tmp_path)
    crls = tmp_path / "crls"
    crls.mkdir()
    (crls / "old.pem").write_bytes(crl_of(ca, s2, next_update=-dt.timedelta(hours=2)))
    st = CertStore(str(store), str(crls)).load()
    assert st.revocation(st.lookup(peer_id=DN2)) is not None
    assert "CRL expired on" in caplog.text and "still used" in caplog.text


def test_a_crl_that_cannot_be_verified_is_reported_and_not_used(tmp_path):
    ca, _, s2, store = pki(tmp_path)
    other = make_ca("Another CA")
    forged = crl_of(other, s2)                    # names another issuer: no CA for it here
    (store / "forged.pem").write_bytes(forged)
    key, _ = make_ca()                            # signed by a key that is not the CA's
    bad = crl_of((key, ca[1]), s2)
    (store / "badsig.pem").write_bytes(bad)
    (store / "junk.crl").write_bytes(b"not a crl")
    st = CertStore(str(store)).load()
    assert st.revoked == {}
    text = "\n".join(map(str, st.problems))
    assert "forged.pem: CRL issuer C=XX, O=DMVPN Lab, CN=Another CA has no CA certificate" in text
    assert "badsig.pem: CRL signature does not verify" in text
    assert "junk.crl: not a certificate or CRL" in text


def test_policy_rejects_a_revoked_certificate_whatever_the_policy(tmp_path):
    ca, _, s2, store = pki(tmp_path)
    (store / "r.pem").write_bytes(crl_of(ca, s2))
    st = CertStore(str(store)).load()
    cert = st.lookup(peer_id=DN2)
    for policy in ("gre-ip-in-cert-san", "any-authenticated"):
        d = decide(policy, "203.0.113.12", has_child_sa=True, peer_id=DN2, cert=cert,
                   revoked=st.revocation(cert))
        assert (d.accept, d.code) == (False, "revoked") and "CN=spoke2 is revoked on" in d.reason


class TerminateStandIn:
    """Stand-in for the pluto controller (no pluto here): records terminate calls."""

    def __init__(self, fail=False):
        self.calls = []
        self.fail = fail

    async def terminate(self, connection, remote, ike_id):
        self.calls.append((connection, remote, ike_id))
        if self.fail:
            raise ControlError("whack failed")
        return {"terminated": True}


def hub_with_links(store):
    db = SaDatabase()
    for peer, dn, spi in ((S1, DN1, 0x100), (S2, DN2, 0x200)):
        db.apply(ChildUp("dmvpn", "dmvpn", HUB, peer, "@hub", dn, spi_in=spi, spi_out=spi + 1,
                         source="test"), 0.0)
    auth = Authorizer({"dmvpn": ConnConfig("dmvpn", policy="gre-ip-in-cert-san")}, db, Bus(),
                      CertStore(str(store)).load())
    return db, auth


def test_reload_terminates_only_the_revoked_peers_ike_sa(tmp_path, caplog):
    ca, _, s2, store = pki(tmp_path)
    db, auth = hub_with_links(store)
    control = TerminateStandIn()
    rev = Revocation(db, control, auth)

    async def run():
        rev.reconfigure(None)                     # nothing revoked yet
        assert control.calls == []
        (store / "r.pem").write_bytes(crl_of(ca, s2))
        auth.store.load()                         # what the authorizer's reload does
        rev.reconfigure(None)
        await asyncio.sleep(0.01)
    asyncio.run(run())
    ike2 = next(i for i in db.ike_sas.values() if i.remote_host == S2)
    assert control.calls == [("dmvpn", None, ike2.uniqueid)]
    assert rev.stats == {"terminated": 1, "failed": 0}
    assert f"peer {S2} ({DN2}) on dmvpn: certificate" in caplog.text
    assert auth.authorize("dmvpn", S2, "203.0.113.12")["code"] == "revoked"
    assert auth.authorize("dmvpn", S1, "203.0.113.11")["accept"] is True


def test_a_revoked_peer_that_connects_again_is_terminated_again(tmp_path):
    ca, _, s2, store = pki(tmp_path)
    (store / "r.pem").write_bytes(crl_of(ca, s2))
    db = SaDatabase()
    auth = Authorizer({}, db, Bus(), CertStore(str(store)).load())
    control = TerminateStandIn(fail=True)
    rev = Revocation(db, control, auth)

    async def run():
        for ev in db.apply(ChildUp("dmvpn", "dmvpn", HUB, S2, "@hub", DN2, spi_in=1, spi_out=2,
                                   source="test"), 0.0):
            rev.push_event(ev)
        await asyncio.sleep(0.01)
        assert rev.pending == set()               # a failed terminate does not stick
    asyncio.run(run())
    assert len(control.calls) >= 1 and rev.stats["failed"] == len(control.calls)


def test_crl_dir_is_a_checked_and_reloadable_field(tmp_path):
    from nhrpbridge.config import load_config
    from nhrpbridge.errors import ConfigError
    from nhrpbridge.reload import RELOADABLE
    f = tmp_path / "c.yaml"
    f.write_text("nhrp-events:\n  cert-store: /etc/nb/peers\n  crl-dir: crls\n")
    try:
        load_config(f)
    except ConfigError as exc:
        assert f"{f}:3: nhrp-events.crl-dir: 'crls' must be an absolute path" in str(exc)
    else:
        raise AssertionError("a relative crl-dir was accepted")
    assert "crl_dir" in RELOADABLE

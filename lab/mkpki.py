#!/usr/bin/env python3
"""Lab PKI, made at lab start: a CA and one certificate per node (PKCS#12 for NSS).

Every spoke's certificate carries its GRE address as an IP subjectAltName, except
spoke3's, which claims 203.0.113.13 but holds 203.0.113.99: the forged registration.
The CA certificate goes into the hub's store too (it verifies CRLs), and for each node a
CRL that revokes it, `crl-NODE.pem`, outside the store: the revocation scenario copies one in.
Usage: mkpki.py OUTDIR node:gre-ip[:san-ip] ...
"""
import datetime as dt
import ipaddress
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

NOW = dt.datetime.now(dt.UTC)


def dn(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "XX"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "DMVPN Lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def main() -> int:
    out = Path(sys.argv[1])
    (out / "store").mkdir(parents=True, exist_ok=True)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (x509.CertificateBuilder().subject_name(dn("DMVPN Lab CA")).issuer_name(dn("DMVPN Lab CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=7))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    (out / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (out / "store" / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for spec in sys.argv[2:]:
        name, gre, *san = spec.split(":")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = (x509.CertificateBuilder().subject_name(dn(f"{name}.dmvpn.example"))
                .issuer_name(ca.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=7))
                .add_extension(x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address(san[0] if san else gre)),
                     x509.DNSName(f"{name}.dmvpn.example")]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        (out / f"{name}.p12").write_bytes(pkcs12.serialize_key_and_certificates(
            name.encode(), key, cert, None, serialization.BestAvailableEncryption(b"lab")))
        (out / "store" / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
               .last_update(NOW).next_update(NOW + dt.timedelta(days=7))
               .add_revoked_certificate(x509.RevokedCertificateBuilder()
                                        .serial_number(cert.serial_number)
                                        .revocation_date(NOW).build())
               .sign(ca_key, hashes.SHA256()))
        (out / f"crl-{name}.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return 0


if __name__ == "__main__":
    sys.exit(main())

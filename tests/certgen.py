"""Test PKI made with cryptography: a CA, spoke certificates of every kind."""
from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

NOW = dt.datetime.now(dt.UTC)


def name(*parts: tuple) -> x509.Name:
    oids = {"C": NameOID.COUNTRY_NAME, "O": NameOID.ORGANIZATION_NAME,
            "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "CN": NameOID.COMMON_NAME}
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in parts])


def make_ca(cn: str = "DMVPN Lab CA"):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = name(("C", "XX"), ("O", "DMVPN Lab"), ("CN", cn))
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_cert(ca, cn: str, ips=(), dirname_gre: str | None = None, dns=(), expired=False,
              org: str = "DMVPN Lab"):
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    start = NOW - dt.timedelta(days=60 if expired else 1)
    end = NOW - dt.timedelta(days=1) if expired else NOW + dt.timedelta(days=30)
    b = (x509.CertificateBuilder().subject_name(name(("C", "XX"), ("O", org), ("CN", cn)))
         .issuer_name(ca_cert.subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end))
    san = [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    san += [x509.DNSName(d) for d in dns]
    if dirname_gre:
        san.append(x509.DirectoryName(name(("OU", f"GRE={dirname_gre}"))))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return key, b.sign(ca_key, hashes.SHA256())


def der(cert) -> bytes:
    return cert.public_bytes(Encoding.DER)


def pem(cert) -> bytes:
    return cert.public_bytes(Encoding.PEM)

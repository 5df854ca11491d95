"""Certificates: DNs as libreswan prints them, a peer certificate store, pluto's own cert.

Strategy:
- libreswan prints DNs most significant first with ", " between RDNs
  (`C=XX, O=DMVPN Lab, CN=hub`), escaping with a backslash or double quotes;
  cryptography's RFC 4514 string is the reverse order. Both are turned into one
  canonical form, a tuple of (ATTR, value) pairs in certificate order, so a peer
  ID from updown/the log and a certificate subject compare exactly.
- The store reads every PEM/DER file of a directory once (and again on reload),
  indexes certificates by subject and by SAN (DNS, IP, email); files that are not
  certificates, cannot be parsed or have expired are reported with the file name
  and the reason, and skipped: a bad file never stops the daemon.
- CRLs (PEM or DER) in the store or in `crl-dir` revoke certificates by (issuer,
  serial). A CRL is used only if the store holds its issuer's CA certificate and the
  signature verifies; an expired CRL still revokes (revocation must not lapse because a
  CRL was not refreshed) and is reported. pluto keeps its own view (its NSS database):
  this store is what registration authorization and revocation (revocation.py) use.
- pluto never exposes the peer's certificate (not in updown, whack or the log), so the
  store is the only source of peer certificate data; our own certificate comes
  from pluto's NSS database with `certutil -L -d sql:DIR -n NICK -r` (argv).
"""
from __future__ import annotations

import datetime as dt
import logging
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

__all__ = ["parse_dn", "dn_of", "format_dn", "CertStore", "CertInfo", "nss_cert_der",
           "cert_info", "StoreProblem", "Revoked"]

log = logging.getLogger("nhrpbridge.certs")

# libreswan's short names (lib/libswan/x509dn.c); E= is emailAddress
_SHORT = {
    NameOID.COUNTRY_NAME: "C", NameOID.STATE_OR_PROVINCE_NAME: "ST", NameOID.LOCALITY_NAME: "L",
    NameOID.ORGANIZATION_NAME: "O", NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COMMON_NAME: "CN", NameOID.EMAIL_ADDRESS: "E", NameOID.SERIAL_NUMBER: "SN",
    NameOID.GIVEN_NAME: "G", NameOID.SURNAME: "S", NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.USER_ID: "UID", NameOID.TITLE: "T",
}
_ALIASES = {"EMAIL": "E", "EMAILADDRESS": "E", "SERIALNUMBER": "SN", "GN": "G", "SN": "SN",
            "STREET": "STREET", "S": "S"}

DN = tuple[tuple[str, str], ...]


def parse_dn(text: str) -> DN:
    """`C=XX, O="Org, Inc", CN=a\\,b` -> (("C","XX"), ("O","Org, Inc"), ("CN","a,b"))."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " ,/":
            i += 1
        if i >= n:
            break
        eq = text.find("=", i)
        if eq < 0:
            raise ValueError(f"not a DN: {text!r}")
        attr = text[i:eq].strip().upper()
        attr = _ALIASES.get(attr, attr)
        i = eq + 1
        value = []
        if i < n and text[i] == '"':
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(text[i])
                i += 1
            i += 1
        else:
            while i < n and text[i] != ",":
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(text[i])
                i += 1
        out.append((attr, "".join(value).strip()))
    return tuple(out)


def dn_of(name: x509.Name) -> DN:
    """A certificate Name in certificate order (most significant first)."""
    out = []
    for rdn in name.rdns:
        for attr in rdn:
            short = _SHORT.get(attr.oid, attr.oid.dotted_string)
            out.append((short, str(attr.value)))
    return tuple(out)


def format_dn(dn: DN) -> str:
    """libreswan style: `C=XX, O=Org\\, Inc, CN=x`."""
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace(",", "\\,").replace('"', '\\"')
    return ", ".join(f"{a}={esc(v)}" for a, v in dn)


@dataclass(frozen=True)
class CertInfo:
    path: str
    der: bytes
    subject: DN
    issuer: DN
    not_before: dt.datetime
    not_after: dt.datetime
    san_ips: tuple[str, ...]
    san_dns: tuple[str, ...]
    san_emails: tuple[str, ...]
    san_dirnames: tuple[DN, ...]
    is_ca: bool
    serial: int = 0

    def expired(self, now: dt.datetime | None = None) -> bool:
        now = now or dt.datetime.now(dt.UTC)
        return not self.not_before <= now <= self.not_after

    def ids(self) -> set[str]:
        """The IKE IDs this certificate can authenticate (libreswan spellings)."""
        ids = {format_dn(self.subject)} | set(self.san_ips) | {f"@{d}" for d in self.san_dns}
        return ids | set(self.san_emails)


def cert_info(der: bytes, path: str = "") -> CertInfo:
    """Parse DER; raises ValueError with the reason."""
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = bc.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertInfo(
        path=path, der=der, subject=dn_of(cert.subject), issuer=dn_of(cert.issuer),
        not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
        san_ips=tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress)),
        san_dns=tuple(san.get_values_for_type(x509.DNSName)),
        san_emails=tuple(san.get_values_for_type(x509.RFC822Name)),
        san_dirnames=tuple(dn_of(n) for n in san.get_values_for_type(x509.DirectoryName)),
        is_ca=is_ca, serial=cert.serial_number)


@dataclass(frozen=True)
class Revoked:
    """One revoked certificate: what an operator needs to see in a rejection."""

    serial: int
    when: dt.datetime
    crl: str

    def __str__(self) -> str:
        return f"revoked on {self.when:%Y-%m-%d %H:%M} UTC (serial {self.serial:#x}, {self.crl})"


def _load_file(path: Path) -> tuple[list[bytes], list[x509.CertificateRevocationList]]:
    """(certificates as DER, CRLs) in one PEM or DER file; ValueError if neither."""
    raw = path.read_bytes()
    if b"-----BEGIN X509 CRL" in raw:
        return [], [x509.load_pem_x509_crl(raw)]
    if b"-----BEGIN" in raw:
        certs = x509.load_pem_x509_certificates(raw)
        return [c.public_bytes(Encoding.DER) for c in certs], []
    try:
        x509.load_der_x509_certificate(raw)
        return [raw], []
    except ValueError:
        try:
            return [], [x509.load_der_x509_crl(raw)]
        except ValueError:
            raise ValueError("neither a certificate nor a CRL (PEM or DER)") from None


def _signed_by(crl: x509.CertificateRevocationList, ca: CertInfo) -> bool:
    try:
        return crl.is_signature_valid(
            x509.load_der_x509_certificate(ca.der).public_key())  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return False


@dataclass(frozen=True)
class StoreProblem:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class CertStore:
    """Peer certificates from a directory, indexed by subject DN and SAN IDs."""

    path: str
    crl_dir: str = ""
    by_subject: dict[DN, list[CertInfo]] = field(default_factory=dict)
    by_id: dict[str, list[CertInfo]] = field(default_factory=dict)
    problems: list[StoreProblem] = field(default_factory=list)
    revoked: dict[tuple[DN, int], Revoked] = field(default_factory=dict)
    loaded_at: float = 0.0

    def load(self) -> CertStore:
        self.by_subject, self.by_id, self.problems, self.revoked = {}, {}, [], {}
        crls: list[tuple[str, x509.CertificateRevocationList]] = []
        files: list[Path] = []
        for d in (self.path, self.crl_dir):
            if d and not Path(d).is_dir():
                self.problems.append(StoreProblem(d, "not a directory"))
            elif d:
                files += sorted(f for f in Path(d).iterdir()
                                if f.is_file() and not f.name.startswith("."))
        for f in files:
            try:
                ders, found = _load_file(f)
                infos = [cert_info(d, str(f)) for d in ders]
            except Exception as exc:  # noqa: BLE001 - cryptography raises more than ValueError
                self.problems.append(StoreProblem(str(f), f"not a certificate or CRL ({exc})"))
                continue
            crls += [(str(f), crl) for crl in found]
            for info in infos:
                if info.expired():
                    self.problems.append(StoreProblem(
                        str(f), f"expired or not yet valid ({info.not_before:%Y-%m-%d} .. "
                                f"{info.not_after:%Y-%m-%d})"))
                    continue
                self.by_subject.setdefault(info.subject, []).append(info)
                for ident in info.ids():
                    self.by_id.setdefault(ident, []).append(info)
        for path, crl in crls:
            self._add_crl(path, crl)
        for p in self.problems:
            log.warning("certificate store: %s (skipped)", p)
        self.loaded_at = time.monotonic()
        log.info("certificate store %s: %d certificates, %d revoked", self.path,
                 sum(len(v) for v in self.by_subject.values()), len(self.revoked))
        return self

    def _add_crl(self, path: str, crl: x509.CertificateRevocationList) -> None:
        issuer = dn_of(crl.issuer)
        cas = [c for c in self.by_subject.get(issuer, []) if c.is_ca]
        if not cas:
            self.problems.append(StoreProblem(path, f"CRL issuer {format_dn(issuer)} has no CA "
                                                    "certificate in the store: cannot verify it"))
            return
        if not any(_signed_by(crl, ca) for ca in cas):
            self.problems.append(StoreProblem(path, "CRL signature does not verify with "
                                                    f"{format_dn(issuer)}'s certificate"))
            return
        nxt = crl.next_update_utc
        if nxt is not None and nxt < dt.datetime.now(dt.UTC):
            log.warning("certificate store: %s: CRL expired on %s: still used (a revocation "
                        "does not lapse), fetch a new one", path, f"{nxt:%Y-%m-%d}")
        for entry in crl:
            self.revoked[(issuer, entry.serial_number)] = Revoked(
                entry.serial_number, entry.revocation_date_utc, path)

    def revocation(self, cert: CertInfo | None) -> Revoked | None:
        """Why `cert` must not be trusted any more (None: not revoked, or no cert)."""
        return self.revoked.get((cert.issuer, cert.serial)) if cert is not None else None

    def lookup(self, peer_id: str = "", subject: str = "", issuer: str = "") -> CertInfo | None:
        """The peer's certificate by log subject (+issuer) or authenticated peer ID."""
        candidates: list[CertInfo] = []
        for text in (subject, peer_id):
            if not text:
                continue
            try:
                dn = parse_dn(text) if "=" in text else None
            except ValueError:
                dn = None
            candidates = (self.by_subject.get(dn, []) if dn else []) or self.by_id.get(text, [])
            if candidates:
                break
        if issuer and candidates:
            try:
                want = parse_dn(issuer)
                candidates = [c for c in candidates if c.issuer == want]
            except ValueError:
                pass
        return max(candidates, key=lambda c: c.not_after) if candidates else None


def nss_cert_der(nssdir: str, nickname: str, certutil: str = "certutil",
                 timeout: float = 10.0) -> bytes:
    """Our own certificate from pluto's NSS database, as DER."""
    if not nickname or nickname.startswith("-"):
        raise ValueError(f"invalid NSS nickname {nickname!r}")
    r = subprocess.run([certutil, "-L", "-d", f"sql:{nssdir}", "-n", nickname, "-r"],
                       capture_output=True, timeout=timeout)
    if r.returncode != 0 or not r.stdout:
        raise ValueError(f"certutil: {r.stderr.decode(errors='replace').strip() or 'no output'}")
    cert_info(r.stdout)          # validate
    return r.stdout

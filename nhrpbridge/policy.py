"""Registration authorization: may this IPsec peer claim that GRE address? Pure.

Policies (per connection in the config, or `serve --policy NAME` for all):
- gre-ip-in-cert-san: the classic DMVPN rule (Alpine's nhrp-events): the GRE
  address must be an IP subjectAltName of the peer's certificate, or appear as
  `GRE=<ip>` in a DirName SAN (OpenNHRP's opennhrp-script.cert convention).
- gre-prefix-by-peer-id: the GRE address must lie in a prefix allowed for the
  authenticated peer ID (`allowed-prefixes`, keys are shell patterns).
- any-authenticated: any peer with a Child SA on that NBMA pair may register.
- deny: nothing is accepted (the default: an unconfigured hub must not trust).
Whatever the policy, no Child SA for the NBMA pair means deny, and so does a peer
certificate the store knows as revoked.
Each decision carries a short `code` (metrics count by it; the reason is for people).
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import ipaddress
from dataclasses import dataclass

from .certs import CertInfo, Revoked

__all__ = ["Decision", "decide", "POLICIES"]

POLICIES = ("gre-ip-in-cert-san", "gre-prefix-by-peer-id", "any-authenticated", "deny")


@dataclass(frozen=True, slots=True)
class Decision:
    accept: bool
    reason: str
    code: str = ""

    @property
    def result(self) -> str:
        return "accept" if self.accept else "reject"


def decide(policy: str, gre_address: str, *, has_child_sa: bool, peer_id: str = "",
           cert: CertInfo | None = None, expected_issuer: tuple | None = None,
           allowed_prefixes: dict[str, tuple[str, ...]] | None = None,
           now: dt.datetime | None = None, revoked: Revoked | None = None) -> Decision:
    """Accept or reject a binding, with the reason an operator needs to read."""
    try:
        gre = ipaddress.ip_address(gre_address)
    except ValueError:
        return Decision(False, f"GRE address {gre_address!r} is not an IP address",
                        "bad-gre-address")
    if not has_child_sa:
        return Decision(False, "no IPsec Child SA for this NBMA pair", "no-child-sa")
    if cert is not None and revoked is not None:
        return Decision(False, f"certificate {_subject(cert)} is {revoked}", "revoked")
    if policy == "any-authenticated":
        return Decision(True, f"authenticated peer {peer_id or '(no id)'} has a Child SA",
                        "authenticated")
    if policy == "gre-prefix-by-peer-id":
        for pattern, prefixes in (allowed_prefixes or {}).items():
            if peer_id and fnmatch.fnmatchcase(peer_id, pattern):
                for p in prefixes:
                    if gre in ipaddress.ip_network(p, strict=False):
                        return Decision(True, f"{gre} is in {p}, allowed for {pattern!r}",
                                        "in-prefix")
                return Decision(False, f"{gre} is not in the prefixes allowed for {pattern!r}: "
                                       f"{', '.join(prefixes)}", "not-in-prefix")
        return Decision(False, f"no allowed-prefixes entry matches peer ID {peer_id!r}",
                        "unknown-peer-id")
    if policy == "gre-ip-in-cert-san":
        return _by_cert_san(gre, cert, peer_id, expected_issuer, now)
    return Decision(False, f"policy {policy!r} denies every registration", "policy-deny")


def _by_cert_san(gre: ipaddress.IPv4Address | ipaddress.IPv6Address, cert: CertInfo | None,
                 peer_id: str, expected_issuer: tuple | None,
                 now: dt.datetime | None) -> Decision:
    if cert is None:
        return Decision(False, f"no certificate known for peer {peer_id or '(no id)'}",
                        "no-certificate")
    if cert.expired(now):
        return Decision(False, f"certificate {_subject(cert)} is expired or not yet valid",
                        "expired")
    if expected_issuer is not None and cert.issuer != expected_issuer:
        return Decision(False, f"certificate {_subject(cert)} was not issued by the CA "
                               "that authenticated the peer", "wrong-issuer")
    if str(gre) in cert.san_ips:
        return Decision(True, f"{gre} is a subjectAltName of {_subject(cert)}", "in-san")
    for dn in cert.san_dirnames:
        if any(v.replace(" ", "") == f"GRE={gre}" or v.split("/")[0] == f"GRE={gre}"
               for _, v in dn):
            return Decision(True, f"{gre} is in a DirName subjectAltName of {_subject(cert)}",
                            "in-san")
    return Decision(False, f"{gre} is not in the subjectAltNames of {_subject(cert)} "
                           f"(IPs: {', '.join(cert.san_ips) or 'none'})", "not-in-san")


def _subject(cert: CertInfo) -> str:
    cn = [v for a, v in cert.subject if a == "CN"]
    return f"CN={cn[-1]}" if cn else "the peer certificate"

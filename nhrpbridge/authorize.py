"""Registration authorization for nhrpd's `authorize-binding`, and certificate data.

Strategy:
- nhrpd identifies the IPsec peer only by the NBMA pair (`local_nbma`,
  `remote_nbma`); with libreswan its `remote_cert=` is empty unless our VICI
  socket supplied `remote-cert-data`. So the peer is looked up in our own SA
  database by that pair, and its certificate in the store by the subject and
  issuer pluto logged (or the authenticated ID). A certificate nhrpd does send
  is used only if it is the one the store holds for that peer (nhrpd only relays
  what we gave it; anything else is suspect).
- Every question gets an answer at once: the decision is a pure function
  (policy.py) over data already in memory; our own certificate is read by
  certutil in a worker thread and cached, never while an answer waits.
- Decisions are logged and published to API subscribers as `binding-accepted` /
  `binding-rejected` (no seq: they change no SA); the last one per peer NBMA is kept
  for `status --peers` (bounded: LAST_DECISIONS peers).
"""
from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .bus import Bus
from .certs import CertInfo, CertStore, Revoked, nss_cert_der, parse_dn
from .config import Config, ConnConfig
from .policy import Decision, decide
from .sa import IkeSa, Link
from .sadb import SaDatabase
from .wire import Certs

__all__ = ["Authorizer"]

log = logging.getLogger("nhrpbridge.authorize")
LOCAL_CERT_TTL = 300.0
LAST_DECISIONS = 65536


@dataclass(frozen=True, slots=True)
class _Judged:
    """One link's answer to a binding question."""

    link: Link | None
    ike: IkeSa | None
    peer_id: str
    decision: Decision
    policy: str
    cert: CertInfo | None


class Authorizer:
    """Args:
        connections: the profiles (policy and allowed prefixes per connection).
        db: the SA database, read only.
        bus: where decisions are broadcast.
        store: the certificate store (None: no certificates to check against).
        policy: overrides every profile's policy (`serve --policy`).
        nss_dir, local_nick: where our own certificate is, for VICI local-cert-data.
    """

    def __init__(self, connections: Mapping[str, ConnConfig], db: SaDatabase, bus: Bus,
                 store: CertStore | None = None, policy: str | None = None, nss_dir: str = "",
                 local_nick: str = ""):
        self.connections = connections
        self.db = db
        self.bus = bus
        self.store = store
        self.policy_override = policy
        self.nss_dir = nss_dir
        self.local_nick = local_nick
        self._local: tuple[float, bytes | None] = (0.0, None)
        self._refreshing: asyncio.Task[None] | None = None
        self.last: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def reconfigure(self, cfg: Config) -> None:
        """A reload: new profiles, the certificate store read again (or another one)."""
        self.connections = cfg.connections
        if not cfg.cert_store:
            self.store = None
        elif self.store is None or (self.store.path, self.store.crl_dir) != (cfg.cert_store,
                                                                              cfg.crl_dir):
            self.store = CertStore(cfg.cert_store, cfg.crl_dir).load()
        else:
            self.store.load()
        nick = cfg.node.cert if cfg.node and cfg.node.auth == "cert" else ""
        if (nick, cfg.nss_dir) != (self.local_nick, self.nss_dir):
            self.local_nick, self.nss_dir = nick, cfg.nss_dir
            self._local = (0.0, None)               # read again by the refresh task

    def policy_for(self, connection: str) -> tuple[str, dict[str, tuple[str, ...]]]:
        conn = self.connections.get(connection)
        prefixes = conn.allowed_prefixes if conn else {}
        if self.policy_override:
            return self.policy_override, prefixes
        return (conn.policy if conn else "deny"), prefixes

    # -- certificate data (also for VICI local-cert-data / remote-cert-data)

    def local_cert(self) -> bytes | None:
        """Our certificate, from a cache refreshed every LOCAL_CERT_TTL seconds by a
        worker thread (certutil can take seconds on a locked NSS database): never
        blocks, so no socket stalls; None until the first read finished."""
        stamp, der = self._local
        if not self.local_nick or not self.nss_dir:
            return None
        if stamp == 0.0 or time.monotonic() - stamp > LOCAL_CERT_TTL:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:                 # no loop: nobody to refresh it
                return der
            if self._refreshing is None:
                self._refreshing = loop.create_task(self._refresh())
        return der

    def load_local_cert(self) -> None:
        """Read our certificate now (before the loop runs, or in a CLI dry run)."""
        if self.local_nick and self.nss_dir:
            self._local = (time.monotonic(), self._read_local())

    async def _refresh(self) -> None:
        try:
            der = await asyncio.to_thread(self._read_local)
            self._local = (time.monotonic(), der)
        finally:
            self._refreshing = None

    def _read_local(self) -> bytes | None:
        try:
            return nss_cert_der(self.nss_dir, self.local_nick)
        except (ValueError, OSError, subprocess.SubprocessError) as exc:
            log.warning("cannot read our certificate %r from %s: %s", self.local_nick,
                        self.nss_dir, exc)
            return None

    def peer_cert(self, ike: IkeSa | None) -> CertInfo | None:
        if ike is None or self.store is None:
            return None
        return self.store.lookup(peer_id=ike.remote_id, subject=ike.remote_cert_subject,
                                 issuer=ike.remote_cert_issuer)

    def revocation(self, ike: IkeSa | None) -> tuple[CertInfo, Revoked] | None:
        """The peer's certificate and why it is revoked, if the store says so."""
        cert = self.peer_cert(ike)
        revoked = self.store.revocation(cert) if cert is not None and self.store else None
        return (cert, revoked) if cert is not None and revoked is not None else None

    def cert_data(self, ike: IkeSa) -> Certs:
        """(our DER, the peer's DER) from memory; for VICI local/remote-cert-data."""
        cert = self.peer_cert(ike)
        return self.local_cert(), cert.der if cert else None

    # -- the decision

    def authorize(self, connection: str | None, remote_nbma: str, gre_address: str,
                  local_nbma: str | None = None, remote_cert_der: bytes | None = None) -> dict[str, Any]:
        """nhrpd names the peer only by its NBMA pair. Behind one NAT address several
        peers share it (two links, two IDs): nhrpd cannot say which one registered, so
        the binding is accepted only if every one of them may claim the address; one
        peer's certificate never vouches for another."""
        links = [lk for lk in self.db.links.values() if lk.remote_host == remote_nbma and lk.up
                 and (local_nbma is None or lk.local_host == local_nbma)
                 and (connection is None or lk.connection == connection)]
        judged = [self._judge(lk.connection, lk, gre_address) for lk in links] \
            or [self._judge(connection or "", None, gre_address)]
        peers = sorted({j.peer_id or "(no id)" for j in judged})
        first = next((j for j in judged if not j.decision.accept), judged[0])
        decision = first.decision
        if len(peers) > 1 and not decision.accept:
            decision = Decision(False, f"{len(peers)} peers share NBMA {remote_nbma} "
                                f"({', '.join(peers)}) and nhrpd does not say which one "
                                f"registered; {first.peer_id or '(no id)'}: {decision.reason}",
                                "ambiguous-peer")
        elif len(peers) > 1:
            decision = Decision(True, f"every peer sharing NBMA {remote_nbma} "
                                f"({', '.join(peers)}) may claim it: {decision.reason}", decision.code)
        note = (" (nhrpd sent a certificate we do not hold for this peer: ignored)"
                if remote_cert_der and first.cert is None else "")
        link, ike = first.link, first.ike
        return {"decision": decision.result, "accept": decision.accept,
                "code": decision.code, "reason": decision.reason + note, "policy": first.policy,
                "connection": link.connection if link else (connection or ""),
                "remote-nbma": remote_nbma, "local-nbma": local_nbma or (link.local_host if link else None),
                "gre-address": gre_address, "peer-id": ike.remote_id if ike else None,
                "cert-source": "store" if first.cert else None}

    def _judge(self, conn: str, link: Link | None, gre_address: str) -> _Judged:
        """The decision for one link (None: no link, which `decide` refuses)."""
        db = self.db
        ike = None
        if link is not None:
            kids = [db.child_sas[c] for c in link.children if c in db.child_sas]
            ike = db.ike_sas.get(kids[-1].ike_uniqueid) if kids else None
            if not link.remote_id and ike is not None and ike.remote_id:
                ike = None      # a guess among peers behind one address (sadb): no vouching
        policy, prefixes = self.policy_for(conn)
        cert = self.peer_cert(ike)
        issuer = None
        if ike is not None and ike.remote_cert_issuer:
            try:
                issuer = parse_dn(ike.remote_cert_issuer)
            except ValueError:
                issuer = None
        peer_id = (ike.remote_id if ike else "") or (link.remote_id if link else "")
        decision = decide(
            policy, gre_address, has_child_sa=link is not None, peer_id=peer_id,
            cert=cert, expected_issuer=issuer, allowed_prefixes=prefixes,
            revoked=self.store.revocation(cert) if self.store else None)
        return _Judged(link, ike, peer_id, decision, policy, cert)

    def record(self, result: dict[str, Any], dry_run: bool = False) -> None:
        kind = "binding-accepted" if result["accept"] else "binding-rejected"
        if dry_run:
            return
        level = logging.INFO if result["accept"] else logging.WARNING
        log.log(level, "%s: GRE %s from NBMA %s (%s, policy %s): %s", kind,
                result["gre-address"], result["remote-nbma"], result["peer-id"] or "no peer",
                result["policy"], result["reason"])
        self.last.pop(result["remote-nbma"], None)
        self.last[result["remote-nbma"]] = {
            "time": time.time(), "decision": result["decision"], "code": result["code"],
            "gre-address": result["gre-address"], "reason": result["reason"]}
        if len(self.last) > LAST_DECISIONS:
            self.last.popitem(last=False)
        self.bus.broadcast({"type": kind, **{k: v for k, v in result.items()
                                                if k not in ("accept", "decision")}})

"""Registration authorization for nhrpd's `authorize-binding`, and certificate data.

Strategy:
- nhrpd identifies the IPsec peer only by the NBMA pair (`local_nbma`,
  `remote_nbma`); with libreswan its `remote_cert=` is empty unless our VICI
  socket supplied `remote-cert-data`. So the peer is looked up in our own SA
  database by that pair, and its certificate in the store by the subject and
  issuer pluto logged (or the authenticated ID). A certificate nhrpd does send
  is used only if it is the one the store holds for that peer (nhrpd only relays
  what we gave it; anything else is suspect).
- Every event gets an answer at once: the decision is a pure function over data
  already in memory. Malformed blocks with an eventid are rejected and logged;
  blocks without one cannot be answered and are logged.
- Decisions are logged and published to API subscribers as `binding-accepted` /
  `binding-rejected` (no seq: they change no SA).
"""
from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from typing import TYPE_CHECKING, Any

from .backlog import Backlog
from .certs import CertInfo, CertStore, nss_cert_der, parse_dn
from .errors import RemoteProtocolError
from .policy import Decision, decide
from .protocol.nhrpevent import Decoder, encode_reply
from .sadb import IkeSa
from .unixsock import peer_cred

if TYPE_CHECKING:
    from .server import Daemon

__all__ = ["Authorizer", "NhrpEventServer"]

log = logging.getLogger("nhrpbridge.authorize")
LOCAL_CERT_TTL = 300.0


class Authorizer:
    def __init__(self, daemon: "Daemon", store: CertStore | None = None,
                 policy: str | None = None, nss_dir: str = "", local_nick: str = ""):
        self.daemon = daemon
        self.store = store
        self.policy_override = policy
        self.nss_dir = nss_dir
        self.local_nick = local_nick
        self._local: tuple[float, bytes | None] = (0.0, None)
        self._refreshing: asyncio.Task[None] | None = None

    def policy_for(self, connection: str) -> tuple[str, dict[str, tuple[str, ...]]]:
        conn = self.daemon.cfg.connections.get(connection)
        prefixes = conn.allowed_prefixes if conn else {}
        if self.policy_override:
            return self.policy_override, prefixes
        return (conn.policy if conn else "deny"), prefixes

    # -- certificate data (also for VICI local-cert-data / remote-cert-data)

    def local_cert(self) -> bytes | None:
        """Our certificate, from a cache refreshed every LOCAL_CERT_TTL seconds.

        certutil can take seconds (a locked NSS database): inside the event loop it runs
        in a worker thread and this returns the cached value meanwhile, so no socket
        stalls; without a loop (a CLI dry run) it runs here.
        """
        stamp, der = self._local
        if not self.local_nick or not self.nss_dir:
            return None
        if stamp == 0.0 or time.monotonic() - stamp > LOCAL_CERT_TTL:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._local = (time.monotonic(), self._read_local())
                return self._local[1]
            if self._refreshing is None:
                self._refreshing = loop.create_task(self._refresh())
        return der

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

    def cert_data(self, ike: IkeSa) -> tuple[bytes | None, bytes | None]:
        cert = self.peer_cert(ike)
        return self.local_cert(), cert.der if cert else None

    # -- the decision

    def authorize(self, connection: str | None, remote_nbma: str, gre_address: str,
                  local_nbma: str | None = None, remote_cert_der: bytes | None = None) -> dict[str, Any]:
        db = self.daemon.db
        links = [l for l in db.links.values() if l.remote_host == remote_nbma and l.up
                 and (local_nbma is None or l.local_host == local_nbma)
                 and (connection is None or l.connection == connection)]
        link = links[0] if links else None
        conn = link.connection if link else (connection or "")
        ike = None
        if link is not None:
            kids = [db.child_sas[c] for c in link.children if c in db.child_sas]
            ike = db.ike_sas.get(kids[-1].ike_uniqueid) if kids else None
        policy, prefixes = self.policy_for(conn)
        cert = self.peer_cert(ike)
        if remote_cert_der and cert is None:
            note = " (nhrpd sent a certificate we do not hold for this peer: ignored)"
        else:
            note = ""
        issuer = None
        if ike is not None and ike.remote_cert_issuer:
            try:
                issuer = parse_dn(ike.remote_cert_issuer)
            except ValueError:
                issuer = None
        decision: Decision = decide(
            policy, gre_address, has_child_sa=link is not None,
            peer_id=(ike.remote_id if ike else "") or (link.remote_id if link else ""),
            cert=cert, expected_issuer=issuer, allowed_prefixes=prefixes)
        result = {"decision": decision.result, "accept": decision.accept,
                  "reason": decision.reason + note, "policy": policy, "connection": conn,
                  "remote-nbma": remote_nbma, "local-nbma": local_nbma or (link.local_host if link else None),
                  "gre-address": gre_address, "peer-id": ike.remote_id if ike else None,
                  "cert-source": "store" if cert else None}
        return result

    def record(self, result: dict[str, Any], dry_run: bool = False) -> None:
        kind = "binding-accepted" if result["accept"] else "binding-rejected"
        if dry_run:
            return
        level = logging.INFO if result["accept"] else logging.WARNING
        log.log(level, "%s: GRE %s from NBMA %s (%s, policy %s): %s", kind,
                result["gre-address"], result["remote-nbma"], result["peer-id"] or "no peer",
                result["policy"], result["reason"])
        self.daemon.broadcast({"type": kind, **{k: v for k, v in result.items()
                                                if k not in ("accept", "decision")}})


class NhrpEventServer:
    """Listens on `nhrp event socket PATH`; nhrpd connects and asks."""

    def __init__(self, daemon: "Daemon", authorizer: Authorizer, path: str):
        self.daemon = daemon
        self.authorizer = authorizer
        self.path = path
        self.stats = {"events": 0, "accepted": 0, "rejected": 0, "malformed": 0}

    async def start(self) -> None:
        cfg = self.daemon.cfg
        await self.daemon.serve_unix(self.path, cfg.vici_mode, cfg.vici_group, self._client)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cred = peer_cred(writer.get_extra_info("socket"))
        log.info("nhrpd event socket: connection from pid=%d uid=%d", cred.pid, cred.uid)
        dec = Decoder()

        def drop(why: str) -> None:
            log.warning("nhrpd event socket: pid=%d does not read its answers (%s): dropped",
                        cred.pid, why)
            writer.transport.abort()
        backlog = Backlog(writer.transport, drop)
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                dec.feed(data)
                while (block := dec.next_block()) is not None:
                    reply = self.handle(block)
                    if reply and not writer.transport.is_closing():
                        writer.write(reply)
                        backlog.wrote(len(reply))
        except RemoteProtocolError as exc:
            log.warning("nhrpd event socket: %s; closing", exc)
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            if dec.pending:
                log.warning("nhrpd event socket: connection closed in the middle of a block "
                            "(%d bytes dropped, nothing to answer)", dec.pending)
            backlog.cancel()
            writer.close()

    def handle(self, block: dict[str, str]) -> bytes | None:
        self.stats["events"] += 1
        try:
            eventid = int(block.get("eventid", ""))
        except ValueError:
            self.stats["malformed"] += 1
            log.warning("nhrpd event without a usable eventid (cannot answer): %s",
                        {k: v[:40] for k, v in block.items()})
            return None
        if block.get("event") != "authorize-binding":
            return encode_reply(eventid, "default")     # as the reference handler does
        remote_nbma, gre = block.get("remote_nbma", ""), block.get("remote_addr", "")
        if not remote_nbma or not gre:
            self.stats["malformed"] += 1
            self.stats["rejected"] += 1
            log.warning("authorize-binding %d without remote_nbma/remote_addr: rejected "
                        "(nhrpd sends them only once the peer has a VC)", eventid)
            return encode_reply(eventid, "reject")
        cert = None
        if block.get("remote_cert"):
            try:
                cert = bytes.fromhex(block["remote_cert"])
            except ValueError:
                cert = None
        result = self.authorizer.authorize(None, remote_nbma, gre, block.get("local_nbma") or None,
                                           cert)
        self.authorizer.record(result)
        self.stats["accepted" if result["accept"] else "rejected"] += 1
        return encode_reply(eventid, "accept" if result["accept"] else "reject")

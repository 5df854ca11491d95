"""Interpretation of parsed pluto log lines: what each one changes in the SA database.

`LogInterpreter` is stateful but pure: it remembers per serial what earlier lines said
(the peer from `sent IKE_SA_INIT request to`, instance switches, the IKE SA a child
uses, the authenticated ID) and turns each `LogLine` into SA database changes (IkeUp,
ChildUp, ChildDown, IkeDown, rekeys) plus `Notice`s for the operator (liveness and
initiation timeouts, revival, updown failures).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .plutolog import LogLine, Notice
from .sa import ChildDown, ChildRekeyed, ChildUp, IkeDown, IkeRekeyed, IkeUp
from .updown import profile_of

__all__ = ["LogInterpreter"]

@dataclass
class _StateMemo:
    conn: str
    instance: int | None
    peer: str | None = None
    port: int | None = None
    ike: int | None = None            # for a child: the IKE serial it uses
    remote_id: str = ""


def _host_ts(addr: str) -> str:
    return f"{addr}/32" if ":" not in addr else f"{addr}/128"


class LogInterpreter:
    """Turns parsed lines into SA changes, remembering what earlier lines said."""

    MAX_MEMO = 100_000                 # serials remembered (oldest forgotten first)

    def __init__(self) -> None:
        self.states: dict[int, _StateMemo] = {}

    def feed(self, line: LogLine) -> list[Any]:
        """Return sadb changes and Notices implied by one line."""
        memo = None
        if line.serial is not None:
            memo = self.states.get(line.serial)
            if memo is None:
                memo = self.states[line.serial] = _StateMemo(line.conn, line.instance, line.peer)
                if len(self.states) > self.MAX_MEMO:
                    del self.states[next(iter(self.states))]
            else:
                memo.conn, memo.instance = line.conn, line.instance or memo.instance
                memo.peer = line.peer or memo.peer
        handler = getattr(self, "_" + line.kind.replace("-", "_"), None)
        return handler(line, memo) if handler else []

    def _peer(self, line: LogLine, memo: _StateMemo | None) -> str | None:
        if line.peer:
            return line.peer
        if memo and memo.peer:
            return memo.peer
        if memo and memo.ike is not None and (ike := self.states.get(memo.ike)):
            return ike.peer
        return None

    def _ike_init(self, line: LogLine, memo: _StateMemo | None) -> list[Any]:
        if memo is not None:
            memo.peer, memo.port = line.data["addr"], line.data["port"]
        return []

    def _switched(self, line: LogLine, memo: _StateMemo | None) -> list[Any]:
        if memo is not None:
            memo.conn, memo.instance = line.data["to-conn"], line.data["to-instance"]
        return []

    def _ike_established(self, line: LogLine, memo: _StateMemo | None) -> list[Any]:
        peer = self._peer(line, memo)
        d = line.data
        remote_id = d.get("id") or d.get("subject", "")
        if memo is not None:
            memo.remote_id = remote_id
        if peer is None or line.serial is None:
            return []
        conn = memo.conn if memo else line.conn
        return [IkeUp(conn_name=conn, connection=profile_of(conn, peer), remote_host=peer,
                      serial=line.serial, instance=memo.instance if memo else line.instance,
                      remote_port=memo.port if memo else None, remote_id=remote_id,
                      initiator=d["initiator"], auth=d.get("auth", ""),
                      remote_cert_subject=d.get("subject", ""),
                      remote_cert_issuer=d.get("issuer", ""))]

    def _child_established(self, line: LogLine, memo: _StateMemo | None) -> list[Any]:
        d = line.data
        if memo is not None and "ike" in d:
            memo.ike = d["ike"]
        peer = self._peer(line, memo)
        local = d.get("local-ts") if d.get("mode") == "TRANSPORT" else None
        if peer is None and d.get("mode") == "TRANSPORT":
            peer = d.get("remote-ts")
        if peer is None or local is None or line.serial is None:
            return []
        conn = memo.conn if memo else line.conn
        ike = self.states.get(d.get("ike", -1))
        return [ChildUp(conn_name=conn, connection=profile_of(conn, peer), local_host=local,
                        remote_host=peer, remote_id=ike.remote_id if ike else "",
                        spi_in=d.get("spi_in", 0), spi_out=d.get("spi_out", 0),
                        mode=d.get("mode", "TRANSPORT"), protocol=d.get("protocol", "ESP"),
                        local_ts=_host_ts(local), remote_ts=_host_ts(d.get("remote-ts", peer)),
                        source="log", serial=line.serial, ike_serial=d.get("ike"),
                        encap="encap" in d)]

    def _child_deleted(self, line: LogLine, memo: _StateMemo | None) -> list[Any]:
        if line.serial is None:
            return []
        peer = self._peer(line, memo) or ""
        conn = memo.conn if memo else line.conn
        self.states.pop(line.serial, None)
        return [ChildDown(conn_name=conn, connection=profile_of(conn, peer), local_host="",
                          remote_host=peer, serial=line.serial)]

    def _ike_deleted(self, line: LogLine, memo: _StateMemo | None) -> list[Any]:
        if line.serial is None:
            return []
        out: list[Any] = [IkeDown(line.serial)]
        if line.data.get("revive"):
            out.append(self._notice("revival", line, memo, "deleting IKE SA but connection "
                                    "is supposed to remain up"))
        self.states.pop(line.serial, None)
        return out

    def _ike_rekeyed(self, line: LogLine, memo: _StateMemo | None) -> list[Any]:
        if line.serial is None:
            return []
        old = self.states.get(line.data["old"])
        if memo is not None and old is not None:
            memo.peer, memo.port, memo.remote_id = old.peer, old.port, old.remote_id
        return [IkeRekeyed(old_serial=line.data["old"], new_serial=line.serial)]

    def _child_rekeyed(self, line: LogLine, memo: _StateMemo | None) -> list[Any]:
        if line.serial is None:
            return []
        d = line.data
        if memo is not None and "ike" in d:
            memo.ike = d["ike"]
        return [ChildRekeyed(old_serial=d["old"], new_serial=line.serial,
                             spi_in=d.get("spi_in", 0), spi_out=d.get("spi_out", 0),
                             ike_serial=d.get("ike"))]

    def _notice(self, kind: str, line: LogLine, memo: _StateMemo | None, text: str) -> Notice:
        return Notice(kind, line.conn, self._peer(line, memo), line.serial, text)

    def _liveness_timeout(self, line: LogLine, memo: _StateMemo | None) -> list[Any]:
        return [self._notice("liveness-timeout", line, memo, line.data["text"])]

    def _initiate_timeout(self, line: LogLine, memo: _StateMemo | None) -> list[Any]:
        return [self._notice("initiate-timeout", line, memo, line.data["text"])]

    def _liveness_action(self, line: LogLine, memo: _StateMemo | None) -> list[Any]:
        return [self._notice("liveness-action", line, memo, line.data["text"])]

    def _revival(self, line: LogLine, memo: _StateMemo | None) -> list[Any]:
        return [self._notice("revival", line, memo, line.data["text"])]

    def _updown_failed(self, line: LogLine, memo: _StateMemo | None) -> list[Any]:
        return [self._notice("updown-failed", line, memo, line.data["text"])]

    def _ts_unacceptable(self, line: LogLine, memo: _StateMemo | None) -> list[Any]:
        fix = ("a responder accepts a peer behind NAT (which proposes its inside address) "
               "only on a conn with rightsubnet= covering that address and narrowing=yes, "
               "not under rightid=%fromcert (measured on libreswan 4.10 and 5.2): nhrpbridge "
               "render writes it as <profile>-nat for certificate nodes; with PSK (IP IDs) "
               "spokes behind NAT are not supported")
        cause = f"the peer talks NAT-T (port 4500): {fix}" if line.data["nat-t"] else \
            f"if this node or the peer is behind NAT, {fix}; else compare the conns' protoport"
        return [self._notice("ts-unacceptable", line, memo, f"{line.data['text']}: {cause}")]

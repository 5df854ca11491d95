"""Database records and events as the wire sees them: API records and VICI trees. Pure.

Strategy:
- One mapping, used by every front-end: the JSON API (kebab-case keys spelled as in
  VICI) and VICI's message trees (laid out the way nhrpd parses them: one section
  named after the profile, IKE keys first, then `child-sas` with one section per
  child holding `uniqueid` and `state`).
- Child updown also raises the patched-strongSwan events `child-state-installed` /
  `-rekeyed` / `-destroying` that nhrpd needs (`vici_events`).
- Time is passed in (`now`), certificate data too (`certs`): this module computes
  nothing that could block or differ between two calls with the same arguments.
"""
from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import fields
from functools import cache
from operator import attrgetter
from typing import Any

from .sa import ChildSa, Event, IkeSa, Link
from .sadb import SaDatabase
from .updown import NAT_SUFFIX

__all__ = [
    "NO_CERTS", "Certs", "api_names", "child_dict", "connection_of", "dump", "event_dict", "ike_dict",
    "ike_message", "link_dict", "spi_hex", "vici_events",
]

Certs = tuple["bytes | None", "bytes | None"]   # (local DER, remote DER)
NO_CERTS: Certs = (None, None)


# ---- API records ----------------------------------------------------------------

@cache
def api_names(kind: Any) -> tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]:
    """(API keys, getter of every attribute at once) of a record type, worked out once
    (fields() is slow; one attrgetter call replaces a getattr per field)."""
    names = [f.name for f in fields(kind)]
    return tuple(n.replace("_", "-") for n in names), attrgetter(*names)


def _kebab(rec: Any) -> dict[str, Any]:
    keys, values = api_names(type(rec))     # type: ignore[arg-type]  # a class is hashable
    return dict(zip(keys, values(rec), strict=True))


def ike_dict(ike: IkeSa) -> dict[str, Any]:
    return _kebab(ike)


def spi_hex(spi: int) -> str:
    """An SPI as the API and VICI spell it: 8 hex digits, no 0x."""
    return f"{spi:08x}"


def child_dict(child: ChildSa) -> dict[str, Any]:
    d = _kebab(child)
    d["spi-in"], d["spi-out"] = spi_hex(child.spi_in), spi_hex(child.spi_out)
    return d


def link_dict(link: Link) -> dict[str, Any]:
    return {"connection": link.connection, "local-host": link.local_host,
            "remote-host": link.remote_host, "remote-id": link.remote_id,
            "children": len(link.children), "child-ids": list(link.children), "up": link.up}


def event_dict(ev: Event) -> dict[str, Any]:
    """The API form of an event: {"type": kind, "seq": n, ...records}."""
    d: dict[str, Any] = {"type": ev.kind, "seq": ev.seq, "time": ev.time}
    if ev.ike_sa is not None:
        d["ike-sa"] = ike_dict(ev.ike_sa)
    if ev.child_sa is not None:
        d["child-sa"] = child_dict(ev.child_sa)
    if ev.link is not None:
        d["link"] = link_dict(ev.link)
    return d


def dump(db: SaDatabase, connection: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Everything, as API dicts (optionally one connection only)."""
    def keep(rec: Any) -> bool:
        return connection is None or rec.connection == connection
    return {"ike-sas": [ike_dict(i) for i in db.ike_sas.values() if keep(i)],
            "child-sas": [child_dict(c) for c in db.child_sas.values() if keep(c)],
            "links": [link_dict(lk) for lk in db.links.values() if keep(lk)]}


def connection_of(ev: Event) -> str | None:
    rec = ev.link or ev.child_sa or ev.ike_sa
    return rec.connection if rec is not None else None


# ---- VICI trees -----------------------------------------------------------------

def _child_section(c: ChildSa, now: float, state: str | None = None) -> dict[str, Any]:
    section = {
        "name": c.connection, "uniqueid": c.uniqueid, "reqid": c.reqid,
        "state": state or c.state, "mode": c.mode, "protocol": c.protocol,
        "spi-in": spi_hex(c.spi_in), "spi-out": spi_hex(c.spi_out),
        "install-time": max(0, int(now - c.installed)) if c.installed else 0,
        "local-ts": [c.local_ts] if c.local_ts else [],
        "remote-ts": [c.remote_ts] if c.remote_ts else [],
    }
    if c.encap:
        section["encap"] = "yes"
    return section


def _nat_flags(ike: IkeSa, children: list[ChildSa]) -> dict[str, str]:
    """strongSwan's nat-* keys, from what pluto showed (it logs no NAT detection): a Child
    SA on the NAT conn, or a transport-mode peer whose selector (in pluto's log) is not its
    address, is a peer behind NAT; ESP in UDP or an IKE port other than 500 means NAT
    somewhere, ours if the peer's selector is its address."""
    nat_remote = any(c.conn_name.endswith(NAT_SUFFIX) or (
        c.mode == "TRANSPORT" and c.remote_ts and c.remote_ts.split("/")[0] != c.remote_host)
        for c in children)
    nat_any = nat_remote or any(c.encap for c in children) or ike.remote_port not in (None, 500)
    nat_local = nat_any and not nat_remote and any(
        c.remote_ts.split("/")[0] == c.remote_host for c in children)
    flags = {"nat-local": nat_local, "nat-remote": nat_remote, "nat-any": nat_any}
    return {k: "yes" for k, v in flags.items() if v}


def ike_message(ike: IkeSa, children: list[ChildSa], now: float, child_state: str | None = None,
                certs: Certs = NO_CERTS, up: bool | None = None,
                with_children: bool = True) -> dict[str, Any]:
    """`{<profile>: {IKE keys..., child-sas: {...}}}` in the order nhrpd needs."""
    local = ike.local_host or next((c.local_host for c in children if c.local_host), "")
    nat = _nat_flags(ike, children)
    section: dict[str, Any] = {
        "uniqueid": ike.uniqueid, "version": 2, "state": ike.state,
        "local-host": local, "local-port": 4500 if nat else 500,      # NAT-T floats to 4500
        "local-id": ike.local_id or next((c.local_id for c in children if c.local_id), local),
        "remote-host": ike.remote_host,
        "remote-port": ike.remote_port or (4500 if nat else 500),
        "remote-id": ike.remote_id or ike.remote_host, **nat,
    }
    if ike.initiator is not None:
        section["initiator"] = "yes" if ike.initiator else "no"
    if ike.established:
        section["established"] = max(0, int(now - ike.established))
    local_der, remote_der = certs
    if local_der:
        section["local-cert-data"] = local_der
    if remote_der:
        section["remote-cert-data"] = remote_der
    if with_children:
        section["child-sas"] = {f"{c.connection}-{c.uniqueid}": _child_section(c, now, child_state)
                                for c in children}
    msg: dict[str, Any] = {}
    if up:
        msg["up"] = "yes"
    msg[ike.connection] = section
    return msg


# (event kind) -> [(VICI event name, child state, up)]; child events carry one child
_CHILD_EVENTS = {
    "child-up": [("child-state-installed", "INSTALLED", False), ("child-updown", "INSTALLED", True)],
    "child-rekeyed": [("child-state-rekeyed", "REKEYED", False), ("child-rekey", "REKEYED", False)],
    "child-down": [("child-state-destroying", "DELETING", False), ("child-updown", "DELETING", False)],
}


def vici_events(ev: Event, now: float, certs: Certs = NO_CERTS,
                wanted: Collection[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The VICI events (name, message) a database event raises, in the order sent;
    only those in `wanted` (the names some client registered) are built."""
    ike = ev.ike_sa
    if ike is None:
        return []
    if ev.child_sa is not None:
        return [(name, ike_message(ike, [ev.child_sa], now, state, certs, up=up))
                for name, state, up in _CHILD_EVENTS.get(ev.kind, ())
                if wanted is None or name in wanted]
    if wanted is not None and {"ike-updown", "ike-rekey"}.isdisjoint(wanted):
        return []
    if ev.kind in ("ike-up", "ike-down"):
        return [("ike-updown", ike_message(ike, [], now, certs=certs, up=ev.kind == "ike-up",
                                           with_children=False))]
    if ev.kind == "ike-rekeyed":
        section = ike_message(ike, [], now, certs=certs, with_children=False)[ike.connection]
        return [("ike-rekey", {ike.connection: {"old": section, "new": section}})]
    return []

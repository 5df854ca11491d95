"""The SA database: IKE SAs, Child SAs and logical links. Pure: no I/O, no clock.

Strategy:
- Sources (updown spool, pluto log, whack reconciliation) describe what they saw
  as *changes* (ChildUp, ChildDown, Unroute, IkeUp, IkeDown, IkeRekeyed,
  Reconcile). `SaDatabase.apply(change, now)` converges the tables and returns
  the events the difference implies, each with a strictly increasing `seq`.
- Rule 1 (idempotence): applying a change whose effect is already present
  returns no event. Hook and log may both report one Child SA; the second report
  only enriches the record (serial, IDs), so subscribers see one child-up.
- Rule 2 (last child): a link is (connection, local-host, remote-host,
  remote-id); remote-id tells apart peers behind one NAT address. link-up is
  emitted with its first Child SA, link-down only when its last one is gone,
  whatever IKE SAs the children hang off (duplicate IKE SAs are normal in DMVPN
  when both spokes initiate).
- Rule 3 (incomplete hook view): updown has no IKE events, no serials and may
  report a down-host with SPIs it never announced (nhrpd-loop.md gotcha 4). An
  unknown down changes nothing (reconciliation settles it); unroute removes every
  child of that conn and peer because pluto only unroutes a conn without SAs.
  An IKE SA we only *inferred* from a Child SA disappears with its last child;
  one the log reported lives until the log (or reconciliation) ends it.
- Unique ids are small stable integers, never reused (persisted counters), as
  nhrpd and VICI `terminate ike-id=` expect.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterable

__all__ = [
    "IkeSa", "ChildSa", "Link", "Event", "ChildUp", "ChildDown", "Unroute", "IkeUp",
    "IkeDown", "IkeRekeyed", "ChildRekeyed", "Reconcile", "SaDatabase", "LinkKey",
]

LinkKey = tuple[str, str, str, str]  # connection, local-host, remote-host, remote-id


# ---- records -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class IkeSa:
    uniqueid: int
    connection: str          # profile name (what nhrpd calls it)
    conn_name: str           # pluto's conn name (per-peer conns differ)
    local_host: str
    remote_host: str
    local_id: str = ""
    remote_id: str = ""
    state: str = "ESTABLISHED"
    serial: int | None = None        # pluto state number #N
    instance: int | None = None      # "conn"[N]
    remote_port: int | None = None
    initiator: bool | None = None
    auth: str = ""
    remote_cert_subject: str = ""
    remote_cert_issuer: str = ""
    established: float = 0.0
    inferred: bool = False           # seen only through its Child SAs

    @property
    def link_key(self) -> LinkKey:
        return (self.connection, self.local_host, self.remote_host, self.remote_id)


@dataclass(frozen=True, slots=True)
class ChildSa:
    uniqueid: int
    ike_uniqueid: int
    connection: str
    conn_name: str
    local_host: str
    remote_host: str
    local_id: str = ""
    remote_id: str = ""
    spi_in: int = 0                  # inbound SPI (pluto's SPI_OUT)
    spi_out: int = 0                 # outbound SPI (pluto's SPI_IN)
    reqid: int = 0
    mode: str = "TRANSPORT"
    protocol: str = "ESP"
    local_ts: str = ""
    remote_ts: str = ""
    state: str = "INSTALLED"
    serial: int | None = None
    installed: float = 0.0
    source: str = ""

    @property
    def link_key(self) -> LinkKey:
        return (self.connection, self.local_host, self.remote_host, self.remote_id)


@dataclass(frozen=True, slots=True)
class Link:
    connection: str
    local_host: str
    remote_host: str
    remote_id: str
    children: tuple[int, ...] = ()

    @property
    def up(self) -> bool:
        return bool(self.children)

    @property
    def key(self) -> LinkKey:
        return (self.connection, self.local_host, self.remote_host, self.remote_id)


@dataclass(frozen=True, slots=True)
class Event:
    """One change as subscribers see it. Child events carry their IKE SA as it was
    then (VICI needs it, and it may be gone by the time the event is delivered)."""

    seq: int
    kind: str                        # ike-up, ike-down, ike-updated, child-up, ...
    time: float
    ike_sa: IkeSa | None = None
    child_sa: ChildSa | None = None
    link: Link | None = None


# ---- changes (inputs) ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ChildUp:
    conn_name: str
    connection: str
    local_host: str
    remote_host: str
    local_id: str = ""
    remote_id: str = ""
    spi_in: int = 0
    spi_out: int = 0
    reqid: int = 0
    mode: str = "TRANSPORT"
    protocol: str = "ESP"
    local_ts: str = ""
    remote_ts: str = ""
    source: str = ""
    serial: int | None = None
    ike_serial: int | None = None


@dataclass(frozen=True, slots=True)
class ChildDown:
    conn_name: str
    connection: str
    local_host: str
    remote_host: str
    spi_in: int = 0
    spi_out: int = 0
    serial: int | None = None


@dataclass(frozen=True, slots=True)
class Unroute:
    conn_name: str
    connection: str
    local_host: str
    remote_host: str


@dataclass(frozen=True, slots=True)
class IkeUp:
    conn_name: str
    connection: str
    remote_host: str
    serial: int
    local_host: str = ""
    instance: int | None = None
    remote_port: int | None = None
    local_id: str = ""
    remote_id: str = ""
    initiator: bool | None = None
    auth: str = ""
    remote_cert_subject: str = ""
    remote_cert_issuer: str = ""


@dataclass(frozen=True, slots=True)
class IkeDown:
    serial: int


@dataclass(frozen=True, slots=True)
class IkeRekeyed:
    old_serial: int
    new_serial: int


@dataclass(frozen=True, slots=True)
class ChildRekeyed:
    old_serial: int
    new_serial: int
    spi_in: int = 0
    spi_out: int = 0
    ike_serial: int | None = None


@dataclass(frozen=True, slots=True)
class Reconcile:
    """pluto's own complete view (from whack): the database converges to it.

    `grace`: a Child SA reported less than this many seconds ago is kept even if
    whack does not list it yet: pluto runs up-host *before* it records the Child
    SA as established (lab: 2.5 s apart under UML), and removing it in that gap
    made nhrpd drop a fresh shortcut.
    """

    ike_sas: tuple[IkeUp, ...]
    child_sas: tuple[ChildUp, ...]
    grace: float = 0.0


# ---- the database -------------------------------------------------------------

@dataclass
class SaDatabase:
    ike_sas: dict[int, IkeSa] = field(default_factory=dict)
    child_sas: dict[int, ChildSa] = field(default_factory=dict)
    links: dict[LinkKey, Link] = field(default_factory=dict)
    seq: int = 0
    next_ike_id: int = 1
    next_child_id: int = 1
    # indexes, so each change costs O(1) at hub scale (10,000 spokes); kept in step
    # by _put_*/_del_* and nothing else
    _kids: dict[int, set[int]] = field(default_factory=dict, repr=False)
    _child_by_spi: dict[tuple[str, int, int], int] = field(default_factory=dict, repr=False)
    _child_by_serial: dict[int, int] = field(default_factory=dict, repr=False)
    _ike_by_serial: dict[int, int] = field(default_factory=dict, repr=False)
    _ike_by_peer: dict[tuple[str, str], set[int]] = field(default_factory=dict, repr=False)
    # persistence: each record's JSON is cached and rebuilt only when it changed, so a
    # checkpoint of 20,000 SAs is a string join, not 0.6 s of the event loop
    _json: dict[tuple[str, int], str] = field(default_factory=dict, repr=False)
    _stale: set[tuple[str, int]] = field(default_factory=set, repr=False)

    # -- index maintenance

    def _put_child(self, c: ChildSa) -> None:
        self.child_sas[c.uniqueid] = c
        self._stale.add(("c", c.uniqueid))
        self._kids.setdefault(c.ike_uniqueid, set()).add(c.uniqueid)
        if c.spi_in or c.spi_out:
            self._child_by_spi[(c.remote_host, c.spi_in, c.spi_out)] = c.uniqueid
        if c.serial is not None:
            self._child_by_serial[c.serial] = c.uniqueid

    def _del_child(self, c: ChildSa) -> None:
        del self.child_sas[c.uniqueid]
        self._stale.add(("c", c.uniqueid))
        kids = self._kids.get(c.ike_uniqueid)
        if kids is not None:
            kids.discard(c.uniqueid)
            if not kids:
                del self._kids[c.ike_uniqueid]
        key = (c.remote_host, c.spi_in, c.spi_out)
        if self._child_by_spi.get(key) == c.uniqueid:
            del self._child_by_spi[key]
        if c.serial is not None and self._child_by_serial.get(c.serial) == c.uniqueid:
            del self._child_by_serial[c.serial]

    def _set_child(self, old: ChildSa, new: ChildSa) -> None:
        self._del_child(old)
        self._put_child(new)

    def _put_ike(self, ike: IkeSa) -> None:
        self.ike_sas[ike.uniqueid] = ike
        self._stale.add(("i", ike.uniqueid))
        self._ike_by_peer.setdefault((ike.connection, ike.remote_host), set()).add(ike.uniqueid)
        if ike.serial is not None:
            self._ike_by_serial[ike.serial] = ike.uniqueid

    def _del_ike(self, ike: IkeSa) -> None:
        del self.ike_sas[ike.uniqueid]
        self._stale.add(("i", ike.uniqueid))
        peers = self._ike_by_peer.get((ike.connection, ike.remote_host))
        if peers is not None:
            peers.discard(ike.uniqueid)
            if not peers:
                del self._ike_by_peer[(ike.connection, ike.remote_host)]
        if ike.serial is not None and self._ike_by_serial.get(ike.serial) == ike.uniqueid:
            del self._ike_by_serial[ike.serial]

    def _set_ike(self, old: IkeSa, new: IkeSa) -> None:
        self._del_ike(old)
        self._put_ike(new)

    def _ikes_of_peer(self, connection: str, remote_host: str) -> list[IkeSa]:
        return [self.ike_sas[u] for u in sorted(self._ike_by_peer.get((connection, remote_host), ()))]

    # -- queries

    def dump(self, connection: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Everything, as API dicts (optionally one connection only)."""
        def keep(rec: Any) -> bool:
            return connection is None or rec.connection == connection
        return {
            "ike-sas": [ike_dict(i) for i in self.ike_sas.values() if keep(i)],
            "child-sas": [child_dict(c) for c in self.child_sas.values() if keep(c)],
            "links": [link_dict(l) for l in self.links.values() if keep(l)],
        }

    def children_of_ike(self, ike_id: int) -> list[ChildSa]:
        return [self.child_sas[u] for u in sorted(self._kids.get(ike_id, ()))]

    def find_link(self, connection: str, remote_host: str,
                  local_host: str | None = None) -> list[Link]:
        return [l for l in self.links.values() if l.connection == connection
                and l.remote_host == remote_host
                and (local_host is None or l.local_host == local_host)]

    def ike_by_serial(self, serial: int) -> IkeSa | None:
        uid = self._ike_by_serial.get(serial)
        return self.ike_sas[uid] if uid is not None else None

    # -- the one entry point

    def apply(self, change: Any, now: float) -> list[Event]:
        """Converge to `change`; return the implied events (maybe none)."""
        self._now = now
        self._events: list[Event] = []
        handler = _HANDLERS[type(change)]
        handler(self, change)
        return self._events

    # -- event helpers

    def _emit(self, kind: str, **kw: Any) -> None:
        self.seq += 1
        self._events.append(Event(self.seq, kind, self._now, **kw))

    def _add_child_to_link(self, child: ChildSa) -> None:
        link = self.links.get(child.link_key)
        if link is None:
            link = Link(*child.link_key)
        was_up = link.up
        link = replace(link, children=link.children + (child.uniqueid,))
        self.links[link.key] = link
        self._emit("child-up", child_sa=child, link=link,
                   ike_sa=self.ike_sas.get(child.ike_uniqueid))
        if not was_up:
            self._emit("link-up", link=link)

    def _remove_child(self, child: ChildSa, cascade: bool = True) -> None:
        """Drop a child; with `cascade`, an inferred IKE SA left empty goes too."""
        self._del_child(child)
        link = self.links.get(child.link_key)
        if link is not None:
            link = replace(link, children=tuple(c for c in link.children if c != child.uniqueid))
            if link.up:
                self.links[link.key] = link
            else:
                del self.links[link.key]
        self._emit("child-down", child_sa=replace(child, state="DELETING"), link=link,
                   ike_sa=self.ike_sas.get(child.ike_uniqueid))
        if link is not None and not link.up:
            self._emit("link-down", link=link)
        ike = self.ike_sas.get(child.ike_uniqueid)
        if cascade and ike is not None and ike.inferred and not self.children_of_ike(ike.uniqueid):
            self._drop_ike(ike)

    def _new_ike(self, **kw: Any) -> IkeSa:
        ike = IkeSa(uniqueid=self.next_ike_id, established=self._now, **kw)
        self.next_ike_id += 1
        self._put_ike(ike)
        self._emit("ike-up", ike_sa=ike)
        return ike

    def _ike_for_child(self, up: ChildUp) -> IkeSa:
        if up.ike_serial is not None:
            ike = self.ike_by_serial(up.ike_serial)
            if ike is not None:
                return ike
        candidates = [i for i in self._ikes_of_peer(up.connection, up.remote_host)
                      if i.local_host in ("", up.local_host)
                      and (not up.remote_id or i.remote_id in ("", up.remote_id))]
        if candidates:
            ike = max(candidates, key=lambda i: (i.serial or 0, i.uniqueid))
            fill = {}
            if not ike.local_host:
                fill["local_host"] = up.local_host
            if not ike.remote_id and up.remote_id:
                fill["remote_id"] = up.remote_id
            if not ike.local_id and up.local_id:
                fill["local_id"] = up.local_id
            if fill:
                old, ike = ike, replace(ike, **fill)
                self._set_ike(old, ike)
            return ike
        return self._new_ike(connection=up.connection, conn_name=up.conn_name,
                             local_host=up.local_host, remote_host=up.remote_host,
                             local_id=up.local_id, remote_id=up.remote_id,
                             serial=up.ike_serial, inferred=up.ike_serial is None)

    def annotates(self, change: Any) -> bool:
        """Would `change` only add facts to an SA we already hold (never create, remove or
        re-key one)? The test applied to changes from sources others can write."""
        if isinstance(change, IkeUp):
            return any(i.remote_host == change.remote_host and i.connection == change.connection
                       and i.serial in (None, change.serial) for i in self.ike_sas.values())
        if isinstance(change, ChildUp):
            return (change.spi_in or change.spi_out) and self._match_child(
                change.local_host, change.remote_host, change.spi_in, change.spi_out,
                None) is not None
        return False

    def _match_child(self, local: str, remote: str, spi_in: int, spi_out: int,
                     serial: int | None) -> ChildSa | None:
        if serial is not None and (uid := self._child_by_serial.get(serial)) is not None:
            return self.child_sas[uid]
        if spi_in or spi_out:
            uid = self._child_by_spi.get((remote, spi_in, spi_out))
            if uid is not None:
                c = self.child_sas[uid]
                if not local or c.local_host == local:
                    return c
        return None

    # -- handlers

    def _child_up(self, up: ChildUp) -> None:
        found = self._match_child(up.local_host, up.remote_host, up.spi_in, up.spi_out, up.serial)
        if found is not None:
            fill = {k: getattr(up, k) for k in ("serial", "reqid", "local_ts", "remote_ts")
                    if getattr(up, k) and not getattr(found, k)}
            if fill:
                self._set_child(found, replace(found, **fill))
            return
        ike = self._ike_for_child(up)
        remote_id = up.remote_id or ike.remote_id
        child = ChildSa(
            uniqueid=self.next_child_id, ike_uniqueid=ike.uniqueid, connection=up.connection,
            conn_name=up.conn_name, local_host=up.local_host or ike.local_host,
            remote_host=up.remote_host, local_id=up.local_id or ike.local_id,
            remote_id=remote_id, spi_in=up.spi_in, spi_out=up.spi_out, reqid=up.reqid,
            mode=up.mode, protocol=up.protocol, local_ts=up.local_ts, remote_ts=up.remote_ts,
            serial=up.serial, installed=self._now, source=up.source)
        self.next_child_id += 1
        self._put_child(child)
        self._add_child_to_link(child)

    def _child_down(self, down: ChildDown) -> None:
        found = self._match_child(down.local_host, down.remote_host, down.spi_in,
                                  down.spi_out, down.serial)
        if found is not None:
            self._remove_child(found)

    def _unroute(self, un: Unroute) -> None:
        kids = [c for ike in self._ikes_of_peer(un.connection, un.remote_host)
                for c in self.children_of_ike(ike.uniqueid)]
        for c in kids:
            if c.uniqueid in self.child_sas and c.conn_name == un.conn_name \
                    and c.local_host == un.local_host:
                self._remove_child(c)

    def _ike_up(self, up: IkeUp) -> None:
        values = {k: getattr(up, k) for k in (
            "conn_name", "connection", "remote_host", "serial", "instance", "remote_port",
            "initiator", "auth", "remote_cert_subject", "remote_cert_issuer")}
        for k in ("local_host", "local_id", "remote_id"):
            if getattr(up, k):
                values[k] = getattr(up, k)
        existing = self.ike_by_serial(up.serial)
        if existing is None:
            # adopt an IKE SA we inferred from a Child SA of the same peer
            for ike in self._ikes_of_peer(up.connection, up.remote_host):
                if ike.inferred:
                    existing = ike
                    break
        if existing is None:
            self._new_ike(local_host=values.pop("local_host", ""), **values)
            return
        updated = replace(existing, inferred=False, **values)
        if updated != existing:
            self._set_ike(existing, updated)
            self._emit("ike-updated", ike_sa=updated)

    def _ike_down(self, down: IkeDown) -> None:
        ike = self.ike_by_serial(down.serial)
        if ike is not None:
            self._drop_ike(ike)

    def _drop_ike(self, ike: IkeSa) -> None:
        """An IKE SA ends; in IKEv2 its Child SAs end with it."""
        for child in self.children_of_ike(ike.uniqueid):
            self._remove_child(child, cascade=False)
        self._del_ike(ike)
        self._emit("ike-down", ike_sa=replace(ike, state="DELETING"))

    def _ike_rekeyed(self, rk: IkeRekeyed) -> None:
        ike = self.ike_by_serial(rk.old_serial)
        if ike is not None:
            new = replace(ike, serial=rk.new_serial)
            self._set_ike(ike, new)
            self._emit("ike-rekeyed", ike_sa=new)

    def _child_rekeyed(self, rk: ChildRekeyed) -> None:
        child = self._match_child("", "", 0, 0, rk.old_serial)
        if child is None:
            return
        fill: dict[str, Any] = {"serial": rk.new_serial}
        if rk.spi_in or rk.spi_out:
            fill.update(spi_in=rk.spi_in, spi_out=rk.spi_out)
        if rk.ike_serial is not None and (ike := self.ike_by_serial(rk.ike_serial)):
            fill["ike_uniqueid"] = ike.uniqueid
        new = replace(child, **fill)
        self._set_child(child, new)
        self._emit("child-rekeyed", child_sa=new, link=self.links.get(new.link_key),
                   ike_sa=self.ike_sas.get(new.ike_uniqueid))

    def _reconcile(self, rc: Reconcile) -> None:
        seen_ike: set[int] = set()
        for up in rc.ike_sas:
            self._ike_up(up)
            ike = self.ike_by_serial(up.serial)
            if ike is not None:
                seen_ike.add(ike.uniqueid)
        seen_child: set[int] = set()
        for up in rc.child_sas:
            self._child_up(up)
            c = self._match_child(up.local_host, up.remote_host, up.spi_in, up.spi_out, up.serial)
            if c is not None:
                seen_child.add(c.uniqueid)
        for c in list(self.child_sas.values()):
            # spared only if reported within the grace period; an `installed` in the
            # future (the wall clock stepped back since) does not spare it for the step
            if c.uniqueid not in seen_child and c.uniqueid in self.child_sas \
                    and not 0 <= self._now - c.installed < rc.grace:
                self._remove_child(c)
        for ike in list(self.ike_sas.values()):
            if ike.uniqueid not in seen_ike and ike.uniqueid in self.ike_sas \
                    and not self.children_of_ike(ike.uniqueid):
                self._drop_ike(ike)

    # -- persistence

    def to_state(self) -> dict[str, Any]:
        """A JSON-able snapshot for the state file."""
        return json.loads(self.to_state_json())

    def to_state_json(self) -> str:
        """The snapshot as JSON text, rebuilding only the records that changed."""
        for kind, uid in self._stale:
            rec = (self.ike_sas if kind == "i" else self.child_sas).get(uid)
            if rec is None:
                self._json.pop((kind, uid), None)
            else:
                self._json[(kind, uid)] = json.dumps(
                    {n: getattr(rec, n) for n in _FIELDS[type(rec)]}, separators=(",", ":"))
        self._stale.clear()
        ikes = ",".join(self._json[("i", u)] for u in self.ike_sas)
        kids = ",".join(self._json[("c", u)] for u in self.child_sas)
        return (f'{{"seq":{self.seq},"next-ike-id":{self.next_ike_id},'
                f'"next-child-id":{self.next_child_id},"ike-sas":[{ikes}],"child-sas":[{kids}]}}')

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "SaDatabase":
        """Rebuild from `to_state()` output; links are derived from the children."""
        db = cls(seq=int(state["seq"]), next_ike_id=int(state["next-ike-id"]),
                 next_child_id=int(state["next-child-id"]))
        ike_names = {f.name for f in fields(IkeSa)}
        child_names = {f.name for f in fields(ChildSa)}
        for raw in state["ike-sas"]:
            ike = IkeSa(**{k: v for k, v in raw.items() if k in ike_names})
            db._put_ike(ike)
        for raw in state["child-sas"]:
            child = ChildSa(**{k: v for k, v in raw.items() if k in child_names})
            db._put_child(child)
            link = db.links.get(child.link_key) or Link(*child.link_key)
            db.links[link.key] = replace(link, children=link.children + (child.uniqueid,))
        return db


_FIELDS = {IkeSa: tuple(f.name for f in fields(IkeSa)),
           ChildSa: tuple(f.name for f in fields(ChildSa))}

_HANDLERS = {
    ChildUp: SaDatabase._child_up, ChildDown: SaDatabase._child_down,
    Unroute: SaDatabase._unroute, IkeUp: SaDatabase._ike_up, IkeDown: SaDatabase._ike_down,
    IkeRekeyed: SaDatabase._ike_rekeyed, ChildRekeyed: SaDatabase._child_rekeyed,
    Reconcile: SaDatabase._reconcile,
}


# ---- API views (kebab-case, spelled as in VICI) --------------------------------

def _kebab(rec: Any, skip: Iterable[str] = ()) -> dict[str, Any]:
    out = {}
    for f in fields(rec):
        if f.name in skip:
            continue
        out[f.name.replace("_", "-")] = getattr(rec, f.name)
    return out


def ike_dict(ike: IkeSa) -> dict[str, Any]:
    return _kebab(ike)


def child_dict(child: ChildSa) -> dict[str, Any]:
    d = _kebab(child)
    d["spi-in"] = f"{child.spi_in:08x}"
    d["spi-out"] = f"{child.spi_out:08x}"
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

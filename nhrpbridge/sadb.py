"""The SA database: IKE SAs, Child SAs and logical links. Pure: no I/O, no clock.

Strategy:
- Sources (updown spool, pluto log, whack reconciliation) describe what they saw
  as *changes* (ChildUp, ChildDown, Unroute, IkeUp, IkeDown, IkeRekeyed,
  Reconcile). `SaDatabase.apply(change, now)` converges the tables and returns
  the events the difference implies, each with a strictly increasing `seq`.
- Rule 1 (idempotence): applying a change whose effect is already present
  returns no event. Hook and log may both report one Child SA; the second report
  only enriches the record (serial, IDs), so subscribers see one child-up.
- Rule 2 (last child): a link is (connection, local-host, remote-host, remote-id);
  remote-id tells apart peers behind one NAT address. link-up is emitted with its
  first Child SA, link-down only when its last one is gone, whatever IKE SAs the
  children hang off (duplicate IKE SAs are normal when both spokes initiate).
- Rule 3 (incomplete hook view): updown has no IKE events, no serials and may report
  a down-host with SPIs it never announced (lab: duplicate children). An unknown down
  changes nothing (reconciliation settles it); unroute removes every child of that
  conn and peer because pluto only unroutes a conn without SAs.
  An IKE SA we only *inferred* from a Child SA disappears with its last child;
  one the log reported lives until the log (or reconciliation) ends it.
- Rule 4 (rekeys never flap): a rekeyed Child SA keeps its record (new serial and
  SPIs, `rekeyed` stamped); the replaced SA's later deletion matches nothing. A
  reconciliation racing a rekey may still list the replaced SA (it is in the kernel
  until pluto deletes it) and not yet the new one: a child rekeyed within the grace is
  spared like a new one. When both ends rekey one Child SA at once (a collision) the
  second successor is a Child SA of its own until pluto deletes one of them; when both
  rekey one IKE SA at once, the second serial is an alias of the same record, and the
  deletion of either keeps the Child SAs (they move to the survivor in pluto too). A
  replaced IKE SA lingers in pluto until deleted: whack listing it creates nothing, and
  a Child SA whack lists under another IKE SA moves to it.
- Rule 5 (replacement without a gap): pluto replaces an expiring Child SA by deleting
  it and then negotiating a new one on the same IKE SA (4.10: 1.2 s apart in the lab);
  nhrpd would see its VC at zero children in between and drop the registration. So the
  end of a link's *last* Child SA is held (`held`, no event) for `hold` seconds
  (`pluto.replace-hold`, 0 = off): a new Child SA on the link ends it at once with the
  link still up; an unroute, the IKE SA's end (logged, or gone from whack) or `Release`
  after `hold` end it for real.
- Unique ids: small stable integers, never reused (persisted), as VICI `ike-id=` expects."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from .sa import (
    ChildDown,
    ChildRekeyed,
    ChildSa,
    ChildUp,
    Event,
    IkeDown,
    IkeRekeyed,
    IkeSa,
    IkeUp,
    Link,
    Reconcile,
    Release,
    Unroute,
)
from .satables import SaTables

__all__ = ["SaDatabase"]


@dataclass
class SaDatabase(SaTables):
    """The tables plus the rules: `apply(change, now)` -> events."""

    def apply(self, change: Any, now: float) -> list[Event]:
        """Converge to `change`; return the implied events (maybe none)."""
        self._now = now
        self._events: list[Event] = []
        _HANDLERS[type(change)](self, change)
        return self._events

    # -- event helpers

    def _emit(self, kind: str, **kw: Any) -> None:
        self.seq += 1
        self._events.append(Event(self.seq, kind, self._now, **kw))

    def _link(self, child: ChildSa) -> tuple[Link, bool]:
        """Put `child` on its link: the link, and whether it was up before."""
        link = self.links.get(child.link_key)
        was_up = link is not None and link.up
        link = Link(*child.link_key, (link.children if link else ()) + (child.uniqueid,))
        self.links[link.key] = link             # (Link(), not replace(): that is slow)
        return link, was_up

    def _unlink(self, child: ChildSa) -> Link | None:
        """Take `child` off its link: the link as left (None: it had none)."""
        link = self.links.get(child.link_key)
        if link is not None:
            link = Link(*link.key, tuple(c for c in link.children if c != child.uniqueid))
            if link.up:
                self.links[link.key] = link
            else:
                del self.links[link.key]
        return link

    def _add_child_to_link(self, child: ChildSa) -> None:
        link, was_up = self._link(child)
        self._emit("child-up", child_sa=child, link=link,
                   ike_sa=self.ike_sas.get(child.ike_uniqueid))
        if not was_up:
            self._emit("link-up", link=link)
        for uid in link.children:               # rule 5: the replacement came
            if uid in self.held:
                self._remove_child(self.child_sas[uid])

    def _remove_child(self, child: ChildSa, cascade: bool = True) -> None:
        """Drop a child; with `cascade`, an inferred IKE SA left empty goes too."""
        self._del_child(child)
        link = self._unlink(child)
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

    def _ike_for_child(self, up: ChildUp) -> tuple[IkeSa, bool]:
        """The Child SA's IKE SA, and whether it is a guess among two peers' IKE SAs at
        one address (behind one NAT), whose ID the Child SA must then not take."""
        if up.ike_serial is not None:
            ike = self.ike_by_serial(up.ike_serial)
            if ike is not None:
                return ike, False
        candidates = [i for i in self._ikes_of_peer(up.connection, up.remote_host)
                      if i.local_host in ("", up.local_host)
                      and (not up.remote_id or i.remote_id in ("", up.remote_id))]
        if candidates:
            ike = max(candidates, key=lambda i: (i.serial or 0, i.uniqueid))
            guessed = len({i.remote_id for i in candidates} - {""}) > 1 and not up.remote_id
            fill: dict[str, Any] = {k: getattr(up, k) for k in ("local_host", "remote_id", "local_id")
                                    if getattr(up, k) and not getattr(ike, k)}
            if fill:
                old, ike = ike, replace(ike, **fill)
                self._set_ike(old, ike)
            return ike, guessed
        return self._new_ike(connection=up.connection, conn_name=up.conn_name,
                             local_host=up.local_host, remote_host=up.remote_host,
                             local_id=up.local_id, remote_id=up.remote_id,
                             serial=up.ike_serial, inferred=up.ike_serial is None), False

    def annotates(self, change: Any) -> bool:
        """Would `change` only add facts to an SA we already hold (never create, remove or
        re-key one)? The test applied to changes from sources others can write."""
        if isinstance(change, IkeUp):
            return any(i.remote_host == change.remote_host and i.connection == change.connection
                       and i.serial in (None, change.serial) for i in self.ike_sas.values())
        if isinstance(change, ChildUp):
            return bool(change.spi_in or change.spi_out) and self._match_child(
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
            fill = {k: getattr(up, k) for k in ("serial", "reqid", "local_ts", "remote_ts", "encap")
                    if getattr(up, k) and not getattr(found, k)}
            parent = self.ike_by_serial(up.ike_serial) if up.ike_serial is not None else None
            if parent is not None and parent.uniqueid != found.ike_uniqueid:
                fill["ike_uniqueid"] = parent.uniqueid      # moved by an IKE SA rekey
            if fill:
                self._set_child(found, found := replace(found, **fill))
            if parent is not None and parent.remote_id not in ("", found.remote_id) \
                    and up.remote_id in ("", parent.remote_id):
                self._relink(found, parent.remote_id)   # a NAT conn's child, first guessed
            return
        if self.unnamed_twin(up):
            return              # the hook's Child SA, seen by whack without SPIs (satables)
        ike, guessed = self._ike_for_child(up)
        remote_id = up.remote_id or ("" if guessed else ike.remote_id)
        child = ChildSa(
            uniqueid=self.next_child_id, ike_uniqueid=ike.uniqueid, connection=up.connection,
            conn_name=up.conn_name, local_host=up.local_host or ike.local_host,
            remote_host=up.remote_host, local_id=up.local_id or ike.local_id,
            remote_id=remote_id, spi_in=up.spi_in, spi_out=up.spi_out, reqid=up.reqid,
            mode=up.mode, protocol=up.protocol, local_ts=up.local_ts, remote_ts=up.remote_ts,
            serial=up.serial, installed=self._now, source=up.source, encap=up.encap)
        self.next_child_id += 1
        self._put_child(child)
        self._add_child_to_link(child)

    def _child_down(self, down: ChildDown) -> None:
        found = self._match_child(down.local_host, down.remote_host, down.spi_in,
                                  down.spi_out, down.serial)
        if found is None or found.held:
            return
        link = self.links.get(found.link_key)
        if link is not None and link.children == (found.uniqueid,) and self.hold > 0:
            self._set_child(found, replace(found, held=self._now))    # rule 5: no event yet
            return
        self._remove_child(found)

    def _release(self, _rel: Release) -> None:
        for uid, since in list(self.held.items()):
            if self._now - since >= self.hold or self._now < since:
                self._remove_child(self.child_sas[uid])

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
        if existing is None and (self._ike_replaced.get(up.serial) in self.ike_sas
                                 or self._ike_alias.get(up.serial) in self.ike_sas):
            return      # rule 4: a rekeyed IKE SA lingers until deleted; a collision's twin
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
            if updated.remote_id and not existing.remote_id:
                for child in self.children_of_ike(updated.uniqueid):
                    if not child.remote_id:
                        self._relink(child, updated.remote_id)

    def _relink(self, child: ChildSa, remote_id: str) -> None:
        """Move a Child SA to the link of its IKE SA's peer ID. A NAT conn's Child SA has no
        ID of its own (updown.peer_id_of): it learns it later when its hook record came
        before the log line naming the certificate, or it was matched to the wrong IKE SA
        of an address two peers share. No child-down/up, which nhrpd would act on."""
        old = self._unlink(child)
        if old is not None and not old.up:
            self._emit("link-down", link=old)
        self._set_child(child, child := replace(child, remote_id=remote_id))
        link, was_up = self._link(child)
        if not was_up:
            self._emit("link-up", link=link)

    def _ike_down(self, down: IkeDown) -> None:
        if self._ike_alias.pop(down.serial, None) is not None:
            return                          # the collision's loser: the record lives on
        ike = self.ike_by_serial(down.serial)
        if ike is None:
            return
        alias = next((a for a, uid in self._ike_alias.items() if uid == ike.uniqueid), None)
        if alias is not None:               # the winner was the other end's rekey
            del self._ike_alias[alias]
            self._set_ike(ike, replace(ike, serial=alias))
            for c in [c for c in self.children_of_ike(ike.uniqueid) if c.uniqueid in self.held]:
                self._remove_child(c)       # its Child SA's IKE SA is gone: no replacement hides it
            return
        self._drop_ike(ike)

    def _drop_ike(self, ike: IkeSa) -> None:
        """An IKE SA ends; in IKEv2 its Child SAs end with it."""
        for child in self.children_of_ike(ike.uniqueid):
            self._remove_child(child, cascade=False)
        self._del_ike(ike)
        self._emit("ike-down", ike_sa=replace(ike, state="DELETING"))

    def _ike_rekeyed(self, rk: IkeRekeyed) -> None:
        ike = self.ike_by_serial(rk.old_serial)
        if ike is None:
            uid = self._ike_replaced.get(rk.old_serial)
            if uid in self.ike_sas and rk.new_serial != self.ike_sas[uid].serial:
                self._ike_alias[rk.new_serial] = uid        # both ends rekeyed it at once
            return
        new = replace(ike, serial=rk.new_serial, rekeyed=self._now)
        self._set_ike(ike, new)
        self._remember(self._ike_replaced, rk.old_serial, ike.uniqueid)
        self._emit("ike-rekeyed", ike_sa=new)

    @staticmethod
    def _remember(memo: dict[int, int], key: int, uid: int, limit: int = 4096) -> None:
        memo[key] = uid
        if len(memo) > limit:               # oldest first: only recent rekeys matter
            del memo[next(iter(memo))]

    def _child_rekeyed(self, rk: ChildRekeyed) -> None:
        fill: dict[str, Any] = {"serial": rk.new_serial, "rekeyed": self._now}
        if rk.spi_in or rk.spi_out:
            fill.update(spi_in=rk.spi_in, spi_out=rk.spi_out)
        if rk.ike_serial is not None and (ike := self.ike_by_serial(rk.ike_serial)):
            fill["ike_uniqueid"] = ike.uniqueid
        child = self._match_child("", "", 0, 0, rk.old_serial)
        if child is None:
            first = self.child_sas.get(self._replaced.get(rk.old_serial, -1))
            if first is not None and rk.new_serial != first.serial \
                    and self._match_child("", "", 0, 0, rk.new_serial) is None:
                # both ends rekeyed it at once: a second successor, until pluto deletes one
                twin = replace(first, uniqueid=self.next_child_id, installed=self._now, held=0.0,
                               **fill)
                self.next_child_id += 1
                self._put_child(twin)
                self._add_child_to_link(twin)
            return
        new = replace(child, **fill)
        self._set_child(child, new)
        self._remember(self._replaced, rk.old_serial, child.uniqueid)
        self._emit("child-rekeyed", child_sa=new, link=self.links.get(new.link_key),
                   ike_sa=self.ike_sas.get(new.ike_uniqueid))

    def _reconcile(self, rc: Reconcile) -> None:
        seen_ike: set[int] = set()
        for up in rc.ike_sas:
            self._ike_up(up)
            if (uid := self._ike_by_serial.get(up.serial, self._ike_alias.get(up.serial))) is not None:
                seen_ike.add(uid)
        # a held Child SA whose IKE SA is gone ends before a replacement on another IKE
        # SA joins its link: the peer lost the SA, and nhrpd must see the link go down to
        # register again (lab: the hub's registration recovery, spoke2 back in 2.3 s)
        for uid in [u for u in self.held if self.ike_gone(self.child_sas[u], seen_ike, rc, self._now)]:
            self._remove_child(self.child_sas[uid])
        seen_child: set[int] = set()
        for cup in rc.child_sas:
            self._child_up(cup)
            c = self._match_child(cup.local_host, cup.remote_host, cup.spi_in, cup.spi_out,
                                  cup.serial)
            if c is not None:
                seen_child.add(c.uniqueid)
        for c in list(self.child_sas.values()):
            # spared if reported within the grace (not for a clock stepped back)
            if c.uniqueid not in seen_child and c.uniqueid in self.child_sas and c.uniqueid \
                    not in self.held and not 0 <= self._now - max(c.installed, c.rekeyed) < rc.grace:
                self._remove_child(c)
        known = dict(rc.known)
        for ike in list(self.ike_sas.values()):      # (the log may be ahead of whack too)
            if ike.uniqueid not in seen_ike and ike.uniqueid in self.ike_sas and not self.children_of_ike(
                    ike.uniqueid) and (known.get(ike.uniqueid) == ike.serial
                                       or not 0 <= self._now - ike.established < rc.grace):
                self._drop_ike(ike)

    def restore(self, state: dict[str, Any] | None) -> None:
        """Become `from_state(state)` (or empty) in place: front-ends hold this object."""
        fresh = SaDatabase.from_state(state) if state is not None else SaDatabase()
        for f in fields(self):
            if f.name != "hold":                # configuration, not state
                setattr(self, f.name, getattr(fresh, f.name))

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SaDatabase:
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


_HANDLERS: dict[type, Callable[[SaDatabase, Any], None]] = {
    ChildUp: SaDatabase._child_up, ChildDown: SaDatabase._child_down,
    Unroute: SaDatabase._unroute, IkeUp: SaDatabase._ike_up, IkeDown: SaDatabase._ike_down,
    IkeRekeyed: SaDatabase._ike_rekeyed, ChildRekeyed: SaDatabase._child_rekeyed,
    Release: SaDatabase._release,
    Reconcile: SaDatabase._reconcile,
}

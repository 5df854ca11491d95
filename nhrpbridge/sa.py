"""The records of the SA database and the changes sources report. Pure dataclasses.

Records (IkeSa, ChildSa, Link) are what the database holds and events carry; changes
(ChildUp ... Reconcile) are what a source saw, in its own words: the database alone
decides what a change means (sadb.py).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ChildDown", "ChildRekeyed", "ChildSa", "ChildUp", "Event", "IkeDown", "IkeRekeyed",
    "IkeSa", "IkeUp", "Link", "LinkKey", "Reconcile", "Release", "Unroute",
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
    rekeyed: float = 0.0             # when pluto last rekeyed it (0: never)

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
    rekeyed: float = 0.0             # when pluto last rekeyed it (0: never)
    held: float = 0.0                # its end reported while the last of its link (sadb.py)
    encap: bool = False              # ESP in UDP (NAT-T), where a source showed it

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
    encap: bool = False


@dataclass(frozen=True, slots=True)
class Release:
    """Time passed: Child SAs held at their link's end longer than HOLD really end now."""


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

    `grace`: an SA reported less than this many seconds ago is kept even if
    whack does not list it yet: pluto runs up-host *before* it records the Child
    SA as established (lab: 2.5 s apart under UML), and removing it in that gap
    made nhrpd drop a fresh shortcut.
    `known`: (uniqueid, serial) of the IKE SAs the database held before whack was asked.
    One of those that whack does not list, under the same serial, is gone: no grace (a
    held link waits on it; lab: a spoke without the log follower kept a dead link up for
    its whole hold, its nhrpd never saw it go down and never registered again).
    """

    ike_sas: tuple[IkeUp, ...]
    child_sas: tuple[ChildUp, ...]
    grace: float = 0.0
    known: tuple[tuple[int, int], ...] = ()

"""Turn one updown environment (PLUTO_* variables) into an SA change.

Facts this relies on (libreswan 4.x and 5.x updown):
- Verbs are prepare|route|up|down|unroute with -host|-client and optional -v6.
  Only up-* and down-* concern Child SAs; prepare/route create nothing.
  unroute-* means the conn (instance) left the routed state: no Child SA of that
  conn to that peer can remain (this also covers pluto's missing down-host for
  a duplicate child, seen in the lab).
- SPI_IN holds the *outbound* SPI and SPI_OUT the inbound one (names swapped in
  pluto). We store them the VICI way: spi-in = inbound, spi-out = outbound.
- PLUTO_CONNECTION is the base name without [N]. A per-peer conn `T-<peer>`
  created by nhrpbridge maps back to its profile T (see `profile_of`), and so does the
  NAT conn `T-nat` that render writes beside the template.
- On `T-nat` (rightid=%any) PLUTO_PEER_ID is not who authenticated: pluto moves a Child SA
  of a peer behind NAT to a fresh instance of `T-nat` whose ID is the peer's address, while
  its IKE SA stays on `T` with the certificate's ID. So that ID is dropped (`peer_id_of`);
  the Child SA takes its IKE SA's.
- updown shows no NAT: for a transport-mode peer behind NAT, PLUTO_PEER_CLIENT is its
  post-NAT address (pluto writes the address the kernel policy uses, not the selector the
  peer proposed; 4.10 kernel.c, 5.2 updown.c). A Child SA on `T-nat` is one of a peer
  behind NAT, its ESP in UDP: that is all the hook can know.
"""
from __future__ import annotations

import ipaddress
from functools import lru_cache

from .errors import RecordError
from .sa import ChildDown, ChildUp, Unroute

__all__ = ["parse_updown_env", "profile_of", "peer_suffix", "peer_id_of", "NAT_SUFFIX", "VERBS"]

VERBS = frozenset(f"{base}-{kind}{v6}" for base in ("prepare", "route", "up", "down", "unroute")
                  for kind in ("host", "client") for v6 in ("", "-v6"))


def peer_suffix(remote_host: str) -> str:
    """The suffix of a per-peer conn name: 198.51.100.12 -> 198-51-100-12."""
    return remote_host.replace(".", "-").replace(":", "-")


NAT_SUFFIX = "-nat"       # render's conn for Child SAs of peers behind NAT: T-nat


def profile_of(conn_name: str, remote_host: str) -> str:
    """Map a per-peer conn name `T-<peer>` or the NAT conn `T-nat` back to the profile T
    nhrpd knows."""
    suffix = "-" + peer_suffix(remote_host)
    if conn_name.endswith(suffix) and len(conn_name) > len(suffix):
        return conn_name[: -len(suffix)]
    if conn_name.endswith(NAT_SUFFIX) and len(conn_name) > len(NAT_SUFFIX):
        return conn_name[: -len(NAT_SUFFIX)]
    return conn_name


def peer_id_of(conn_name: str, reported: str) -> str:
    """The peer ID pluto reported for a Child SA of `conn_name`, or "" when that conn's ID
    is not the authenticated one (the NAT conn: the peer's address; see the module doc)."""
    return "" if conn_name.endswith(NAT_SUFFIX) else reported


def _spi(env: dict[str, str], name: str) -> int:
    """A 32-bit SPI (a 3,600-digit one once made every checkpoint fail)."""
    raw = env.get(name, "0x0") or "0x0"
    if len(raw) > 10:
        raise RecordError(f"{name}={raw[:24]!r}... is not a 32-bit SPI")
    try:
        spi = int(raw, 16)
    except ValueError:
        raise RecordError(f"{name}={raw!r} is not a hexadecimal SPI") from None
    if not 0 <= spi <= 0xFFFFFFFF:
        raise RecordError(f"{name}={raw!r} is not a 32-bit SPI")
    return spi


@lru_cache(maxsize=65536)
def _canonical(raw: str) -> str | None:
    """The address in canonical form, None if it is not one (cached: a storm repeats
    the same few addresses thousands of times)."""
    if "%" in raw or len(raw) > 64:    # a scope id carries any text; pluto never sends one
        return None
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return None


def _addr(env: dict[str, str], name: str) -> str:
    raw = env.get(name, "")
    addr = _canonical(raw)
    if addr is None:
        raise RecordError(f"{name}={raw[:64]!r} is not an IP address")
    return addr


MAX_TEXT = 4096        # IDs and selectors: pluto's own limit is far below; VICI's is 64 KiB


def _text(env: dict[str, str], name: str) -> str:
    raw = env.get(name, "")
    if len(raw) > MAX_TEXT:
        raise RecordError(f"{name} is {len(raw)} characters long (at most {MAX_TEXT})")
    return raw


def parse_updown_env(env: dict[str, str]) -> ChildUp | ChildDown | Unroute | None:
    """Map an updown environment to a change; None for verbs that change no SA.

    Raises:
        RecordError: required variables are missing or malformed.
    """
    verb = env.get("PLUTO_VERB", "")
    if verb not in VERBS:
        raise RecordError(f"PLUTO_VERB={verb!r} is not an updown verb")
    base = verb.split("-", 1)[0]
    if base in ("prepare", "route"):
        return None
    conn = env.get("PLUTO_CONNECTION", "")
    if not conn:
        raise RecordError("PLUTO_CONNECTION is missing")
    if len(conn) > 256 or not conn.isprintable():
        raise RecordError(f"PLUTO_CONNECTION={conn[:64]!r} is not a connection name")
    local, remote = _addr(env, "PLUTO_ME"), _addr(env, "PLUTO_PEER")
    profile = profile_of(conn, remote)
    if base == "unroute":
        return Unroute(conn_name=conn, connection=profile, local_host=local, remote_host=remote)
    spi_out, spi_in = _spi(env, "SPI_IN"), _spi(env, "SPI_OUT")  # pluto's names are swapped
    if base == "down":
        return ChildDown(conn_name=conn, connection=profile, local_host=local, remote_host=remote,
                         spi_in=spi_in, spi_out=spi_out)
    raw = env.get("PLUTO_SA_REQID", "0") or "0"
    if not raw.isascii() or not raw.isdigit() or len(raw) > 10 or int(raw) > 0xFFFFFFFF:
        raise RecordError(f"PLUTO_SA_REQID={raw[:24]!r} is not a 32-bit number")
    reqid = int(raw)
    return ChildUp(
        conn_name=conn, connection=profile, local_host=local, remote_host=remote,
        local_id=_text(env, "PLUTO_MY_ID"), remote_id=peer_id_of(conn, _text(env, "PLUTO_PEER_ID")),
        spi_in=spi_in, spi_out=spi_out, reqid=reqid,
        mode=(env.get("PLUTO_CONNECTION_TYPE") or "transport").upper(),
        protocol=(env.get("PLUTO_SA_TYPE") or "ESP").upper(),
        local_ts=_text(env, "PLUTO_MY_CLIENT"), remote_ts=_text(env, "PLUTO_PEER_CLIENT"),
        source="updown",
        encap=conn.endswith(NAT_SUFFIX))

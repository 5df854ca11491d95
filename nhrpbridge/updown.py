"""Turn one updown environment (PLUTO_* variables) into an SA change.

Facts this relies on (reference/libreswan.md §1-2):
- Verbs are prepare|route|up|down|unroute with -host|-client and optional -v6.
  Only up-* and down-* concern Child SAs; prepare/route create nothing.
  unroute-* means the conn (instance) left the routed state: no Child SA of that
  conn to that peer can remain (this also covers pluto's missing down-host for
  a duplicate child, gotcha 4 of nhrpd-loop.md).
- SPI_IN holds the *outbound* SPI and SPI_OUT the inbound one (names swapped in
  pluto). We store them the VICI way: spi-in = inbound, spi-out = outbound.
- PLUTO_CONNECTION is the base name without [N]. A per-peer conn `T-<peer>`
  created by nhrpbridge maps back to its profile T (see `profile_of`).
"""
from __future__ import annotations

import ipaddress

from .errors import RecordError
from .sadb import ChildDown, ChildUp, Unroute

__all__ = ["parse_updown_env", "profile_of", "peer_suffix", "VERBS"]

VERBS = frozenset(f"{base}-{kind}{v6}" for base in ("prepare", "route", "up", "down", "unroute")
                  for kind in ("host", "client") for v6 in ("", "-v6"))


def peer_suffix(remote_host: str) -> str:
    """The suffix of a per-peer conn name: 198.51.100.12 -> 198-51-100-12."""
    return remote_host.replace(".", "-").replace(":", "-")


def profile_of(conn_name: str, remote_host: str) -> str:
    """Map a per-peer conn name `T-<peer>` back to the profile T nhrpd knows."""
    suffix = "-" + peer_suffix(remote_host)
    if conn_name.endswith(suffix) and len(conn_name) > len(suffix):
        return conn_name[: -len(suffix)]
    return conn_name


def _spi(env: dict[str, str], name: str) -> int:
    raw = env.get(name, "0x0") or "0x0"
    try:
        return int(raw, 16)
    except ValueError:
        raise RecordError(f"{name}={raw!r} is not a hexadecimal SPI") from None


def _addr(env: dict[str, str], name: str) -> str:
    raw = env.get(name, "")
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise RecordError(f"{name}={raw!r} is not an IP address") from None


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
    local, remote = _addr(env, "PLUTO_ME"), _addr(env, "PLUTO_PEER")
    profile = profile_of(conn, remote)
    if base == "unroute":
        return Unroute(conn_name=conn, connection=profile, local_host=local, remote_host=remote)
    spi_out, spi_in = _spi(env, "SPI_IN"), _spi(env, "SPI_OUT")  # pluto's names are swapped
    if base == "down":
        return ChildDown(conn_name=conn, connection=profile, local_host=local, remote_host=remote,
                         spi_in=spi_in, spi_out=spi_out)
    try:
        reqid = int(env.get("PLUTO_SA_REQID", "0") or 0)
    except ValueError:
        raise RecordError(f"PLUTO_SA_REQID={env['PLUTO_SA_REQID']!r} is not a number") from None
    return ChildUp(
        conn_name=conn, connection=profile, local_host=local, remote_host=remote,
        local_id=env.get("PLUTO_MY_ID", ""), remote_id=env.get("PLUTO_PEER_ID", ""),
        spi_in=spi_in, spi_out=spi_out, reqid=reqid,
        mode=(env.get("PLUTO_CONNECTION_TYPE") or "transport").upper(),
        protocol=(env.get("PLUTO_SA_TYPE") or "ESP").upper(),
        local_ts=env.get("PLUTO_MY_CLIENT", ""), remote_ts=env.get("PLUTO_PEER_CLIENT", ""),
        source="updown")

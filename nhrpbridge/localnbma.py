"""This node's own NBMA address when it changes (`nbma: auto`): follow nhrpd's my-host.

Why: pluto resolves `left=%defaultroute` when a conn is added and opens its IKE sockets
when it scans the interfaces; a DHCP or PPPoE address change reaches neither (in 4.10
and 5.2 its address-change handler serves MOBIKE only). nhrpd does notice: zebra tells
it the tunnel source's new address, and it asks to initiate again from there (VICI
`my-host`). So the first initiate from an address other than the one the conns were
loaded with is the signal, and the answer is, in this order: pluto scans the interfaces
again (`whack --listen`: it opens the new address and releases the conns and SAs of the
lost one), the template conns are added again (their %defaultroute resolved anew, so
peers reach the new address), and each per-peer conn is replaced by one with
`left=<my-host>` (perpeer.py). my-host must be one of this node's addresses: a control
client cannot make pluto reload for an address the node does not have.

With a fixed `nbma:`, an initiate from any other address is refused with the field named.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from .config import NodeConfig
from .errors import ErrorCode, PlutoError
from .perpeer import PerPeerConns
from .pluto import Result, Whack

__all__ = ["LocalNbma", "is_local_address"]

log = logging.getLogger("nhrpbridge.pluto")
Call = Callable[[list[str], str], Awaitable[Result]]


def is_local_address(addr: str) -> bool:
    """Does this network namespace have `addr` (can a socket bind to it)?"""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((addr, 0))
        except OSError:
            return False
    return True


class LocalNbma:
    """Which left= a per-peer conn gets, and pluto's reload when the address moved."""

    def __init__(self, node: NodeConfig | None, source: str, ipsec_conf: str, whack: Whack,
                 call: Call, per_peer: PerPeerConns, state: dict[str, Any],
                 is_local: Callable[[str], bool] = is_local_address):
        self.node = node
        self.source = source
        self.ipsec_conf = ipsec_conf
        self.whack = whack
        self.call = call
        self.per_peer = per_peer
        self.state = state            # persisted: state["local-nbma"], the address loaded
        self.is_local = is_local
        self.lock = asyncio.Lock()
        self.moves = 0

    @property
    def dynamic(self) -> bool:
        return self.node is not None and self.node.nbma == "auto"

    async def left_for(self, local: str | None) -> str | None:
        """left= for a per-peer conn asked for from `local` (None: T-base's).

        An initiate without my-host (nhrpbridge's own re-initiation of an NHS link, the
        CLI) keeps the address the conns were loaded with: the first lab run replaced the
        per-peer conn by one without left= there ("left= is not set"), and the spoke lost
        its hub for two minutes."""
        if self.node is None or (local is None and not self.dynamic):
            return None
        if local is None:
            return self.state.get("local-nbma") or "%defaultroute"
        if not self.dynamic:
            if local != self.node.nbma:
                raise PlutoError(
                    f"asked to initiate from {local}, but node.nbma in {self.source} (line "
                    f"{self.node.line}) is {self.node.nbma}: libreswan's conns use that address; "
                    "set `nbma: auto` for an address that changes", ErrorCode.BAD_REQUEST)
            return None
        if not self.is_local(local):
            raise PlutoError(f"asked to initiate from {local}, which is not an address of "
                             "this node (yet?)", ErrorCode.BAD_REQUEST)
        async with self.lock:
            was = self.state.get("local-nbma")
            # a conn added before any my-host was known (%defaultroute) moves only with the rest
            moved = was is not None and was != local
            stale = sorted(n for n, p in self.per_peer.conns.items() if p.local not in (
                None, local, *([] if moved else ["%defaultroute"])))
            if moved or stale:
                await self._move(was, local, stale)
            self.state["local-nbma"] = local
        return local

    async def _move(self, was: str | None, now: str, stale: list[str]) -> None:
        assert self.node is not None
        templates = [self.node.profile] + ([f"{self.node.profile}-nat"]
                                           if self.node.auth == "cert" else [])
        log.warning("local NBMA address %s -> %s (nhrpd's my-host): pluto scans the interfaces "
                    "again, conns %s are added again, per-peer conns %s are replaced",
                    was or "unknown", now, ", ".join(templates), ", ".join(stale) or "none")
        self.moves += 1
        await self.call(self.whack.listen(), "whack --listen")
        for name in templates:
            await self.per_peer.delete(name, f"local address {was} -> {now}")
            result = await self.call(self.whack.addconn(self.ipsec_conf, name), f"addconn {name}")
            if result.stderr.strip():       # 4.10 exits 0 on per-conn errors
                raise PlutoError(f"addconn {name} after the local address changed to {now}: "
                                 f"{result.stderr.strip().splitlines()[-1]}",
                                 ErrorCode.BAD_IPSEC_CONF)
        for name in stale:
            await self.per_peer.delete(name, f"local address {was} -> {now}")

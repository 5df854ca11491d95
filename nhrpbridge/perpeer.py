"""Per-peer conns `T-<peer>`: what libreswan needs to initiate one peer of a template.

Strategy:
- libreswan 4.x `--remote-host` picks the newest instance of the template, so the
  controller adds `T-<peer>` = `also=T-base` + `right=<peer>` to STATE_DIR/peers.conf
  (which includes the operator's ipsec.conf) and loads it with addconn. (4.10 refuses
  `also=T` + `right=` when T sets right=%any: "duplicate key 'right'", hence -base.)
- A conn is deleted after `per-peer-idle` seconds with its link down; the list is
  persisted in state.json, so a restart neither forgets nor duplicates one.
- With a dynamic local address (`nbma: auto`) T-base has no left=, and each conn
  carries the local address nhrpd asked for (`left=<my-host>`, see localnbma.py); a
  conn asked from another address is replaced.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ErrorCode, PlutoError
from .pluto import Result, Whack

__all__ = ["PerPeer", "PerPeerConns"]

log = logging.getLogger("nhrpbridge.pluto")
Call = Callable[[list[str], str], Awaitable[Result]]


@dataclass
class PerPeer:
    profile: str
    remote: str
    local: str | None = None          # left= (dynamic local address), else T-base's
    down_since: float | None = None


class PerPeerConns:
    def __init__(self, peers_conf: Path, ipsec_conf: str, whack: Whack, call: Call,
                 state: dict[str, Any]):
        self.path = peers_conf
        self.state = state            # persisted with the database: state["per-peer"]
        self.ipsec_conf = ipsec_conf
        self.whack = whack
        self.call = call
        self.conns: dict[str, PerPeer] = {}

    def saved(self) -> dict[str, list[str]]:
        """What state.json keeps."""
        return {n: [p.profile, p.remote, *([p.local] if p.local else [])]
                for n, p in self.conns.items()}

    def restore(self, saved: dict[str, list[str]] | None) -> None:
        for name, (profile, remote, *local) in (saved or {}).items():
            self.conns[name] = PerPeer(profile, remote, local[0] if local else None)
        self.state["per-peer"] = self.saved()

    def of(self, profile: str, remote: str) -> list[PerPeer]:
        return [p for p in self.conns.values() if p.profile == profile and p.remote == remote]

    async def ensure(self, profile: str, remote: str, name: str, local: str | None = None) -> None:
        """Add `name` to peers.conf and load it into pluto (once per local address)."""
        if name in self.conns:
            if self.conns[name].local == local:
                return
            await self.delete(name, f"its local address is now {local}")
        self.conns[name] = PerPeer(profile, remote, local)
        self._write()
        try:
            result = await self.call(self.whack.addconn(str(self.path), name), f"addconn {name}")
        except PlutoError:
            self.forget(name)
            raise
        if result.stderr.strip():     # 4.10 exits 0 on per-conn errors: stderr is the verdict
            self.forget(name)
            raise PlutoError(f"addconn {name}: {result.stderr.strip().splitlines()[-1]} "
                             f"(per-peer conns need `conn {profile}-base`, see README)",
                             ErrorCode.BAD_IPSEC_CONF)

    def forget(self, name: str) -> None:
        if self.conns.pop(name, None) is not None:
            self._write()

    async def expire(self, now: float, idle: float, link_up: Callable[[str, str], bool]) -> None:
        """Delete the conns whose link has been down for `idle` seconds."""
        for name, pp in list(self.conns.items()):
            if link_up(pp.profile, pp.remote):
                pp.down_since = None
                continue
            if pp.down_since is None:
                pp.down_since = now
            if now - pp.down_since < idle:
                continue
            if await self.delete(name, f"after {idle:g} s down"):
                log.info("per-peer conn %s deleted after %g s down", name, idle)

    async def delete(self, name: str, why: str) -> bool:
        """Delete `name` from pluto (its SAs with it) and forget it; False if whack failed."""
        try:
            await self.call(self.whack.delete_conn(name), f"whack --delete {name}")
        except PlutoError as exc:
            if exc.code != ErrorCode.UNKNOWN_CONNECTION:
                log.warning("deleting per-peer conn %s (%s): %s", name, why, exc)
                return False
        self.forget(name)
        return True

    def _write(self) -> None:
        """Rendered from templates/peer.conf.j2, the template `render` documents."""
        from .render import render_peers
        text = render_peers(self.ipsec_conf, [(n, p.profile, p.remote, p.local)
                                              for n, p in sorted(self.conns.items())])
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)
        self.state["per-peer"] = self.saved()

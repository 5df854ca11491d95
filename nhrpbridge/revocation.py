"""Revocation: a peer whose certificate the store knows as revoked loses its links.

Why: rejecting a revoked spoke's registrations is not enough; its IKE and Child SAs
would stay up and carry whatever it sends until they expire. pluto checks certificates
against its own NSS database, which knows nothing of the CRLs an operator drops into
nhrpbridge's certificate store, so a revoked peer may well connect again: every time it
does, its IKE SA is terminated again (and its bindings are refused meanwhile).

Strategy: after every reload (the store and its CRLs read again) every IKE SA is
checked; after that, a link coming up checks its IKE SAs, and an IKE SA coming up (or
learning its certificate subject from pluto's log) checks itself. A
revoked peer's IKE SAs are terminated by serial through whack (the same path as
`nhrpbridge terminate --ike-id`), one task per IKE SA, never two for the same one.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from .authorize import Authorizer
from .bus import Control
from .errors import ControlError
from .sa import Event, IkeSa
from .sadb import SaDatabase

__all__ = ["Revocation"]

log = logging.getLogger("nhrpbridge.revocation")


class Revocation:
    """A Sink plus the reload hook `check_all`."""

    def __init__(self, db: SaDatabase, control: Control, authorizer: Authorizer):
        self.db = db
        self.control = control
        self.authorizer = authorizer
        self.pending: set[int] = set()         # IKE SA uniqueids being terminated
        self.stats = {"terminated": 0, "failed": 0}

    def reconfigure(self, _cfg: Any) -> None:
        """After a reload (the store and its CRLs were read again)."""
        if (n := self.check_all()):
            log.warning("revocation: %d IKE SAs of revoked peers are being terminated", n)

    def check_all(self) -> int:
        """Terminate every IKE SA of a revoked peer; how many."""
        return sum(self._check(ike) for ike in list(self.db.ike_sas.values()))

    # ---- Sink

    def push_event(self, ev: Event) -> None:
        """A link that came up, or an IKE SA that came up or learned its certificate
        subject from the log: checked at once (nothing to do without a revoked cert)."""
        store = self.authorizer.store
        if store is None or not store.revoked:
            return
        if ev.kind == "link-up" and ev.link is not None:
            db = self.db
            ids = {db.child_sas[c].ike_uniqueid for c in ev.link.children if c in db.child_sas}
            for i in sorted(ids):
                if (ike := db.ike_sas.get(i)) is not None:
                    self._check(ike)
        elif ev.kind in ("ike-up", "ike-updated") and ev.ike_sa is not None \
                and (ike := self.db.ike_sas.get(ev.ike_sa.uniqueid)) is not None:
            self._check(ike)

    def push_notice(self, msg: dict[str, Any]) -> None:
        pass

    # ---- the check

    def _check(self, ike: IkeSa) -> int:
        found = self.authorizer.revocation(ike)
        if found is None or ike.uniqueid in self.pending:
            return 0
        _, why = found
        log.warning("peer %s (%s) on %s: certificate %s: terminating IKE SA %s",
                    ike.remote_host, ike.remote_id or "no id", ike.connection, why,
                    f"#{ike.serial}" if ike.serial else ike.uniqueid)
        self.pending.add(ike.uniqueid)
        asyncio.get_running_loop().create_task(self._terminate(ike))
        return 1

    async def _terminate(self, ike: IkeSa) -> None:
        try:
            await self.control.terminate(ike.connection, None, ike.uniqueid)
            self.stats["terminated"] += 1
            log.info("revocation: IKE SA %s with %s terminated",
                     f"#{ike.serial}" if ike.serial else ike.uniqueid, ike.remote_host)
        except ControlError as exc:
            self.stats["failed"] += 1
            log.warning("revocation: terminating IKE SA %s with %s failed: %s", ike.uniqueid,
                        ike.remote_host, exc)
        finally:
            self.pending.discard(ike.uniqueid)

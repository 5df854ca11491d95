"""The one place where the parts of a daemon are created and wired together.

Reading order of the data flow: hook -> spool -> record -> ingest -> database ->
bus -> front-ends (API, VICI, nhrpd's event socket) -> actions (whack). Every part
gets what it uses, typed; none of them knows the daemon. The CLI parses arguments,
calls `build_daemon` and runs it.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .api import ApiServer
from .authorize import Authorizer
from .backlog import Pool
from .bus import Control, Listen
from .certs import CertStore
from .config import Config
from .daemon import Daemon
from .errors import ConfigError, ConfigProblem

if TYPE_CHECKING:
    from .metrics import Facts
from .systemd import FdStore
from .unixsock import group_ids, user_ids

__all__ = ["Options", "build_daemon"]

log = logging.getLogger("nhrpbridge")


@dataclass(frozen=True, slots=True)
class Options:
    """What `serve` can ask for beyond the config file."""

    policy: str | None = None        # overrides every profile's registration policy
    pluto: bool = True               # False: no whack (no initiate/terminate/reconcile)


def build_daemon(cfg: Config, options: Options = Options(), listen: Listen | None = None,
                 config_loader: Callable[[], Config] | None = None) -> Daemon:
    """Create the database, sources, front-ends and actions the config asks for.

    `listen` replaces the daemon's unix-socket listeners (tests serve in memory);
    `config_loader` reads the config again for a reload (None: no file to read).
    """
    if options.policy is not None:
        from .policy import POLICIES
        if options.policy not in POLICIES:
            raise ConfigError([ConfigProblem("--policy", 0, "policy",
                                             f"{options.policy!r} is not one of "
                                             f"{', '.join(POLICIES)}")])
    daemon = Daemon(cfg)
    daemon.config_loader = config_loader
    fdstore = FdStore() if listen is None and FdStore().enabled else None
    if listen is not None:
        daemon.listen = listen
    elif fdstore is not None:
        daemon.listen.fdstore = fdstore          # type: ignore[attr-defined]
    pool = Pool()
    allowed_gids = group_ids(cfg.control_groups)
    store = CertStore(cfg.cert_store, cfg.crl_dir).load() if cfg.cert_store else None
    authorizer = Authorizer(cfg.connections, daemon.db, daemon.bus, store, options.policy,
                            cfg.nss_dir, cfg.node.cert if cfg.node and cfg.node.auth == "cert"
                            else "")
    authorizer.load_local_cert()
    daemon.reconfigure.append(authorizer.reconfigure)
    daemon.reconfigure.append(_set_log_level)
    daemon.reconfigure.append(lambda c: setattr(daemon.db, "hold", c.replace_hold))

    controller = revocation = None
    if options.pluto:
        from .control import PlutoController
        from .pluto import Whack, find_whack
        from .revocation import Revocation
        controller = PlutoController(cfg, daemon.db, daemon.apply, daemon.extra_state, Whack(
            ipsec=cfg.ipsec, rundir=cfg.pluto_rundir, ctlsocket=cfg.pluto_ctlsocket,
            binary=find_whack(cfg.ipsec)))
        daemon.controller = controller
        daemon.ingest.hold_back = controller.hold_back
        daemon.bus.add_sink(controller)
        daemon.reconfigure.append(controller.reconfigure)
        revocation = Revocation(daemon.db, daemon, authorizer)
        daemon.bus.add_sink(revocation)
        daemon.reconfigure.append(revocation.reconfigure)     # after the store was read again
    if cfg.pluto_log:
        from .sources.logfollow import make_follower
        daemon.log_follower = make_follower(cfg.pluto_log)

    control: Control = daemon
    metrics = None
    if cfg.metrics_listen:
        from .metrics import Metrics, MetricsServer, TimedControl
        metrics = Metrics(daemon.db, lambda: facts())
        daemon.bus.add_sink(metrics)
        control = TimedControl(daemon, metrics)
    api = ApiServer(daemon.db, daemon.bus, control, authorizer, daemon.listen, cfg.api_socket,
                    cfg.api_mode, cfg.api_group, allowed_gids, pool)
    daemon.servers.append(api)
    daemon.handovers[api.kind] = api
    recovery = None
    if cfg.vici_socket:
        from .recovery import Recovery
        recovery = Recovery(daemon.db, control, daemon.extra_state, daemon.touch,
                            cfg.recover_registrations, bool(cfg.event_socket))
        daemon.reconfigure.append(lambda c: recovery.reconfigure(c.recover_registrations))
    if cfg.event_socket:
        from .eventsocket import NhrpEventServer
        events = NhrpEventServer(authorizer, daemon.listen, cfg.event_socket, cfg.vici_mode,
                                 cfg.vici_group, pool, fdstore, recovery)
        daemon.servers.append(events)
        daemon.handovers[events.kind] = events
    vici = None
    if cfg.vici_socket:
        from .viciserver import ViciServer
        vici = ViciServer(daemon.db, control, daemon.listen, cfg.vici_socket, cfg.vici_mode,
                          cfg.vici_group, allowed_gids, authorizer.cert_data, pool,
                          protected_uids=user_ids(cfg.vici_protected_users), fdstore=fdstore,
                          on_nhrpd_session=recovery.vici_session if recovery else None)
        daemon.bus.add_sink(vici)
        daemon.servers.append(vici)
        daemon.handovers[vici.kind] = vici

    def facts() -> Facts:
        """What the metrics read at scrape time, from the parts that hold it."""
        from .metrics import Facts
        lag = getattr(daemon.log_follower, "lag", None)
        ctl = controller.stats if controller is not None else {}
        return Facts(
            records=daemon.stats["records"], bad_records=daemon.stats["bad-records"],
            spool_backlog=daemon.ingest.backlog(),
            whack_calls=int(ctl["whack-calls"]) if ctl else None,
            whack_failures=int(ctl["whack-failures"]) if ctl else None,
            reconcile_changes=int(ctl["reconcile-changes"]) if ctl else None,
            reconcile_last_success=controller.last_reconcile or None if controller else None,
            api_clients=len(api.connections),
            api_subscribers=sum(c.subscribed is not False for c in api.connections),
            vici_clients=len(vici.connections) if vici is not None else None,
            client_drops=pool.drops, clients_refused=getattr(daemon.listen, "refused", 0),
            log_follower_lag_bytes=lag() if lag is not None else None,
            terminations={"revocation": revocation.stats["terminated"] if revocation else 0,
                          "registration-recovery":
                              recovery.stats["terminated"] if recovery else 0})
    if metrics is not None:
        server = MetricsServer(metrics, daemon.listen, cfg.metrics_listen, cfg.metrics_mode,
                               cfg.metrics_group)
        daemon.servers.append(server)
    return daemon


def _set_log_level(cfg: Config) -> None:
    logging.getLogger().setLevel(cfg.log_level.upper())

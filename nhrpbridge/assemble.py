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

from .api import ApiServer
from .authorize import Authorizer
from .backlog import Pool
from .bus import Listen
from .certs import CertStore
from .config import Config
from .daemon import Daemon
from .errors import ConfigError, ConfigProblem
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
    store = CertStore(cfg.cert_store).load() if cfg.cert_store else None
    authorizer = Authorizer(cfg.connections, daemon.db, daemon.bus, store, options.policy,
                            cfg.nss_dir, cfg.node.cert if cfg.node and cfg.node.auth == "cert"
                            else "")
    authorizer.load_local_cert()
    daemon.reconfigure.append(authorizer.reconfigure)
    daemon.reconfigure.append(_set_log_level)

    if options.pluto:
        from .control import PlutoController
        from .pluto import Whack
        controller = PlutoController(cfg, daemon.db, daemon.apply, daemon.extra_state, Whack(
            ipsec=cfg.ipsec, rundir=cfg.pluto_rundir, ctlsocket=cfg.pluto_ctlsocket))
        daemon.controller = controller
        daemon.bus.add_sink(controller)
        daemon.reconfigure.append(controller.reconfigure)
    if cfg.pluto_log:
        from .sources.logfollow import make_follower
        daemon.log_follower = make_follower(cfg.pluto_log)

    api = ApiServer(daemon.db, daemon.bus, daemon, authorizer, daemon.listen, cfg.api_socket,
                    cfg.api_mode, cfg.api_group, allowed_gids, pool)
    daemon.servers.append(api)
    daemon.handovers[api.kind] = api
    recovery = None
    if cfg.vici_socket:
        from .recovery import Recovery
        recovery = Recovery(daemon.db, daemon, daemon.extra_state, daemon.touch,
                            cfg.recover_registrations, bool(cfg.event_socket))
        daemon.bus.add_sink(recovery)
        daemon.reconfigure.append(lambda c: recovery.reconfigure(c.recover_registrations))
    if cfg.event_socket:
        from .eventsocket import NhrpEventServer
        events = NhrpEventServer(authorizer, daemon.listen, cfg.event_socket, cfg.vici_mode,
                                 cfg.vici_group, pool, fdstore, recovery)
        daemon.servers.append(events)
        daemon.handovers[events.kind] = events
    if cfg.vici_socket:
        from .viciserver import ViciServer
        vici = ViciServer(daemon.db, daemon, daemon.listen, cfg.vici_socket, cfg.vici_mode,
                          cfg.vici_group, allowed_gids, authorizer.cert_data, pool,
                          protected_uids=user_ids(cfg.vici_protected_users), fdstore=fdstore,
                          on_nhrpd_session=recovery.vici_session if recovery else None)
        daemon.bus.add_sink(vici)
        daemon.servers.append(vici)
        daemon.handovers[vici.kind] = vici
    return daemon


def _set_log_level(cfg: Config) -> None:
    logging.getLogger().setLevel(cfg.log_level.upper())

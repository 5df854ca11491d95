"""What a reload (SIGHUP, `nhrpbridge reload`) may change in place, and what needs a restart.

Strategy: the config file is read again and compared with the running one, field by
field. Fields only read when they are used (policies and prefixes, timeouts, the
certificate store, the log level, the node section) take effect at once; fields that
describe what the daemon holds open (sockets, their modes and groups, the state and
spool directories, the pluto log source) need a restart, which `nhrpbridge restart`
does without dropping any client. A config with problems changes nothing.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

from .config import SPEC, Config
from .errors import ConfigError
from .systemd import sd_notify

__all__ = ["RELOADABLE", "changes", "merge", "reload_config"]

log = logging.getLogger("nhrpbridge")

RELOADABLE = frozenset({
    "log_level", "connections", "node", "cert_store", "nss_dir", "reconcile_interval",
    "whack_timeout", "initiate_timeout", "initiate_retry", "per_peer_idle",
    "libreswan_version", "control_groups", "recover_registrations", "crl_dir",
    "replace_hold",
})
_NAMES = {attr: f"{section + '.' if section else ''}{key}"
          for section, keys in SPEC.items() for key, (attr, _) in keys.items()}
_NAMES.update({"connections": "connections", "node": "node", "source": "(file)"})


def name_of(attr: str) -> str:
    """The field as the operator writes it in the YAML file."""
    return _NAMES.get(attr, attr)


def changes(running: Config, new: Config) -> tuple[list[str], list[str]]:
    """(fields that change in place, fields that need a restart), as config attributes."""
    now: list[str] = []
    later: list[str] = []
    for f in fields(Config):
        if f.name == "source" or getattr(running, f.name) == getattr(new, f.name):
            continue
        (now if f.name in RELOADABLE else later).append(f.name)
    return now, later


def merge(running: Config, new: Config) -> tuple[Config, dict[str, Any]]:
    """The config to run with after a reload, and the report for the operator."""
    now, later = changes(running, new)
    merged = replace(running, **{a: getattr(new, a) for a in now})
    return merged, {"reloaded": True, "changed": [name_of(a) for a in now],
                    "needs-restart": [name_of(a) for a in later]}


def reload_config(running: Config, loader: Callable[[], Config] | None,
                  parts: list[Callable[[Config], None]]) -> tuple[Config, dict[str, Any]]:
    """Read the file again (`loader`), hand what may change to `parts`, report the rest.

    Returns the config to run with and the report; a config with problems changes
    nothing. Without a file (--state-dir) the parts still re-read (the certificate store).
    """
    sd_notify("RELOADING=1")
    try:
        if loader is None:
            new = running
            result: dict[str, Any] = {"reloaded": True, "changed": [], "needs-restart": [],
                                    "note": "no config file (--state-dir): only the "
                                            "certificate store is read again"}
        else:
            try:
                new, result = merge(running, loader())
            except ConfigError as exc:
                log.error("reload refused, the running configuration stays:\n%s", exc)
                return running, {"reloaded": False, "problems": [str(p) for p in exc.problems]}
        for part in parts:
            part(new)
        log.info("reloaded: %s changed in place%s", ", ".join(result["changed"]) or "nothing",
                 "; needs a restart (nhrpbridge restart): " + ", ".join(result["needs-restart"])
                 if result["needs-restart"] else "")
        return new, result
    finally:
        sd_notify("READY=1")

"""What a reload (SIGHUP, `nhrpbridge reload`) may change in place, and what needs a restart.

Strategy: the config file is read again and compared with the running one, field by
field. Fields only read when they are used (policies and prefixes, timeouts, the
certificate store, the log level, the node section) take effect at once; fields that
describe what the daemon holds open (sockets, their modes and groups, the state and
spool directories, the pluto log source) need a restart, which `nhrpbridge restart`
does without dropping any client. A config with problems changes nothing.
"""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from .config import SPEC, Config

__all__ = ["RELOADABLE", "changes", "merge"]

RELOADABLE = frozenset({
    "log_level", "connections", "node", "cert_store", "nss_dir", "reconcile_interval",
    "whack_timeout", "initiate_timeout", "initiate_retry", "per_peer_idle",
    "libreswan_version", "control_groups",
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

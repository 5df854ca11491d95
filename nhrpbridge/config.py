"""The YAML config: parsed with line marks, checked, turned into a frozen Config.

Strategy:
- `yaml.compose()` gives nodes with positions; we validate the node tree
  against SPEC ourselves (no extra dependency), so every problem comes out as
  `FILE:LINE: field: message`, all of them at once, like `vtysh -C`.
- String fields take the scalar's *source text*: YAML 1.1 would turn `no` into
  False and `0123` into 83; an operator who wrote `group: no` means "no". Only
  quoted or plain scalars are accepted where a string is expected.
- Unknown keys and duplicate keys are errors (a typo must not be ignored).
- `--state-dir DIR` needs no file at all: `Config.for_state_dir()` puts every
  runtime path under DIR, for tests, the demo, the lab and several instances.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from . import configfields as F
from .configfields import LOG_LEVELS, MAX_PROBLEMS
from .errors import ConfigError, ConfigProblem
from .policy import POLICIES

__all__ = ["DEFAULT_CONFIG", "MAX_PROBLEMS", "SPEC", "Config", "ConnConfig", "NodeConfig", "load_config"]

DEFAULT_CONFIG = "/etc/nhrpbridge/nhrpbridge.yaml"


@dataclass(frozen=True)
class ConnConfig:
    """A connection profile nhrpbridge manages (the nhrpd `vici profile`)."""

    name: str
    per_peer: str = "auto"           # auto: per-peer conns on libreswan 4.x
    policy: str = "deny"             # registration authorization (issue #6)
    allowed_prefixes: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeConfig:
    """What `nhrpbridge render` needs to write ipsec.conf and the FRR interface."""

    role: str = ""                       # hub | spoke
    nbma: str = ""                       # local NBMA address (left=), or "auto" (dynamic)
    underlay: str = "eth0"               # tunnel source interface
    profile: str = "dmvpn"               # conn name = nhrpd vici profile
    gre_interface: str = "gre1"
    gre_address: str = ""
    gre_key: int = 42
    network_id: int = 1
    holdtime: int = 0
    nhs: tuple[str, ...] = ()            # spokes: hubs' NBMA addresses
    auth: str = "cert"                   # cert | psk
    cert: str = ""                       # NSS nickname (leftcert=)
    ca: str = "%same"                    # rightca=
    peer_id: str = "%fromcert"           # rightid= (cert); IP IDs with PSK
    psk: str = ""
    dpddelay: int = 10
    retransmit_timeout: int = 60
    ike_lifetime: int = 0                # s; 0: libreswan's default (ikelifetime=)
    child_lifetime: int = 0              # s; 0: libreswan's default (salifetime=)
    rekey_margin: int = 0                # s; 0: libreswan's default (rekeymargin=)
    ike: str = ""
    esp: str = ""
    hook: str = "/usr/libexec/nhrpbridge/updown"
    line: int = 0                        # where `node:` starts, for messages


@dataclass(frozen=True)
class Config:
    source: str = "<defaults>"
    state_dir: Path = Path("/run/nhrpbridge")
    spool_dir: Path = Path("/run/nhrpbridge/spool")
    api_socket: Path = Path("/run/nhrpbridge/api.sock")
    api_mode: int = 0o660
    api_group: str = ""
    control_groups: tuple[str, ...] = ()
    log_level: str = "info"
    ipsec: str = "ipsec"
    pluto_rundir: str = ""
    pluto_ctlsocket: str = ""
    ipsec_conf: str = "/etc/ipsec.conf"
    pluto_log: str = ""
    log_position_file: str = ""
    reconcile_interval: float = 30.0
    whack_timeout: float = 10.0
    initiate_timeout: float = 30.0
    initiate_retry: float = 60.0
    per_peer_idle: float = 300.0
    replace_hold: float = 5.0             # s a link's last Child SA's end waits (sadb.py)
    libreswan_version: str = "auto"
    vici_socket: str = ""
    vici_mode: int = 0o660
    vici_group: str = ""
    vici_protected_users: tuple[str, ...] = ("frr",)   # nhrpd's user: never dropped for slowness
    recover_registrations: float = 5.0     # s after nhrpd's new session; 0: off (recovery.py)
    event_socket: str = ""
    cert_store: str = ""
    crl_dir: str = ""                    # CRLs (also read from the cert store)
    metrics_listen: str = ""             # HOST:PORT or a unix socket path; "" = off
    metrics_mode: int = 0o660
    metrics_group: str = ""
    nss_dir: str = "/var/lib/ipsec/nss"
    connections: dict[str, ConnConfig] = field(default_factory=dict)
    node: NodeConfig | None = None

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @classmethod
    def for_state_dir(cls, state_dir: str | Path, base: Config | None = None) -> Config:
        """Every runtime path under DIR (the `serve --state-dir` contract)."""
        d = Path(state_dir).resolve()
        return replace(base or cls(), state_dir=d, spool_dir=d / "spool",
                       api_socket=d / "api.sock")


# section -> key -> (config attribute, checker)
SPEC: dict[str, dict[str, tuple[str, Callable[[yaml.Node], Any]]]] = {
    "": {"state-dir": ("state_dir", F.path), "spool-dir": ("spool_dir", F.path),
         "log-level": ("log_level", F.choice(*LOG_LEVELS))},
    "api": {"socket": ("api_socket", F.socket_path), "mode": ("api_mode", F.mode),
            "group": ("api_group", F.str_), "control-groups": ("control_groups", F.str_list)},
    "pluto": {"ipsec": ("ipsec", F.str_), "rundir": ("pluto_rundir", F.path),
              "ctlsocket": ("pluto_ctlsocket", F.path), "ipsec-conf": ("ipsec_conf", F.path),
              "log": ("pluto_log", F.str_), "log-position-file": ("log_position_file", F.path),
              "reconcile-interval": ("reconcile_interval", F.number),
              "whack-timeout": ("whack_timeout", F.number),
              "initiate-timeout": ("initiate_timeout", F.number),
              "initiate-retry": ("initiate_retry", F.number),
              "per-peer-idle": ("per_peer_idle", F.number),
              "replace-hold": ("replace_hold", F.number),
              "version": ("libreswan_version", F.choice("auto", "4", "5")),
              "nss-dir": ("nss_dir", F.path)},
    "vici": {"socket": ("vici_socket", F.socket_path), "mode": ("vici_mode", F.mode),
             "group": ("vici_group", F.str_),
             "protected-users": ("vici_protected_users", F.str_list),
             "recover-registrations": ("recover_registrations", F.number)},
    "nhrp-events": {"socket": ("event_socket", F.socket_path), "cert-store": ("cert_store", F.path),
                    "crl-dir": ("crl_dir", F.path)},
    "metrics": {"listen": ("metrics_listen", F.listen_address), "mode": ("metrics_mode", F.mode),
                "group": ("metrics_group", F.str_)},
}
CONN_SPEC: dict[str, Callable[[yaml.Node], Any]] = {
    "per-peer": F.choice("auto", "yes", "no"), "policy": F.choice(*POLICIES),
    "allowed-prefixes": F.scalar}    # allowed-prefixes: walked by _prefixes instead


def load_config(path: str | Path, text: str | None = None) -> Config:
    """Read and check one YAML config file.

    Raises:
        ConfigError: with every problem found (file, line, field, message).
    """
    source = str(path)
    col = F.Collector(source)
    try:
        if text is None:
            text = Path(path).read_text(encoding="utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except OSError as exc:
        raise ConfigError([ConfigProblem(source, 0, "(file)", exc.strerror or str(exc))]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem(source, 1, "(file)", f"not UTF-8: {exc}")]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError([ConfigProblem(source, line, "(syntax)",
                                         f"{exc.problem or exc.context}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(source, 1, "(syntax)", str(exc))]) from None
    values: dict[str, Any] = {}
    conns: dict[str, ConnConfig] = {}
    if root is not None:
        _walk_root(col, root, values, conns)
    if col.problems:
        raise ConfigError(sorted(col.problems, key=lambda p: p.line))
    cfg = Config(source=source, connections=conns)
    state_dir = values.pop("state_dir", None)
    if state_dir:
        cfg = Config.for_state_dir(state_dir, cfg)
    for k in ("spool_dir", "api_socket"):
        if k in values:
            values[k] = Path(values[k])
    return replace(cfg, **values)


def _walk_root(col: F.Collector, root: yaml.Node, values: dict[str, Any],
               conns: dict[str, ConnConfig]) -> None:
    for k, v in col.mapping(root, ""):
        key = k.value
        if key == "connections":
            _walk_connections(col, v, conns)
        elif key == "node":
            values["node"] = _walk_node(col, v, k)
        elif key in SPEC and key != "":
            for k2, v2 in col.mapping(v, key):
                _set(col, SPEC[key], k2, v2, key, values)
        else:
            _set(col, SPEC[""], k, v, "", values)


def _set(col: F.Collector, spec: dict, k: yaml.Node, v: yaml.Node, section: str,
         values: dict[str, Any]) -> None:
    name = F.join(section, k.value)
    if k.value not in spec:
        known = ", ".join(sorted(spec)) if section else ", ".join(
            sorted([*spec, "connections", "node", *[s for s in SPEC if s]]))
        col.add(k, name, f"unknown key (known: {known})")
        return
    attr, check = spec[k.value]
    try:
        values[attr] = check(v)
    except ValueError as exc:
        col.add(v, name, str(exc))


def _walk_connections(col: F.Collector, node: yaml.Node, conns: dict[str, ConnConfig]) -> None:
    for k, v in col.mapping(node, "connections"):
        name = k.value
        fld = f"connections.{name}"
        if not F.CONN_NAME.fullmatch(name):
            col.add(k, fld, "connection names are letters, digits, '.', '_', '-' (max 64)")
            continue
        kw: dict[str, Any] = {}
        if not (isinstance(v, yaml.ScalarNode) and v.value in ("", "~", "null")):
            for k2, v2 in col.mapping(v, fld):
                sub = f"{fld}.{k2.value}"
                if k2.value not in CONN_SPEC:
                    col.add(k2, sub, f"unknown key (known: {', '.join(sorted(CONN_SPEC))})")
                elif k2.value == "allowed-prefixes":
                    kw["allowed_prefixes"] = _prefixes(col, v2, sub)
                else:
                    try:
                        kw[k2.value.replace("-", "_")] = CONN_SPEC[k2.value](v2)
                    except ValueError as exc:
                        col.add(v2, sub, str(exc))
        conns[name] = ConnConfig(name=name, **kw)


def _prefixes(col: F.Collector, node: yaml.Node, fld: str) -> dict[str, tuple[str, ...]]:
    import ipaddress
    out: dict[str, tuple[str, ...]] = {}
    for k, v in col.mapping(node, fld):
        try:
            items = F.str_list(v)
            for p in items:
                ipaddress.ip_network(p, strict=False)
            out[k.value] = items
        except ValueError as exc:
            col.add(v, f"{fld}.{k.value}", str(exc))
    return out


# ---- node: what render needs -------------------------------------------------------

NODE_SPEC: dict[str, tuple[str, Callable[[yaml.Node], Any]]] = {
    "role": ("role", F.choice("hub", "spoke")), "nbma": ("nbma", F.ip_or_auto),
    "underlay": ("underlay", F.ifname), "profile": ("profile", F.conn_name),
    "nhs": ("nhs", F.ip_list), "hook": ("hook", F.path),
    "ike": ("ike", F.str_), "esp": ("esp", F.str_),
}
NODE_SUB: dict[str, dict[str, tuple[str, Callable[[yaml.Node], Any]]]] = {
    "gre": {"interface": ("gre_interface", F.ifname), "address": ("gre_address", F.ip),
            "key": ("gre_key", F.int_field(0, 2**32 - 1)),
            "network-id": ("network_id", F.int_field(1, 2**32 - 1)),
            "holdtime": ("holdtime", F.int_field(0, 65535))},
    "auth": {"method": ("auth", F.choice("cert", "psk")), "cert": ("cert", F.str_),
             "ca": ("ca", F.str_), "peer-id": ("peer_id", F.str_), "psk": ("psk", F.str_)},
    "liveness": {"dpddelay": ("dpddelay", F.int_field(0, 86400)),
                 "retransmit-timeout": ("retransmit_timeout", F.int_field(1, 86400))},
    "lifetimes": {"ike": ("ike_lifetime", F.int_field(0, 86400)),
                  "child": ("child_lifetime", F.int_field(0, 86400)),
                  "rekey-margin": ("rekey_margin", F.int_field(0, 86400))},
}


def _walk_node(col: F.Collector, node: yaml.Node, key: yaml.Node) -> NodeConfig | None:
    values: dict[str, Any] = {"line": key.start_mark.line + 1}
    present: set[str] = set()
    before = len(col.problems)
    for k, v in col.mapping(node, "node"):
        present.add(k.value)
        if k.value in NODE_SUB:
            for k2, v2 in col.mapping(v, f"node.{k.value}"):
                present.add(f"{k.value}.{k2.value}")
                _set(col, NODE_SUB[k.value], k2, v2, f"node.{k.value}", values)
        elif k.value in NODE_SPEC:
            _set(col, NODE_SPEC, k, v, "node", values)
        else:
            col.add(k, f"node.{k.value}", "unknown key (known: " +
                    ", ".join(sorted([*NODE_SPEC, *NODE_SUB])) + ")")
    cfg = NodeConfig(**values)
    line = key
    if "role" not in present:
        col.add(line, "node.role", "missing: hub or spoke")
    if "nbma" not in present:
        col.add(line, "node.nbma", "missing: this node's NBMA (underlay) address, or auto")
    if "gre.address" not in present:
        col.add(line, "node.gre.address", "missing: this node's GRE (overlay) address")
    if cfg.role == "spoke" and not cfg.nhs:
        col.add(line, "node.nhs", "a spoke needs at least one hub NBMA address")
    if cfg.auth == "cert" and not cfg.cert:
        col.add(line, "node.auth.cert", "certificate auth needs the NSS nickname of our cert")
    if cfg.auth == "psk" and not cfg.psk:
        col.add(line, "node.auth.psk", "PSK auth needs psk (quote it)")
    for life, name in ((cfg.child_lifetime, "child"), (cfg.ike_lifetime, "ike")):
        if life and cfg.rekey_margin and cfg.rekey_margin >= life:
            col.add(line, "node.lifetimes.rekey-margin", f"{cfg.rekey_margin} s is not shorter "
                    f"than the {name} lifetime ({life} s): every SA would be rekeyed at once")
    return cfg if len(col.problems) == before else None

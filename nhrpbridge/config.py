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

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import ConfigError, ConfigProblem

__all__ = ["Config", "ConnConfig", "load_config", "DEFAULT_CONFIG", "MAX_PROBLEMS"]

DEFAULT_CONFIG = "/etc/nhrpbridge/nhrpbridge.yaml"
MAX_PROBLEMS = 50
LOG_LEVELS = ("debug", "info", "warning", "error")
POLICIES = ("gre-ip-in-cert-san", "gre-prefix-by-peer-id", "any-authenticated", "deny")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


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
    nbma: str = ""                       # local NBMA address (left=)
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
    libreswan_version: str = "auto"
    vici_socket: str = ""
    vici_mode: int = 0o660
    vici_group: str = ""
    event_socket: str = ""
    cert_store: str = ""
    nss_dir: str = "/var/lib/ipsec/nss"
    connections: dict[str, ConnConfig] = field(default_factory=dict)
    node: NodeConfig | None = None

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @classmethod
    def for_state_dir(cls, state_dir: str | Path, base: "Config | None" = None) -> "Config":
        """Every runtime path under DIR (the `serve --state-dir` contract)."""
        d = Path(state_dir).resolve()
        return replace(base or cls(), state_dir=d, spool_dir=d / "spool",
                       api_socket=d / "api.sock")


# ---- field checkers: (node, text) -> value or raise ValueError(message) ----------

def _text(node: yaml.Node) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise ValueError("expected a single value")
    return node.value


def _str(node: yaml.Node) -> str:
    value = _text(node)
    if "\n" in value or "\0" in value:
        raise ValueError("must not contain a newline")
    return value


def _path(node: yaml.Node) -> str:
    value = _str(node)
    if value and not value.startswith("/"):
        raise ValueError(f"{value!r} must be an absolute path")
    return value


def _socket_path(node: yaml.Node) -> str:
    value = _path(node)
    if len(value.encode()) > 107:
        raise ValueError("unix socket paths must be shorter than 108 bytes")
    return value


def _number(node: yaml.Node) -> float:
    try:
        value = float(_text(node))
    except ValueError:
        raise ValueError(f"{_text(node)!r} is not a number") from None
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _mode(node: yaml.Node) -> int:
    text = _text(node)
    if not re.fullmatch(r"0?[0-7]{3}", text):
        raise ValueError(f"{text!r} is not an octal file mode like \"0660\"")
    mode = int(text, 8)
    if mode & 0o007:
        raise ValueError("sockets must not be accessible to others (last digit 0)")
    return mode


def _choice(*choices: str) -> Callable[[yaml.Node], str]:
    def check(node: yaml.Node) -> str:
        value = _text(node)
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value
    return check


def _str_list(node: yaml.Node) -> tuple[str, ...]:
    if isinstance(node, yaml.ScalarNode):
        return (_str(node),)
    if not isinstance(node, yaml.SequenceNode):
        raise ValueError("expected a list")
    return tuple(_str(n) for n in node.value)


# section -> key -> (config attribute, checker)
SPEC: dict[str, dict[str, tuple[str, Callable[[yaml.Node], Any]]]] = {
    "": {"state-dir": ("state_dir", _path), "spool-dir": ("spool_dir", _path),
         "log-level": ("log_level", _choice(*LOG_LEVELS))},
    "api": {"socket": ("api_socket", _socket_path), "mode": ("api_mode", _mode),
            "group": ("api_group", _str), "control-groups": ("control_groups", _str_list)},
    "pluto": {"ipsec": ("ipsec", _str), "rundir": ("pluto_rundir", _path),
              "ctlsocket": ("pluto_ctlsocket", _path), "ipsec-conf": ("ipsec_conf", _path),
              "log": ("pluto_log", _str), "log-position-file": ("log_position_file", _path),
              "reconcile-interval": ("reconcile_interval", _number),
              "whack-timeout": ("whack_timeout", _number),
              "initiate-timeout": ("initiate_timeout", _number),
              "initiate-retry": ("initiate_retry", _number),
              "per-peer-idle": ("per_peer_idle", _number),
              "version": ("libreswan_version", _choice("auto", "4", "5")),
              "nss-dir": ("nss_dir", _path)},
    "vici": {"socket": ("vici_socket", _socket_path), "mode": ("vici_mode", _mode),
             "group": ("vici_group", _str)},
    "nhrp-events": {"socket": ("event_socket", _socket_path), "cert-store": ("cert_store", _path)},
}
CONN_SPEC = {"per-peer": _choice("auto", "yes", "no"), "policy": _choice(*POLICIES),
             "allowed-prefixes": None}


class _Collector:
    def __init__(self, source: str):
        self.source = source
        self.problems: list[ConfigProblem] = []

    def add(self, node: yaml.Node | None, fld: str, msg: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(ConfigProblem(self.source, line, fld or "(top)", msg))

    def mapping(self, node: yaml.Node, fld: str) -> list[tuple[yaml.Node, yaml.Node]]:
        """Key/value node pairs of a mapping; reports duplicates and non-mappings."""
        if not isinstance(node, yaml.MappingNode):
            self.add(node, fld, "expected a mapping (key: value lines)")
            return []
        seen: set[str] = set()
        pairs = []
        for k, v in node.value:
            name = k.value if isinstance(k, yaml.ScalarNode) else "?"
            if name in seen:
                self.add(k, _join(fld, name), "duplicate key")
                continue
            seen.add(name)
            pairs.append((k, v))
        return pairs


def _join(a: str, b: str) -> str:
    return f"{a}.{b}" if a else b


def load_config(path: str | Path, text: str | None = None) -> Config:
    """Read and check one YAML config file.

    Raises:
        ConfigError: with every problem found (file, line, field, message).
    """
    source = str(path)
    col = _Collector(source)
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


def _walk_root(col: _Collector, root: yaml.Node, values: dict[str, Any],
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


def _set(col: _Collector, spec: dict, k: yaml.Node, v: yaml.Node, section: str,
         values: dict[str, Any]) -> None:
    name = _join(section, k.value)
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


def _walk_connections(col: _Collector, node: yaml.Node, conns: dict[str, ConnConfig]) -> None:
    for k, v in col.mapping(node, "connections"):
        name = k.value
        fld = f"connections.{name}"
        if not _NAME_RE.fullmatch(name):
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


def _prefixes(col: _Collector, node: yaml.Node, fld: str) -> dict[str, tuple[str, ...]]:
    import ipaddress
    out: dict[str, tuple[str, ...]] = {}
    for k, v in col.mapping(node, fld):
        try:
            items = _str_list(v)
            for p in items:
                ipaddress.ip_network(p, strict=False)
            out[k.value] = items
        except ValueError as exc:
            col.add(v, f"{fld}.{k.value}", str(exc))
    return out


# ---- node: what render needs -------------------------------------------------------

def _ip(node: yaml.Node) -> str:
    import ipaddress
    text = _str(node)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def _ip_list(node: yaml.Node) -> tuple[str, ...]:
    import ipaddress
    out = []
    for text in _str_list(node):
        try:
            out.append(str(ipaddress.ip_address(text)))
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address") from None
    return tuple(out)


def _int_field(lo: int, hi: int) -> Callable[[yaml.Node], int]:
    def check(node: yaml.Node) -> int:
        text = _text(node)
        if not re.fullmatch(r"\d+", text) or not lo <= int(text) <= hi:
            raise ValueError(f"{text!r} is not a whole number from {lo} to {hi}")
        return int(text)
    return check


def _ifname(node: yaml.Node) -> str:
    text = _str(node)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", text):
        raise ValueError(f"{text!r} is not an interface name")
    return text


def _conn_name(node: yaml.Node) -> str:
    text = _str(node)
    if not _NAME_RE.fullmatch(text):
        raise ValueError(f"{text!r}: letters, digits, '.', '_', '-' (max 64), no leading '-'")
    return text


NODE_SPEC: dict[str, tuple[str, Callable[[yaml.Node], Any]]] = {
    "role": ("role", _choice("hub", "spoke")), "nbma": ("nbma", _ip),
    "underlay": ("underlay", _ifname), "profile": ("profile", _conn_name),
    "nhs": ("nhs", _ip_list), "hook": ("hook", _path),
    "ike": ("ike", _str), "esp": ("esp", _str),
}
NODE_SUB: dict[str, dict[str, tuple[str, Callable[[yaml.Node], Any]]]] = {
    "gre": {"interface": ("gre_interface", _ifname), "address": ("gre_address", _ip),
            "key": ("gre_key", _int_field(0, 2**32 - 1)),
            "network-id": ("network_id", _int_field(1, 2**32 - 1)),
            "holdtime": ("holdtime", _int_field(0, 65535))},
    "auth": {"method": ("auth", _choice("cert", "psk")), "cert": ("cert", _str),
             "ca": ("ca", _str), "peer-id": ("peer_id", _str), "psk": ("psk", _str)},
    "liveness": {"dpddelay": ("dpddelay", _int_field(0, 86400)),
                 "retransmit-timeout": ("retransmit_timeout", _int_field(1, 86400))},
}


def _walk_node(col: _Collector, node: yaml.Node, key: yaml.Node) -> NodeConfig | None:
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
        col.add(line, "node.nbma", "missing: this node's NBMA (underlay) address")
    if "gre.address" not in present:
        col.add(line, "node.gre.address", "missing: this node's GRE (overlay) address")
    if cfg.role == "spoke" and not cfg.nhs:
        col.add(line, "node.nhs", "a spoke needs at least one hub NBMA address")
    if cfg.auth == "cert" and not cfg.cert:
        col.add(line, "node.auth.cert", "certificate auth needs the NSS nickname of our cert")
    if cfg.auth == "psk" and not cfg.psk:
        col.add(line, "node.auth.psk", "PSK auth needs psk (quote it)")
    return cfg if len(col.problems) == before else None

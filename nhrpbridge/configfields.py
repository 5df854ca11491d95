"""Checkers for config fields: (YAML node) -> value, or ValueError(message for the operator).

Each takes the scalar's source text (YAML 1.1 would turn `no` into False and `0123`
into 83), so what the operator wrote is what is checked; the Collector gathers every
problem with its line instead of stopping at the first.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

import yaml

from .errors import ConfigProblem

__all__ = [
    "CONN_NAME", "LOG_LEVELS", "MAX_PROBLEMS", "Collector", "choice", "conn_name", "ifname",
    "int_field", "ip", "ip_list", "join", "listen_address", "mode", "number", "path", "scalar", "socket_path",
    "str_", "str_list",
]

MAX_PROBLEMS = 50
LOG_LEVELS = ("debug", "info", "warning", "error")
# a libreswan conn name nhrpbridge accepts (also where it reaches whack and ipsec.conf)
CONN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


# ---- field checkers: (node, text) -> value or raise ValueError(message) ----------

def scalar(node: yaml.Node) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise ValueError("expected a single value")
    return node.value


def str_(node: yaml.Node) -> str:
    value = scalar(node)
    if "\n" in value or "\0" in value:
        raise ValueError("must not contain a newline")
    return value


def path(node: yaml.Node) -> str:
    value = str_(node)
    if value and not value.startswith("/"):
        raise ValueError(f"{value!r} must be an absolute path")
    return value


def socket_path(node: yaml.Node) -> str:
    value = path(node)
    if len(value.encode()) > 107:
        raise ValueError("unix socket paths must be shorter than 108 bytes")
    return value


def number(node: yaml.Node) -> float:
    try:
        value = float(scalar(node))
    except ValueError:
        raise ValueError(f"{scalar(node)!r} is not a number") from None
    if value < 0:
        raise ValueError("must not be negative")
    return value


def mode(node: yaml.Node) -> int:
    text = scalar(node)
    if not re.fullmatch(r"0?[0-7]{3}", text):
        raise ValueError(f"{text!r} is not an octal file mode like \"0660\"")
    mode = int(text, 8)
    if mode & 0o007:
        raise ValueError("sockets must not be accessible to others (last digit 0)")
    return mode


def choice(*choices: str) -> Callable[[yaml.Node], str]:
    def check(node: yaml.Node) -> str:
        value = scalar(node)
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value
    return check


def str_list(node: yaml.Node) -> tuple[str, ...]:
    if isinstance(node, yaml.ScalarNode):
        return (str_(node),)
    if not isinstance(node, yaml.SequenceNode):
        raise ValueError("expected a list")
    return tuple(str_(n) for n in node.value)


def ip(node: yaml.Node) -> str:
    text = str_(node)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def ip_or_auto(node: yaml.Node) -> str:
    """An IP address, or `auto`: whatever address the underlay has now (DHCP, PPPoE)."""
    if str_(node) == "auto":
        return "auto"
    try:
        return ip(node)
    except ValueError:
        raise ValueError(f"{str_(node)!r} is neither an IP address nor auto") from None


def ip_list(node: yaml.Node) -> tuple[str, ...]:
    out = []
    for text in str_list(node):
        try:
            out.append(str(ipaddress.ip_address(text)))
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address") from None
    return tuple(out)


def listen_address(node: yaml.Node) -> str:
    """`HOST:PORT` (`[V6]:PORT`) for TCP, or an absolute unix socket path."""
    text = str_(node)
    if text.startswith("/"):
        return socket_path(node)
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r} is neither HOST:PORT (an IP address and a port) nor an "
                         "absolute unix socket path") from None
    if not sep or not re.fullmatch(r"\d{1,5}", port) or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return text


def int_field(lo: int, hi: int) -> Callable[[yaml.Node], int]:
    def check(node: yaml.Node) -> int:
        text = scalar(node)
        if not re.fullmatch(r"\d+", text) or not lo <= int(text) <= hi:
            raise ValueError(f"{text!r} is not a whole number from {lo} to {hi}")
        return int(text)
    return check


def ifname(node: yaml.Node) -> str:
    text = str_(node)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", text):
        raise ValueError(f"{text!r} is not an interface name")
    return text


def conn_name(node: yaml.Node) -> str:
    text = str_(node)
    if not CONN_NAME.fullmatch(text):
        raise ValueError(f"{text!r}: letters, digits, '.', '_', '-' (max 64), no leading '-'")
    return text


class Collector:
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
                self.add(k, join(fld, name), "duplicate key")
                continue
            seen.add(name)
            pairs.append((k, v))
        return pairs


def join(a: str, b: str) -> str:
    return f"{a}.{b}" if a else b

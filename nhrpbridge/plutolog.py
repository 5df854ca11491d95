"""Pure parser for pluto's log (libreswan 4.x and 5.x) and its interpretation.

Strategy:
- `parse_line(text)` turns one line into a `LogLine` or None. It strips the
  optional prefixes (logfile `Nov 30 00:21:51.074335: `, syslog
  `Nov 30 00:21:51 host pluto[123]: `, journald-free whack codes `003 `, and
  `ERROR: `/`warning: `), then the anatomy `"conn"[N] peer #serial: message`
  (4.x and 5.x alike). Lines without a quoted connection or a `#N`
  serial cost one `str.find` and are dropped: pluto logs far more than we use.
- Messages are recognised by a cheap keyword test first and a regex second;
  each kind has both its 4.x and its 5.x wording (§5.3). Unknown lines never
  raise.
- What each line changes is `loginterp.LogInterpreter`'s business.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LogLine", "Notice", "parse_line", "canonical_ip"]

_TIME_LOGFILE = re.compile(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d\.\d+: ")
_TIME_SYSLOG = re.compile(r"^(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\S+) \S+ pluto\[\d+\]: ")
# a peer after the connection name: 4.x `192.0.2.1` / `2001:db8::1`, 5.x IPv6 may come
# bracketed with a port: `[2001:db8::1]:500`
_HEAD = re.compile(
    r'^"(?P<conn>[^"]+)"(?:\[(?P<inst>\d+)\])?'
    r'(?: (?:\.\.\.)?(?:\[(?P<peer6>[0-9a-fA-F:.]+)\](?::\d+)?|(?P<peer>[0-9a-fA-F.:]+)))?'
    r'(?: #(?P<serial>\d+))?: ')
_SERIAL_ONLY = re.compile(r"^#(?P<serial>\d+): ")

_ESTABLISHED = re.compile(r"^(?P<role>initiator|responder) established (?P<what>IKE|Child) SA")
_AUTH_CERT4 = re.compile(r"authenticated peer '(?P<alg>[^']*)' digital signature using peer "
                         r"certificate '(?P<subject>(?:[^']|'(?! issued))*)' issued by CA '(?P<issuer>.*)'$")
_AUTH_CERT5 = re.compile(r"authenticated peer certificate '(?P<subject>(?:[^']|'(?! and ))*)' and "
                         r"(?P<alg>.*?) digital signature issued by '(?P<issuer>.*)'$")
_AUTH_ID = re.compile(r"authenticated peer using authby=(?P<authby>\S+) and (?P<idtype>\S+) '(?P<id>.*)'$")
# raw public keys ("preloaded certificate", 4.x and 5.x word order) and RSA-signature
# logins without a certificate (`using ID_FQDN '@east'`): the quoted value is the peer's ID
_AUTH_RAW = re.compile(r"authenticated peer (?:'(?P<alg>[^']*)' (?:digital )?signature )?using "
                       r"(?:preloaded certificate|(?P<idtype>ID_[A-Z0-9_]+)) "
                       r"'(?P<id>(?:[^']|'(?! and ))*)'(?: and (?P<alg2>.*?) (?:digital )?signature)?")
_USING = re.compile(r"using #(?P<ike>\d+)")
_MODE = re.compile(r"IPsec (?P<mode>transport|tunnel) \[(?P<sel>[^\]]*)\](?: -> \[(?P<sel2>[^\]]*)\])?")
# {ESP=>, {ESP/ESN=>, {ESPinUDP/ESN=> (NAT-T), {ESPinTCP=>, {ESP/TFC/ESN=>, {ESP/IPTFS=>
_SPIS = re.compile(r"\{(?P<proto>ESP|AH)(?P<encap>in(?:UDP|TCP))?(?:/[A-Z]+)*=>0x(?P<out>[0-9a-fA-F]+)"
                   r" <0x(?P<in>[0-9a-fA-F]+)")
_NATD = re.compile(r"NATD=(?:\[(?P<a6>[0-9a-fA-F:.]+)\]|(?P<a4>[0-9.]+)):(?P<port>\d+)")
_REKEYED = re.compile(r"^(?:initiator|responder) rekeyed (?P<what>IKE|Child) SA #(?P<old>\d+)")
_DELETING_STATE = re.compile(r"^deleting state \((?P<state>[A-Z0-9_]+)\)")
_TIMEOUT = re.compile(r"(?P<secs>[\d.]+) second timeout exceeded after (?P<n>\d+) retransmits")
# 4.x `to 192.1.2.23:500`, 5.x `to 192.1.2.23:UDP/500` (also TCP/4500), IPv6 bracketed
_SENT_INIT = re.compile(r"^sent IKE_SA_INIT request to (?:\[(?P<addr6>[0-9a-fA-F:.]+)\]|"
                        r"(?P<addr>[0-9.]+|[0-9a-fA-F:]+)):(?:(?P<transport>UDP|TCP)/)?(?P<port>\d+)")
# an initiation that never got an IKE SA up times out in these states: not a liveness failure
_INIT_STATES = ("IKE_SA_INIT_I", "IKE_AUTH_I", "STATE_V2_PARENT_I1", "STATE_V2_PARENT_I2",
                "STATE_PARENT_I1", "STATE_PARENT_I2", "STATE_V2_IKE_SA_INIT_I", "STATE_V2_IKE_AUTH_I")
_SWITCHED = re.compile(r'^switched to "(?P<conn>[^"]+)"(?:\[(?P<inst>\d+)\])?')
_UPDOWN_FAIL4 = re.compile(r"^(?P<verb>[a-z]+-(?:host|client)(?:-v6)?) command exited with (?P<how>status|signal) (?P<n>\d+)")
_UPDOWN_FAIL5 = re.compile(r'command "(?P<verb>[a-z-]+)": exited with (?P<how>status|signal) (?P<n>\d+)')


@dataclass(frozen=True, slots=True)
class LogLine:
    """One recognised line: who it is about and what happened."""

    kind: str                      # see _classify
    conn: str
    instance: int | None
    peer: str | None
    serial: int | None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Notice:
    """Something the operator should hear about, not an SA change."""

    kind: str                      # liveness-timeout, revival, updown-failed, ...
    conn: str
    peer: str | None
    serial: int | None
    text: str


def _strip_prefix(text: str) -> tuple[str, str, bool]:
    """Remove timestamps, whack codes and severity; return (severity, rest, via syslog)."""
    syslog = False
    if text[:1].isalnum():
        if m := _TIME_LOGFILE.match(text):
            text = text[m.end():]
        elif m := _TIME_SYSLOG.match(text):
            text, syslog = text[m.end():], True
    if len(text) > 4 and text[3] == " " and text[:3].isdigit():
        text = text[4:]
    severity = ""
    if text.startswith("ERROR: "):
        severity, text = "error", text[7:]
    elif text.startswith("warning: "):
        severity, text = "warning", text[9:]
    return severity, text, syslog


def parse_line(text: str) -> LogLine | None:
    """Parse one pluto log line; None if it says nothing we use. Never raises."""
    q = text.find('"')
    if q < 0 and "#" not in text:
        return None
    try:
        severity, rest, syslog = _strip_prefix(text.rstrip("\r\n"))
        m = _HEAD.match(rest)
        if m is None:
            return None
        msg = rest[m.end():]
        inst = m.group("inst")
        serial = m.group("serial")
        kind, data = _classify(msg)
        if kind is None:
            return None
        if severity:
            data["severity"] = severity
        if syslog:
            data["via-syslog"] = True     # anyone can write such a line (logger -t pluto)
        peer = m.group("peer6") or m.group("peer")
        if peer and ":" in peer:
            peer = canonical_ip(peer)
        return LogLine(kind, m.group("conn"), int(inst) if inst else None, peer,
                       int(serial) if serial else None, data)
    except (ValueError, IndexError):
        return None


def _classify(msg: str) -> tuple[str | None, dict[str, Any]]:
    c = msg[:1]
    if c in "ir" and " established " in msg[:24]:
        return _established(msg)
    if c in "ir" and " rekeyed " in msg[:20]:
        m = _REKEYED.match(msg)
        if m:
            kind = "ike-rekeyed" if m.group("what") == "IKE" else "child-rekeyed"
            data: dict[str, Any] = {"old": int(m.group("old"))}
            if kind == "child-rekeyed":
                data.update(_child_details(msg))
            return kind, data
    if c == "d":
        if msg.startswith("deleting state ("):
            m = _DELETING_STATE.match(msg)
            state = m.group("state") if m else ""
            what = "child-deleted" if "CHILD" in state or state.endswith("_IPSEC_SA") else "ike-deleted"
            return what, {"state": state, "notify": "NOT sending" not in msg}
        if msg.startswith("deleting IKE SA"):
            return "ike-deleted", {"revive": "remain up" in msg}
        if msg.startswith("deleting Child SA") or msg.startswith("deleting established Child SA"):
            return "child-deleted", {}
        if msg.startswith("deleting connection instance"):
            return "instance-deleted", {}
    if msg.startswith("sent INFORMATIONAL request to delete established Child SA"):
        return "child-deleted", {}
    if msg.startswith("ESP traffic information") or msg.startswith("AH traffic information"):
        return "child-deleted", {}
    if "second timeout exceeded" in msg:
        m = _TIMEOUT.search(msg)
        state = msg.split(":", 1)[0]
        kind = "initiate-timeout" if state in _INIT_STATES else "liveness-timeout"
        return kind, {"seconds": float(m.group("secs")) if m else None, "text": msg}
    if "supposed to remain up" in msg or (c == "r" and msg.startswith("reviving connection which")):
        return "revival", {"text": msg}
    if msg.startswith("liveness action"):
        return "liveness-action", {"text": msg}
    if c == "s":
        if msg.startswith("sent IKE_SA_INIT request to "):
            m = _SENT_INIT.match(msg)
            if m:
                addr = m.group("addr6") or m.group("addr")
                return "ike-init", {"addr": canonical_ip(addr), "port": int(m.group("port")),
                                    "transport": m.group("transport") or "UDP"}
        elif msg.startswith("switched to "):
            m = _SWITCHED.match(msg)
            if m:
                return "switched", {"to-conn": m.group("conn"),
                                    "to-instance": int(m.group("inst")) if m.group("inst") else None}
    if "TS_UNACCEPTABLE" in msg:
        return "ts-unacceptable", {"text": msg, "nat-t": ":4500 " in msg}
    if "exited with" in msg:
        m = _UPDOWN_FAIL4.match(msg) or _UPDOWN_FAIL5.search(msg)
        if m:
            return "updown-failed", {"verb": m.group("verb"), "how": m.group("how"),
                                     "status": int(m.group("n")), "text": msg}
    return None, {}


def _established(msg: str) -> tuple[str | None, dict[str, Any]]:
    m = _ESTABLISHED.match(msg)
    if m is None:
        return None, {}
    data: dict[str, Any] = {"initiator": m.group("role") == "initiator"}
    if m.group("what") == "IKE":
        if a := _AUTH_CERT4.search(msg) or _AUTH_CERT5.search(msg):
            data.update(auth="cert", subject=a.group("subject"), issuer=a.group("issuer"),
                        signature=a.group("alg"))
        elif a := _AUTH_ID.search(msg):
            data.update(auth=a.group("authby"), id=a.group("id"), idtype=a.group("idtype"))
        elif a := _AUTH_RAW.search(msg):
            data.update(auth="rsasig" if a.group("idtype") else "raw-key", id=a.group("id"),
                        idtype=a.group("idtype") or "", signature=a.group("alg") or a.group("alg2"))
        return "ike-established", data
    data.update(_child_details(msg))
    return "child-established", data


def _child_details(msg: str) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if u := _USING.search(msg):
        data["ike"] = int(u.group("ike"))
    if s := _SPIS.search(msg):
        data.update(protocol=s.group("proto"), spi_out=int(s.group("out"), 16),
                    spi_in=int(s.group("in"), 16))
        if s.group("encap"):
            data["encap"] = s.group("encap")[2:]
    if n := _NATD.search(msg):
        data["natd"] = (canonical_ip(n.group("a6") or n.group("a4")), int(n.group("port")))
    if md := _MODE.search(msg):
        data["mode"] = md.group("mode").upper()
        local, remote = _selector_hosts(md.group("sel"), md.group("sel2"))
        if local:
            data["local-ts"], data["remote-ts"] = local, remote
    return data


def _selector_hosts(sel: str, sel2: str | None) -> tuple[str | None, str | None]:
    """First address of each side: 4.x `a-b:p-p 47` -> `c-d...`, 5.x `a/32/GRE/0===b/32`."""
    if sel2 is not None:
        left, right = sel, sel2
    elif "===" in sel:
        left, right = sel.split("===", 1)
    else:
        return None, None

    def first(s: str) -> str | None:
        token = s.strip().split(" ", 1)[0]
        if token.count(":") == 1 and "-" in token:      # 4.x IPv4 range:port
            token = token.split(":", 1)[0]
        token = token.split("/", 1)[0].split("-", 1)[0]
        try:
            return str(ipaddress.ip_address(token))
        except ValueError:
            return None
    return first(left), first(right)


def canonical_ip(addr: str) -> str:
    """An address as ipaddress prints it (IPv6 compressed), so log, hook and whack name a
    peer alike; the text itself if it is not an address."""
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        return addr

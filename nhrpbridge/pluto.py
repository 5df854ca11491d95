"""Talking to pluto through the installed `ipsec whack` (never its socket, never a shell).

Strategy:
- whack's wire format is a version-locked C struct (whack and pluto must be the same build), so
  we exec the matching binary. Every value we pass is validated first (connection
  names, IP literals, serials) and goes as its own argv element.
- Output parsers are pure functions over text, tested on golden 4.x and 5.x output:
  `parse_showstates`, `parse_trafficstatus`, `parse_version`; `pluto_view` turns
  them into the Reconcile change the SA database converges to.
- I/O is one injected coroutine `run(argv, timeout) -> Result`, so tests hand in a
  recording stand-in instead of patching subprocess (httpx MockTransport style).
- Exit codes (4.10 `enum rc_type`): 21 unknown name, 24 not listening yet (seen in
  the lab right after a pluto restart), 25 could not route, 29 not a template,
  33 whack problem / pluto not running.
"""
from __future__ import annotations

import asyncio
import ipaddress
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from .configfields import CONN_NAME
from .errors import ErrorCode, PlutoError
from .plutolog import canonical_ip
from .sa import ChildUp, IkeUp, Reconcile
from .updown import peer_id_of, peer_suffix, profile_of

__all__ = [
    "Result", "Runner", "subprocess_runner", "Whack", "WHACK_DIRS", "find_whack", "PlutoState",
    "Traffic",
    "parse_version", "parse_showstates", "parse_trafficstatus", "pluto_view",
    "check_conn_name", "check_ip", "per_peer_name", "error_for", "reply_code",
]



@dataclass(frozen=True, slots=True)
class Result:
    rc: int
    stdout: str
    stderr: str


Runner = Callable[[list[str], float], Awaitable[Result]]


async def subprocess_runner(argv: list[str], timeout: float) -> Result:
    """Run argv (no shell), capture output, kill it at the timeout."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        raise PlutoError(f"{argv[0]}: not found (is libreswan installed?)", ErrorCode.PLUTO_MISSING) from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise PlutoError(f"{' '.join(argv[:4])}... did not answer within {timeout:g} s",
                         ErrorCode.TIMEOUT) from None
    return Result(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))


# ---- validation ----------------------------------------------------------------

def check_conn_name(name: str) -> str:
    """Connection names: letters, digits, '.', '_', '-'; never a leading '-'."""
    if not isinstance(name, str) or not CONN_NAME.fullmatch(name):
        raise PlutoError(f"invalid connection name {name!r}", ErrorCode.BAD_REQUEST)
    return name


def check_ip(addr: str) -> str:
    """An IP address in canonical form, else PlutoError.

    Only the form ipaddress prints is accepted: no IPv6 scope id (`fe80::1%eth0` would
    carry any text, newlines included, into peers.conf), no leading zeros, no spaces.
    """
    try:
        ip = ipaddress.ip_address(addr)
    except (ValueError, TypeError):
        raise PlutoError(f"invalid IP address {addr!r}", ErrorCode.BAD_REQUEST) from None
    if "%" in addr or str(ip) != addr:
        raise PlutoError(f"IP address {addr!r} is not in canonical form ({str(ip).split('%')[0]!r}"
                         " without a scope id)", ErrorCode.BAD_REQUEST)
    return addr


def per_peer_name(profile: str, remote: str) -> str:
    return f"{profile}-{peer_suffix(remote)}"


def reply_code(result: Result) -> int:
    """The exit status whack *should* have had.

    With --asynchronous, 4.10 exits 0 even when pluto answered `021 no connection
    named "x"` (observed: rc 0 with, rc 21 without --asynchronous), so the numeric
    reply codes in the output are the truth; 5.x prints no codes, so its wording is
    checked too.
    """
    if result.rc != 0:
        return result.rc
    for line in result.stdout.splitlines():
        m = re.match(r"^(\d{3}) ", line)
        if m and 20 <= int(m.group(1)) < 100:
            return int(m.group(1))
        if line.startswith("no connection named "):
            return 21
    return 0


def error_for(result: Result, what: str) -> PlutoError:
    """Map a failed whack call to an API error."""
    text = (result.stdout + result.stderr).strip()
    last = text.splitlines()[-1] if text else ""
    last = re.sub(r"^\d{3} ", "", last)
    rc = reply_code(result)
    # 24 (RC_DEAF): pluto runs but is not listening yet ("need --listen before --initiate")
    code = {21: ErrorCode.UNKNOWN_CONNECTION, 24: ErrorCode.PLUTO_NOT_READY, 25: ErrorCode.COULD_NOT_ROUTE,
            29: ErrorCode.NOT_A_TEMPLATE}.get(rc)
    if rc == 33 or "not running" in text:
        code = ErrorCode.PLUTO_NOT_RUNNING if "not running" in text else ErrorCode.WHACK_ERROR
    return PlutoError(f"{what} failed (rc {rc}): {last or 'no output'}", code or ErrorCode.PLUTO_ERROR, rc)


# ---- pure parsers ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PlutoState:
    serial: int
    conn: str
    instance: int | None
    peer: str | None
    port: int | None
    name: str                      # STATE_V2_ESTABLISHED_IKE_SA, ESTABLISHED_CHILD_SA, ...
    description: str
    is_child: bool
    established: bool
    ike_serial: int | None = None
    spi_out: int = 0
    spi_in: int = 0
    local: str | None = None


@dataclass(frozen=True, slots=True)
class Traffic:
    serial: int
    conn: str
    instance: int | None
    peer: str | None
    type: str
    add_time: int
    remote_id: str


def parse_version(text: str) -> tuple[int, int]:
    """`Libreswan 4.10` / `Libreswan U5.2/K6.1` -> (4, 10)."""
    m = re.search(r"Libreswan\s+U?(\d+)\.(\d+)", text)
    if not m:
        raise PlutoError(f"cannot read the libreswan version from {text.strip()[:80]!r}",
                         ErrorCode.PLUTO_ERROR)
    return int(m.group(1)), int(m.group(2))


# the peer: `"conn":500` (4.x permanent conn: port only), `192.1.2.23:500`, `192.1.2.23` (no port), IPv6 `[2001:db8::23]:500` (5.x) or
# bare `2001:db8::23` (no port can follow an unbracketed IPv6 address)
_PEER = (r'(?::(?P<port0>\d+))?(?: (?:\.\.\.)?(?:\[(?P<peer6>[0-9a-fA-F:.]+)\](?::(?P<port6>\d+))?'
         r'|(?P<peer>[0-9.]+)(?::(?P<port>\d+))?|(?P<peerv6>[0-9a-fA-F]*:[0-9a-fA-F:.]*)))?')
_STATE = re.compile(
    r'^(?:\d{3} )?#(?P<serial>\d+): "(?P<conn>[^"]+)"(?:\[(?P<inst>\d+)\])?' + _PEER +
    r' (?P<rest>.*)$')
# an SA: `esp.SPI@addr` for IPv4, `esp:SPI@addr` for IPv6 (libreswan's said format)
_SPI = re.compile(r"\b(?P<proto>esp|ah|comp|tun)[.:](?P<spi>[0-9a-fA-F]+)@(?P<addr>[0-9a-fA-F.:]+)")
_IKE_OF = re.compile(r"(?:IKE SA|isakmp|parent) ?#(?P<ike>\d+)")


def parse_showstates(text: str) -> list[PlutoState]:
    """`whack --showstates` (4.x `000 #1: ...`, 5.x without the code) -> states."""
    states: dict[int, PlutoState] = {}
    spis: dict[int, list[tuple[int, str]]] = {}
    for raw in text.splitlines():
        m = _STATE.match(raw.strip())
        if m is None:
            continue
        serial = int(m.group("serial"))
        rest = m.group("rest")
        found = _SPI.findall(rest)
        if found:                          # the SPI line: `esp.SPI@addr esp.SPI@addr ...`
            spis[serial] = [(int(spi, 16), canonical_ip(addr)) for proto, spi, addr in found
                            if proto in ("esp", "ah")]
            continue
        head = rest.split(";", 1)[0]
        name, _, desc = head.partition(" (")
        desc = desc.rstrip(")")
        if not name.isupper() or "_" not in name:      # 5.4: "established IKE SA; ..."
            name, desc = head.strip(), head.strip()
        low = (name + " " + desc).lower()
        is_child = "child" in low or "ipsec" in low
        ike = _IKE_OF.search(rest) if is_child else None
        peer = m.group("peer") or m.group("peer6") or m.group("peerv6")
        port = m.group("port") or m.group("port6") or m.group("port0")
        states[serial] = PlutoState(
            serial=serial, conn=m.group("conn"),
            instance=int(m.group("inst")) if m.group("inst") else None,
            peer=canonical_ip(peer) if peer else None, port=int(port) if port else None,
            name=name, description=desc, is_child=is_child,
            established="established" in low, ike_serial=int(ike.group("ike")) if ike else None)
    out = []
    for serial, st in states.items():
        pair = spis.get(serial)
        if pair and len(pair) >= 2:
            (s1, a1), (s2, a2) = pair[0], pair[1]
            # the SA whose destination is the peer is outbound; without a known
            # peer we rely on pluto printing the outbound SA first [unverified]
            if st.peer and a2 == st.peer and a1 != st.peer:
                (s1, a1), (s2, a2) = (s2, a2), (s1, a1)
            st = replace(st, spi_out=s1, spi_in=s2, peer=st.peer or a1, local=a2)
        out.append(st)
    return out




_TRAFFIC = re.compile(
    r'^(?:\d{3} )?#(?P<serial>\d+): "(?P<conn>[^"]+)"(?:\[(?P<inst>\d+)\])?'
    r'(?: (?:\[(?P<peer6>[0-9a-fA-F:.]+)\](?::\d+)?|(?P<peer>[0-9.]+)(?::\d+)?'
    r'|(?P<peerv6>[0-9a-fA-F]*:[0-9a-fA-F:.]*)))?, (?:username=[^,]*, )?type=(?P<type>\w+)[^,]*,'
    r' add_time=(?P<add>\d+),.*?id=\'(?P<id>.*)\'(?:, lease=.*)?$')


def parse_trafficstatus(text: str) -> list[Traffic]:
    """`whack --trafficstatus` -> one Traffic per installed Child SA."""
    out = []
    for raw in text.splitlines():
        m = _TRAFFIC.match(raw.strip())
        if m:
            out.append(Traffic(int(m.group("serial")), m.group("conn"),
                               int(m.group("inst")) if m.group("inst") else None,
                               canonical_ip(peer) if (peer := m.group("peer") or m.group("peer6")
                                                     or m.group("peerv6")) else None,
                               m.group("type"), int(m.group("add")),
                               m.group("id")))
    return out


def pluto_view(states: list[PlutoState], traffic: list[Traffic],
               local_hint: dict[str, str] | None = None,
               peer_hint: dict[str, str] | None = None) -> Reconcile:
    """pluto's own truth as the change the SA database converges to.

    Child SAs are those whack lists in --trafficstatus (installed), enriched with
    the SPIs and addresses of --showstates; IKE SAs are the established IKE states.
    `local_hint` maps conn name -> local address for states that do not show it;
    `peer_hint` conn name -> peer address, for a permanent (per-peer) conn's Child SA
    that --trafficstatus lists without an address and the earlier --showstates did not
    list at all: a rekey between the two calls (the lab saw it drop the new Child SA
    while the old one was gone, and flap the link).
    """
    local_hint, peer_hint = local_hint or {}, peer_hint or {}
    by_serial = {s.serial: s for s in states}
    # a permanent conn prints no peer on its IKE state; its children's SPI lines do
    child_peer = {s.ike_serial: s.peer for s in states if s.is_child and s.peer}
    ids = {by_serial[t.serial].ike_serial: t.remote_id for t in traffic
           if t.serial in by_serial and by_serial[t.serial].ike_serial is not None
           and peer_id_of(t.conn, t.remote_id)}
    ikes = []
    for s in states:
        # (and none while its Child SA is being replaced: then the hint, or the IKE SA
        # would look gone and end the held link, sadb rule 5)
        peer = s.peer or child_peer.get(s.serial) or peer_hint.get(s.conn)
        if s.is_child or not s.established or peer is None:
            continue
        ikes.append(IkeUp(conn_name=s.conn, connection=profile_of(s.conn, peer),
                          remote_host=peer, serial=s.serial, instance=s.instance,
                          remote_port=s.port, local_host=local_hint.get(s.conn, ""),
                          remote_id=ids.get(s.serial, "")))
    children = []
    for t in traffic:
        st = by_serial.get(t.serial)
        peer = t.peer or (st.peer if st else None) or peer_hint.get(t.conn)
        local = (st.local if st else None) or local_hint.get(t.conn)
        if peer is None or local is None:
            continue
        ike_serial = st.ike_serial if st else None
        children.append(ChildUp(
            conn_name=t.conn, connection=profile_of(t.conn, peer), local_host=local,
            remote_host=peer, remote_id=peer_id_of(t.conn, t.remote_id),
            spi_in=st.spi_in if st else 0,
            spi_out=st.spi_out if st else 0, protocol=t.type.upper(), source="whack",
            serial=t.serial, ike_serial=ike_serial))
    return Reconcile(ike_sas=tuple(ikes), child_sas=tuple(children))


# ---- the whack command line ----------------------------------------------------

# where distributions and source builds put whack (the `ipsec` command's IPSEC_EXECDIR)
WHACK_DIRS = ("/usr/libexec/ipsec", "/usr/local/libexec/ipsec", "/usr/lib/ipsec")


def find_whack(ipsec: str, dirs: tuple[str, ...] = WHACK_DIRS) -> str:
    """The whack binary to run directly when `ipsec` is the stock command, else "".

    Why: `ipsec whack` starts a 600-line shell script that then execs whack; a
    reconciliation makes two calls. Measured in the lab's one-CPU guest: the four daemons'
    children (nearly all whack through the script) took 120 s of CPU in a 564 s run. An
    operator's own `ipsec` (pluto.ipsec set to a path) is always used as given.
    """
    if ipsec != "ipsec":
        return ""
    for d in dirs:
        path = os.path.join(d, "whack")
        if os.access(path, os.X_OK):
            return path
    return ""


@dataclass
class Whack:
    """argv builders for one installation; `version` picks 4.x or 5.x spelling;
    `binary`, when set, is whack itself (find_whack), run without the `ipsec` script."""

    ipsec: str = "ipsec"
    rundir: str = ""
    ctlsocket: str = ""
    binary: str = ""
    version: tuple[int, int] = (4, 10)
    extra: list[str] = field(default_factory=list)

    def _ctl(self) -> list[str]:
        if self.ctlsocket:
            return ["--ctlsocket", self.ctlsocket]
        if self.rundir:
            return ["--rundir", self.rundir]
        return []

    def whack(self, *args: str) -> list[str]:
        head = [self.binary] if self.binary else [self.ipsec, "whack"]
        return [*head, *self._ctl(), *args]

    def showstates(self) -> list[str]:
        return self.whack("--showstates")

    def trafficstatus(self) -> list[str]:
        return self.whack("--trafficstatus")

    def initiate(self, name: str, remote_host: str | None = None) -> list[str]:
        args = ["--name", check_conn_name(name)]
        if remote_host is not None:
            args += ["--remote-host", check_ip(remote_host)]
        return self.whack(*args, "--initiate", "--asynchronous")

    def addconn(self, config: str, name: str) -> list[str]:
        ctl = self.ctlsocket or (f"{self.rundir}/pluto.ctl" if self.rundir else "")
        return [self.ipsec, "addconn", *(["--ctlsocket", ctl] if ctl else []),
                "--config", config, check_conn_name(name)]

    def listen(self) -> list[str]:
        """Scan the interfaces again: open new local addresses, release the lost ones."""
        return self.whack("--listen")

    def delete_conn(self, name: str) -> list[str]:
        return self.whack("--name", check_conn_name(name), "--delete")

    def terminate_conn(self, name: str) -> list[str]:
        """All SAs of a connection (and its instances); clears UP so nothing revives."""
        verb = "--down" if self.version[0] >= 5 else "--terminate"
        return self.whack("--name", check_conn_name(name), verb)

    def delete_id(self, peer_id: str) -> list[str]:
        """Every IKE SA whose peer ID is `peer_id`, at once: pluto sends its Delete without
        queueing it behind an exchange (both 4.10 and 5.2), unlike `delete_ike`."""
        if not peer_id or len(peer_id) > 1024 or not peer_id.isprintable():
            raise PlutoError(f"invalid peer ID {peer_id!r}", ErrorCode.BAD_REQUEST)
        return self.whack("--deleteid", "--name", peer_id)

    def delete_ike(self, serial: int) -> list[str]:
        """One IKE SA (and its children) by pluto serial."""
        if not isinstance(serial, int) or isinstance(serial, bool) or serial <= 0:
            raise PlutoError(f"invalid state serial {serial!r}", ErrorCode.BAD_REQUEST)
        if self.version[0] >= 5:
            return self.whack("--name", f"#{serial}", "--down")
        return self.whack("--deletestate", str(serial))

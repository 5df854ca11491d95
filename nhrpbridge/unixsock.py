"""Binding unix sockets the careful way, and reading the peer's credentials.

asyncio's create_unix_server would silently unlink a live socket (CPython 3.11
unix_events.py), which for /run/charon.vici means hijacking a running charon. So
we probe first: a socket that answers belongs to somebody else and we refuse;
a stale one (ECONNREFUSED) is removed. Mode and group are set right after bind.
"""
from __future__ import annotations

import grp
import os
import pwd
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass

from .errors import SocketInUse

__all__ = ["PeerCred", "bind_unix", "group_ids", "may_control", "peer_cred", "user_ids"]


@dataclass(frozen=True, slots=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


def bind_unix(path: str, mode: int, group: str = "") -> socket.socket:
    """Return a listening AF_UNIX socket at `path` with `mode` and `group`.

    Raises:
        SocketInUse: a live server answers at `path`.
        KeyError: `group` does not exist.
    """
    if os.path.lexists(path):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketInUse(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            try:                           # stale: nobody listens on it any more
                os.unlink(path)
            except FileNotFoundError:
                pass
        except OSError as exc:
            # EAGAIN (a full accept backlog), a timeout, EACCES...: somebody may well be
            # alive there; taking the path over would run two servers on one socket
            raise SocketInUse(f"{path} may belong to a live server "
                              f"(probe: {exc}); not taking it over") from None
        else:
            raise SocketInUse(f"a live server already answers on {path}")
        finally:
            probe.close()
    gid = grp.getgrnam(group).gr_gid if group else -1
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        # bind under a temporary name, listen, set mode and group, then rename into
        # place: the path appears only when the socket accepts with its final mode
        # (a client that saw the file between bind() and listen() was refused, under
        # load in CI)
        if os.path.lexists(tmp):
            os.unlink(tmp)
        sock.bind(tmp)
        sock.listen(512)
        os.chmod(tmp, mode)
        if gid >= 0:
            os.chown(tmp, -1, gid)
        os.rename(tmp, path)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    return sock


def peer_cred(sock: socket.socket) -> PeerCred:
    """SO_PEERCRED of a connected unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCred(pid, uid, gid)


def group_ids(names: tuple[str, ...] | list[str]) -> frozenset[int]:
    """gids of the named groups; unknown names are ignored (config check warns)."""
    return _ids(names, lambda name: grp.getgrnam(name).gr_gid)


def user_ids(names: tuple[str, ...] | list[str]) -> frozenset[int]:
    """uids of the named users; unknown names are ignored (a host without FRR)."""
    return _ids(names, lambda name: pwd.getpwnam(name).pw_uid)


def _ids(names: tuple[str, ...] | list[str], lookup: Callable[[str], int]) -> frozenset[int]:
    out: set[int] = set()
    for name in names:
        try:
            out.add(lookup(name))
        except KeyError:
            pass
    return frozenset(out)


def may_control(cred: PeerCred, allowed_gids: frozenset[int]) -> bool:
    """Control ops: root, our own uid (an unprivileged --state-dir daemon's owner),
    or a member (primary or supplementary) of an allowed group."""
    if cred.uid in (0, os.getuid()):
        return True
    if cred.gid in allowed_gids:
        return True
    try:
        import pwd
        name = pwd.getpwuid(cred.uid).pw_name
    except KeyError:
        return False
    return any(name in grp.getgrgid(g).gr_mem for g in allowed_gids)

"""Every exception nhrpbridge raises on purpose, and every error code a client can see.

    NhrpBridgeError
      ConfigError              file, line, field, message; `problems` holds all of them
      ProtocolError            not raised itself; `code` is what the client is told
        LocalProtocolError     we built a bad message: a bug on our side
        RemoteProtocolError    the peer sent garbage: reply with an error, maybe close
      RecordError              a spool record that cannot be parsed (kept aside, never lost)
      ControlError             an initiate/terminate/resync that cannot be carried out
        PlutoError             ... because whack or addconn failed, timed out or is missing
      RenderError              a value that cannot be written into ipsec.conf safely
      StateError               a state file this version must not use (written by a newer one)
      SpoolError               a spool others could write into: its records would be forged
      SocketInUse              a live server already answers on a socket path we would bind
      DaemonUnreachable        (clients) no daemon answers on the API socket
      InstallError             `nhrpbridge install`: a file to install is missing, a target
                               cannot be written

Codecs raise only ProtocolError subclasses (the h11 split), so a server can catch
RemoteProtocolError per connection and keep serving everybody else. Errors that reach a
client carry an ErrorCode; docs/api.md lists exactly these (a test checks it).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "ConfigError", "ConfigProblem", "ControlError", "DaemonUnreachable", "ErrorCode", "InstallError",
    "LocalProtocolError", "NhrpBridgeError", "PlutoError", "ProtocolError", "RecordError",
    "RemoteProtocolError", "RenderError", "SocketInUse", "SpoolError", "StateError",
]


class ErrorCode(StrEnum):
    """`error.code` in API replies (and the reason in VICI `errmsg`s)."""

    INVALID_JSON = "invalid-json"
    NOT_AN_OBJECT = "not-an-object"
    UNKNOWN_OP = "unknown-op"
    BAD_REQUEST = "bad-request"
    UNSUPPORTED_VERSION = "unsupported-version"
    PERMISSION_DENIED = "permission-denied"
    LINE_TOO_LONG = "line-too-long"
    INTERNAL_ERROR = "internal-error"
    NOT_SUPPORTED = "not-supported"
    TIMEOUT = "timeout"
    UNKNOWN_SA = "unknown-sa"
    PLUTO_ERROR = "pluto-error"
    PLUTO_MISSING = "pluto-missing"
    PLUTO_NOT_RUNNING = "pluto-not-running"
    PLUTO_NOT_READY = "pluto-not-ready"
    UNKNOWN_CONNECTION = "unknown-connection"
    COULD_NOT_ROUTE = "could-not-route"
    NOT_A_TEMPLATE = "not-a-template"
    WHACK_ERROR = "whack-error"
    BAD_IPSEC_CONF = "bad-ipsec-conf"


class NhrpBridgeError(Exception):
    """Base of all deliberate errors."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem in a config file, printable as FILE:LINE: field: message."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class ConfigError(NhrpBridgeError):
    """A config file has one or more problems; all are in `problems`."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ProtocolError(NhrpBridgeError):
    """A wire-protocol violation; use a subclass. `code` is an ErrorCode where the error
    reaches an API client; the VICI and nhrpd codecs use finer codes of their own
    (`vici-truncated`, ...) for the log."""

    def __init__(self, message: str, code: str = ErrorCode.BAD_REQUEST):
        if type(self) is ProtocolError:
            raise TypeError("raise LocalProtocolError or RemoteProtocolError")
        self.code = code
        super().__init__(message)


class LocalProtocolError(ProtocolError):
    """We tried to encode something the protocol cannot carry."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol, or a well-formed request with bad
    arguments (code bad-request).

    `fatal` is True for framing violations (the stream cannot be resynchronised,
    so the connection must be closed); False for a bad but well-framed message.
    """

    def __init__(self, message: str, code: str = ErrorCode.BAD_REQUEST, fatal: bool = False):
        self.fatal = fatal
        super().__init__(message, code)


class RecordError(NhrpBridgeError):
    """A spool record is not a valid `export -p` dump."""


class ControlError(NhrpBridgeError):
    """A control request (initiate, terminate, resync) cannot be carried out: no pluto
    adapter, bad arguments, no such SA, or the link did not come up in time."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.BAD_REQUEST):
        self.code = code
        super().__init__(message)


class PlutoError(ControlError):
    """A whack/addconn call failed; `rc` is whack's reply code where it gave one."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.PLUTO_ERROR,
                 rc: int | None = None):
        self.rc = rc
        super().__init__(message, code)


class RenderError(NhrpBridgeError):
    """A configuration value cannot be rendered safely."""


class StateError(NhrpBridgeError):
    """The state file was written by a newer nhrpbridge: starting empty would reuse
    uniqueids and forget SAs, so the daemon refuses to start instead."""


class SpoolError(NhrpBridgeError):
    """The spool is a symlink, not owned by root or our own user, or writable by group or
    others: anyone who can write a record there could create or destroy SAs."""


class SocketInUse(NhrpBridgeError):
    """Something live already answers on a socket path (or the path is not a socket):
    taking it over would cut off whoever serves there."""


class DaemonUnreachable(NhrpBridgeError):
    """No daemon answers on the API socket (the CLI exits 3)."""


class InstallError(NhrpBridgeError):
    """A file to install is missing, or a target cannot be written."""

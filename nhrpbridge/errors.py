"""Every exception nhrpbridge raises on purpose.

    NhrpBridgeError
      ConfigError              file, line, field, message; `errors` holds all of them
      ProtocolError            not raised itself
        LocalProtocolError     we built a bad message: a bug on our side
        RemoteProtocolError    the peer sent garbage: reply with an error, maybe close
      RecordError              a spool record that cannot be parsed (kept aside, never lost)
      PlutoError               whack/addconn failed, timed out or is missing
      RenderError              a value that cannot be written into ipsec.conf safely
      StateError               a state file this version must not use (written by a newer one)
      SpoolError               a spool others could write into: its records would be forged

Codecs raise only ProtocolError subclasses (the h11 split), so a server can catch
RemoteProtocolError per connection and keep serving everybody else.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "NhrpBridgeError", "ConfigError", "ConfigProblem", "ProtocolError",
    "LocalProtocolError", "RemoteProtocolError", "RecordError", "PlutoError",
    "RenderError", "StateError", "SpoolError",
]


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
    """A wire-protocol violation; use a subclass."""

    def __init__(self, message: str, code: str = "bad-request"):
        if type(self) is ProtocolError:
            raise TypeError("raise LocalProtocolError or RemoteProtocolError")
        self.code = code
        super().__init__(message)


class LocalProtocolError(ProtocolError):
    """We tried to encode something the protocol cannot carry."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol.

    `fatal` is True for framing violations (the stream cannot be resynchronised,
    so the connection must be closed); False for a bad but well-framed message.
    """

    def __init__(self, message: str, code: str = "bad-request", fatal: bool = False):
        self.fatal = fatal
        super().__init__(message, code)


class RecordError(NhrpBridgeError):
    """A spool record is not a valid `export -p` dump."""


class PlutoError(NhrpBridgeError):
    """A whack/addconn call failed; `code` is the API error code."""

    def __init__(self, message: str, code: str = "pluto-error", rc: int | None = None):
        self.code = code
        self.rc = rc
        super().__init__(message)


class RenderError(NhrpBridgeError):
    """A configuration value cannot be rendered safely."""


class StateError(NhrpBridgeError):
    """The state file was written by a newer nhrpbridge: starting empty would reuse
    uniqueids and forget SAs, so the daemon refuses to start instead."""


class SpoolError(NhrpBridgeError):
    """The spool is a symlink, not owned by root or our own user, or writable by group or
    others: anyone who can write a record there could create or destroy SAs."""

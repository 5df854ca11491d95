"""Newline-delimited JSON, the nhrpbridge event API (v1).

Strategy:
- Framing: one JSON object per line, UTF-8, ended by "\\n". A line longer than
  MAX_LINE bytes is a framing violation (RemoteProtocolError, fatal=True): the rest
  of the stream can no longer be trusted, so the server replies and closes.
- A well-framed line that is not JSON, or JSON that is not an object, is a
  non-fatal RemoteProtocolError: the server answers with an error and keeps the
  connection (one bad request must not cost a subscriber its stream).
- Keys are kebab-case and spelled as in VICI (`local-host`, `remote-id`), so API
  and VICI events read the same. Unknown keys are ignored by the server (forward
  compatibility); the codec does not look at them.
- Encoding is canonical: sorted keys, no spaces, so golden tests are byte-exact.
- Every line is valid UTF-8. A value that carries bytes which were not UTF-8 (a DN
  byte from pluto, kept as Python's surrogateescape U+DC80..U+DCFF) or a lone
  surrogate (a client may send one in a request id) is written with JSON's
  backslash-u escapes: the line is then pure ASCII, still valid JSON, and the
  bytes are recoverable.
"""
from __future__ import annotations

import json
from typing import Any

from ..errors import ErrorCode, LocalProtocolError, RemoteProtocolError

__all__ = ["PROTOCOL_VERSION", "SUPPORTED_VERSIONS", "MAX_LINE", "Decoder", "encode", "error_reply"]

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MAX_LINE = 1024 * 1024  # issue #2: a request line over 1 MiB is refused


def encode(msg: dict[str, Any]) -> bytes:
    """Serialise one message as a canonical JSON line."""
    if not isinstance(msg, dict):
        raise LocalProtocolError("a JSON-lines message must be an object")
    try:
        text = json.dumps(msg, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise LocalProtocolError(f"cannot encode message: {exc}") from None
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:            # surrogates: escape them, the line stays valid
        return (json.dumps(msg, separators=(",", ":"), sort_keys=True) + "\n").encode("ascii")


def error_reply(req_id: Any, code: str, message: str) -> dict[str, Any]:
    """The one shape every failed request gets."""
    reply: dict[str, Any] = {"type": "reply", "ok": False,
                             "error": {"code": code, "message": message}}
    if req_id is not None:
        reply["id"] = req_id
    return reply


class Decoder:
    """Incremental line decoder in the h11 style: `feed()` buffers, `next_message()`
    returns one message, None when more bytes are needed, or raises.

    A non-fatal RemoteProtocolError consumes only the offending line, so the
    caller can report it and go on with the next one.
    """

    def __init__(self, max_line: int = MAX_LINE):
        self.max_line = max_line
        self._buf = bytearray()
        self._scan = 0  # bytes already searched for a newline

    def feed(self, data: bytes) -> None:
        """Buffer more bytes from the peer."""
        self._buf += data

    def buffered(self) -> bytes:
        """Bytes fed and not decoded yet (a restart hands them to the next process)."""
        return bytes(self._buf)

    def next_message(self) -> dict[str, Any] | None:
        """Return the next complete message, or None if a full line is not buffered."""
        while True:
            nl = self._buf.find(b"\n", self._scan)
            if nl < 0:
                self._scan = len(self._buf)
                if len(self._buf) > self.max_line:
                    self._buf.clear()
                    self._scan = 0
                    raise RemoteProtocolError(
                        f"line longer than {self.max_line} bytes", ErrorCode.LINE_TOO_LONG, fatal=True)
                return None
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            self._scan = 0
            if len(line) > self.max_line:
                raise RemoteProtocolError(
                    f"line longer than {self.max_line} bytes", ErrorCode.LINE_TOO_LONG, fatal=True)
            if line.strip():
                return _parse(line)

    def messages(self, data: bytes = b"") -> list[dict[str, Any]]:
        """Feed `data` and return every complete message; errors propagate."""
        self.feed(data)
        out = []
        while (msg := self.next_message()) is not None:
            out.append(msg)
        return out


def _parse(line: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RemoteProtocolError(f"invalid JSON: {exc}", ErrorCode.INVALID_JSON) from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("a request must be a JSON object", ErrorCode.NOT_AN_OBJECT)
    return obj

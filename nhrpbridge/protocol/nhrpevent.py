"""nhrpd's event socket (`nhrp event socket PATH`), pure.

Strategy: nhrpd connects to us and writes blocks of
`key=value` lines ended by an empty line; we answer `eventid=N`, `result=WORD`,
empty line. Only the word `accept` accepts. nhrpd skips lines of 255 bytes or
more in *our* replies, so replies stay short. Its own lines can be long
(hex-encoded certificates, up to 2x2047 bytes), so a block may be up to
MAX_BLOCK bytes; a longer one is a framing violation (the connection is closed,
nhrpd reconnects).
"""
from __future__ import annotations

from ..errors import LocalProtocolError, RemoteProtocolError

__all__ = ["Decoder", "encode_reply", "MAX_BLOCK"]

MAX_BLOCK = 64 * 1024


def encode_reply(eventid: int, result: str) -> bytes:
    if not result.isalnum():
        raise LocalProtocolError(f"bad result word {result!r}")
    return f"eventid={eventid}\nresult={result}\n\n".encode()


class Decoder:
    def __init__(self, max_block: int = MAX_BLOCK):
        self.max_block = max_block
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def buffered(self) -> bytes:
        """Bytes fed and not decoded yet (a restart hands them to the next process)."""
        return bytes(self._buf)

    def next_block(self) -> dict[str, str] | None:
        """The next complete block as a dict; None if more bytes are needed."""
        while True:
            end = self._buf.find(b"\n\n")
            if end < 0:
                if len(self._buf) > self.max_block:
                    self._buf.clear()
                    raise RemoteProtocolError("event block too long", "event-too-long", fatal=True)
                return None
            raw = bytes(self._buf[:end])
            del self._buf[:end + 2]
            if len(raw) > self.max_block:
                raise RemoteProtocolError("event block too long", "event-too-long", fatal=True)
            block: dict[str, str] = {}
            for line in raw.decode("utf-8", "replace").split("\n"):
                key, sep, value = line.partition("=")
                if sep and key:
                    block[key.strip()] = value
            if block:
                return block
            # an empty block (extra blank lines) is nothing: look for the next one

    @property
    def pending(self) -> int:
        return len(self._buf)

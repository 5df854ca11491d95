"""strongSwan's VICI wire protocol (src/libcharon/plugins/vici/README.md), pure.

Strategy:
- Transport: a 4-byte big-endian length, then the segment. MAX_SEGMENT (512 KiB,
  charon's VICI_MESSAGE_SIZE_MAX) is checked as soon as the header is in: a peer
  cannot make us buffer more.
- Packet layer: one type byte; CMD_REQUEST, EVENT_REGISTER, EVENT_UNREGISTER and
  EVENT carry a name (1-byte length); CMD_REQUEST, CMD_RESPONSE and EVENT carry a
  message (the rest of the segment).
- Message: elements SECTION_START 1 .. LIST_END 6 (README "Message format").
  Decoded to dicts in wire order, lists of bytes, and bytes values (values are
  opaque blobs; conversion happens in the translation code, not here). Keys are
  unique per section, lists do not nest, sections balance: anything else is a
  RemoteProtocolError. Encoding takes str, int, bytes, lists and dicts; a name
  over 255 or a value over 65535 bytes is a LocalProtocolError.
- Every VICI violation is fatal for the connection: the protocol has no way to
  report it and the stream cannot be resynchronised after a bad length.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache
from typing import Any, Union

from ..errors import LocalProtocolError, RemoteProtocolError

__all__ = ["PacketType", "ElementType", "Packet", "Decoder", "MAX_SEGMENT", "encode_packet",
           "encode_message", "decode_message", "decode_packet"]

MAX_SEGMENT = 512 * 1024

Tree = dict[str, Union[bytes, list[bytes], "Tree"]]


class PacketType(IntEnum):
    CMD_REQUEST = 0
    CMD_RESPONSE = 1
    CMD_UNKNOWN = 2
    EVENT_REGISTER = 3
    EVENT_UNREGISTER = 4
    EVENT_CONFIRM = 5
    EVENT_UNKNOWN = 6
    EVENT = 7


class ElementType(IntEnum):
    SECTION_START = 1
    SECTION_END = 2
    KEY_VALUE = 3
    LIST_START = 4
    LIST_ITEM = 5
    LIST_END = 6


_NAMED = {PacketType.CMD_REQUEST, PacketType.EVENT_REGISTER, PacketType.EVENT_UNREGISTER,
          PacketType.EVENT}
_WITH_MESSAGE = {PacketType.CMD_REQUEST, PacketType.CMD_RESPONSE, PacketType.EVENT}


@dataclass(frozen=True, slots=True)
class Packet:
    type: PacketType
    name: str | None = None
    message: dict[str, Any] = field(default_factory=dict)


# ---- encoding --------------------------------------------------------------------

@lru_cache(maxsize=4096)
def _name(name: str) -> bytes:
    """1-byte length + name; cached: an SA dump repeats the same few keys."""
    raw = name.encode("ascii") if isinstance(name, str) else bytes(name)
    if not raw or len(raw) > 255:
        raise LocalProtocolError(f"VICI name of {len(raw)} bytes (1..255 allowed)")
    return bytes([len(raw)]) + raw


@lru_cache(maxsize=4096)
def _prefix(kind: int, name: str) -> bytes:
    return bytes([kind]) + _name(name)


def _value(value: Any) -> bytes:
    t = type(value)
    if t is str:
        raw = value.encode("utf-8", "surrogateescape")
    elif t is bytes:
        raw = value
    elif t is bool:
        raw = b"yes" if value else b"no"
    elif t is int or isinstance(value, int):
        raw = str(int(value)).encode()
    elif isinstance(value, (bytes, bytearray, str)):
        raw = bytes(value, "utf-8") if isinstance(value, str) else bytes(value)
    else:
        raise LocalProtocolError(f"cannot encode a {t.__name__} as a VICI value")
    n = len(raw)
    if n > 0xFFFF:
        raise LocalProtocolError(f"VICI value of {n} bytes (65535 allowed)")
    return n.to_bytes(2, "big") + raw


def _encode_into(out: bytearray, tree: dict[str, Any]) -> None:
    for key, value in tree.items():
        t = type(value)
        if t is str:                  # the common cases inline (a storm encodes 30,000)
            raw = value.encode("utf-8", "surrogateescape")
        elif t is int:
            raw = str(value).encode()
        elif t is dict or isinstance(value, dict):
            out += _prefix(1, key)
            _encode_into(out, value)
            out += b"\x02"
            continue
        elif t is list or t is tuple:
            out += _prefix(4, key)
            for v in value:
                out += b"\x05"
                out += _value(v)
            out += b"\x06"
            continue
        else:
            out += _prefix(3, key)
            out += _value(value)
            continue
        n = len(raw)
        if n > 0xFFFF:
            raise LocalProtocolError(f"VICI value of {n} bytes (65535 allowed)")
        out += _prefix(3, key)
        out += n.to_bytes(2, "big")
        out += raw


def encode_message(tree: dict[str, Any]) -> bytes:
    """Serialise a message tree (dict order is wire order)."""
    out = bytearray()
    _encode_into(out, tree)
    return bytes(out)


def encode_packet(packet: Packet) -> bytes:
    """One framed segment, length prefix included."""
    body = bytearray([packet.type])
    if packet.type in _NAMED:
        if packet.name is None:
            raise LocalProtocolError(f"{packet.type.name} needs a name")
        body += _name(packet.name)
    if packet.type in _WITH_MESSAGE:
        _encode_into(body, packet.message)
    if len(body) > MAX_SEGMENT:
        raise LocalProtocolError(f"VICI segment of {len(body)} bytes exceeds {MAX_SEGMENT}")
    return len(body).to_bytes(4, "big") + bytes(body)


# ---- decoding --------------------------------------------------------------------

class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0):
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise RemoteProtocolError("VICI message truncated", "vici-truncated", fatal=True)
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def name(self) -> str:
        length = self.take(1)[0]
        raw = self.take(length)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise RemoteProtocolError("VICI name is not ASCII", "vici-bad-name", fatal=True) from None

    def value(self) -> bytes:
        return self.take(int.from_bytes(self.take(2), "big"))


def decode_message(data: bytes, pos: int = 0) -> dict[str, Any]:
    """Parse message elements into a tree; raise RemoteProtocolError if malformed."""
    r = _Reader(data, pos)
    root: dict[str, Any] = {}
    stack = [root]
    while r.pos < len(data):
        kind = r.take(1)[0]
        if kind == ElementType.SECTION_START:
            key = r.name()
            _unique(stack[-1], key)
            section: dict[str, Any] = {}
            stack[-1][key] = section
            stack.append(section)
        elif kind == ElementType.SECTION_END:
            if len(stack) == 1:
                raise RemoteProtocolError("VICI SECTION_END without a section", "vici-unbalanced",
                                          fatal=True)
            stack.pop()
        elif kind == ElementType.KEY_VALUE:
            key = r.name()
            _unique(stack[-1], key)
            stack[-1][key] = r.value()
        elif kind == ElementType.LIST_START:
            key = r.name()
            _unique(stack[-1], key)
            items: list[bytes] = []
            while True:
                item = r.take(1)[0]
                if item == ElementType.LIST_ITEM:
                    items.append(r.value())
                elif item == ElementType.LIST_END:
                    break
                else:
                    raise RemoteProtocolError(f"VICI element {item} inside a list",
                                              "vici-bad-list", fatal=True)
            stack[-1][key] = items
        else:
            raise RemoteProtocolError(f"unknown VICI element type {kind}", "vici-bad-element",
                                      fatal=True)
    if len(stack) != 1:
        raise RemoteProtocolError("VICI section not closed", "vici-unbalanced", fatal=True)
    return root


def _unique(section: dict[str, Any], key: str) -> None:
    if key in section:
        raise RemoteProtocolError(f"duplicate VICI key {key!r}", "vici-duplicate", fatal=True)


def decode_packet(segment: bytes) -> Packet:
    """Parse one segment (without its length prefix)."""
    if not segment:
        raise RemoteProtocolError("empty VICI segment", "vici-empty", fatal=True)
    try:
        ptype = PacketType(segment[0])
    except ValueError:
        raise RemoteProtocolError(f"unknown VICI packet type {segment[0]}", "vici-bad-type",
                                  fatal=True) from None
    r = _Reader(segment, 1)
    name = r.name() if ptype in _NAMED else None
    if ptype in _WITH_MESSAGE:
        message = decode_message(segment, r.pos)
    elif r.pos != len(segment):
        raise RemoteProtocolError(f"{ptype.name} with trailing bytes", "vici-trailing", fatal=True)
    else:
        message = {}
    return Packet(ptype, name, message)


class Decoder:
    """Incremental segment decoder: `feed()` bytes, `next_packet()` until None."""

    def __init__(self, max_segment: int = MAX_SEGMENT):
        self.max_segment = max_segment
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def buffered(self) -> bytes:
        """Bytes fed and not decoded yet (a restart hands them to the next process)."""
        return bytes(self._buf)

    def next_packet(self) -> Packet | None:
        if len(self._buf) < 4:
            return None
        length = int.from_bytes(self._buf[:4], "big")
        if length > self.max_segment:
            raise RemoteProtocolError(f"VICI segment of {length} bytes exceeds {self.max_segment}",
                                      "vici-too-large", fatal=True)
        if len(self._buf) < 4 + length:
            return None
        segment = bytes(self._buf[4:4 + length])
        del self._buf[:4 + length]
        return decode_packet(segment)

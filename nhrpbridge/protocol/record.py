"""The spool record format: the output of the shell builtin `export -p`.

Strategy:
- The hook runs `{ export -p; echo '# nhrpbridge-end'; } > NAME`: builtins only,
  the cheapest way a POSIX shell can capture *every* variable pluto passed,
  exactly, without knowing their names in advance. The trailer line marks a
  complete record (`is_complete`); comment lines are otherwise ignored.
- POSIX requires `export -p` output to be "suitable for reinput to the shell", so
  its grammar is shell quoting. We accept what real shells print:
    dash/ash:  export NAME='it'"'"'s'       single quotes, raw bytes, raw newlines
    bash:      export NAME="a \\"b\\""  or  export NAME=$'\\377\\n'
    any:       export NAME                   (exported but unset: skipped)
  plus `declare -x` (bash outside POSIX mode).
- Values are bytes; `decode_record` returns str decoded with surrogateescape, so
  non-UTF-8 DN bytes round-trip exactly (`s.encode("utf-8", "surrogateescape")`).
- Anything else (a truncated quote, a line that is not an export) raises
  RecordError with the byte offset: a record is either understood or kept aside.
"""
from __future__ import annotations

import re

from ..errors import RecordError

__all__ = ["MAX_RECORD", "TRAILER", "decode_record", "encode_record", "is_complete"]

TRAILER = b"# nhrpbridge-end\n"


def is_complete(data: bytes) -> bool:
    """Has the hook finished writing this record?"""
    return data.endswith(b"\n" + TRAILER) or data == TRAILER

MAX_RECORD = 1024 * 1024  # pluto's whole block is 2 KiB; 1 MiB leaves room for its env


def encode_record(env: dict[str, str]) -> bytes:
    """A complete record as dash's `export -p` writes it (for tests, replays, the bench).

    Values may hold surrogate escapes (from decode_record): they are written back as
    the original bytes.
    """
    out = bytearray()
    for name, value in env.items():
        if not name or name[0].isdigit() or not all(ord(c) < 128 and ord(c) in _NAME_CHARS
                                                    for c in name):
            raise RecordError(f"not a shell variable name: {name!r}")
        raw = value.encode("utf-8", "surrogateescape").replace(b"'", b"'\"'\"'")
        out += b"export " + name.encode() + b"='" + raw + b"'\n"
    return bytes(out) + TRAILER

_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_PREFIXES = (b"export ", b"declare -x ")
_ANSI = {ord("n"): b"\n", ord("t"): b"\t", ord("r"): b"\r", ord("a"): b"\a", ord("b"): b"\b",
         ord("e"): b"\x1b", ord("E"): b"\x1b", ord("f"): b"\f", ord("v"): b"\v",
         ord("\\"): b"\\", ord("'"): b"'", ord('"'): b'"', ord("?"): b"?"}
_DQ_ESCAPABLE = frozenset(b'$`"\\\n')


# dash's common case: every line `export NAME='value'` (value without a quote) or a comment
_SIMPLE_LINE = r"export ([A-Za-z_][A-Za-z0-9_]*)='([^']*)'\n|# [^\n]*\n"
_SIMPLE_ALL = re.compile(f"(?:{_SIMPLE_LINE})*")
_SIMPLE = re.compile(_SIMPLE_LINE)


def decode_record(data: bytes) -> dict[str, str]:
    """Parse an `export -p` dump into {name: value}.

    Raises:
        RecordError: the data is not a complete `export -p` dump.
    """
    if len(data) > MAX_RECORD:
        raise RecordError(f"record of {len(data)} bytes exceeds {MAX_RECORD}")
    if not data:
        raise RecordError("empty record")
    if not data.endswith(b"\n"):
        raise RecordError("record does not end with a newline (truncated?)")
    fast = _decode_simple(data)
    return fast if fast is not None else _decode_general(data)


def _decode_simple(data: bytes) -> dict[str, str] | None:
    """Two passes in C (check the whole record, then collect the pairs), far cheaper than
    the general parser; None if any line needs the full shell grammar. The record is decoded once
    with surrogateescape, so each value is a slice of it (bytes round-trip exactly)."""
    text = data.decode("utf-8", "surrogateescape")
    if _SIMPLE_ALL.fullmatch(text) is None:
        return None
    # aligned with the check above (the alternatives start differently): a comment line
    # yields ("", "") and can never be read as an export
    return {name: value for name, value in _SIMPLE.findall(text) if name}


def _decode_general(data: bytes) -> dict[str, str]:
    env: dict[str, str] = {}
    pos, end = 0, len(data)
    while pos < end:
        if data[pos] in b"\n":
            pos += 1
            continue
        if data[pos] == ord("#"):
            nl = data.find(b"\n", pos)
            pos = end if nl < 0 else nl + 1
            continue
        for prefix in _PREFIXES:
            if data.startswith(prefix, pos):
                pos += len(prefix)
                break
        else:
            raise RecordError(f"offset {pos}: expected 'export NAME=...'")
        start = pos
        while pos < end and data[pos] in _NAME_CHARS:
            pos += 1
        name = data[start:pos].decode("ascii")
        if not name:
            raise RecordError(f"offset {start}: missing variable name")
        if pos < end and data[pos] == ord("="):
            value, pos = _word(data, pos + 1)
            env[name] = value.decode("utf-8", "surrogateescape")
        if pos < end and data[pos] != ord("\n"):
            raise RecordError(f"offset {pos}: unexpected byte after {name}")
    return env


def _word(data: bytes, pos: int) -> tuple[bytes, int]:
    """Read one shell word starting at pos; stop at an unquoted newline."""
    out = bytearray()
    end = len(data)
    while pos < end:
        c = data[pos]
        if c == ord("\n") or c == ord(" "):
            break
        if c == ord("'"):
            close = data.find(b"'", pos + 1)
            if close < 0:
                raise RecordError(f"offset {pos}: unterminated single quote")
            out += data[pos + 1:close]
            pos = close + 1
        elif c == ord('"'):
            pos = _double_quoted(data, pos + 1, out)
        elif c == ord("$") and data.startswith(b"$'", pos):
            pos = _ansi_quoted(data, pos + 2, out)
        elif c == ord("\\"):
            if pos + 1 >= end:
                raise RecordError(f"offset {pos}: trailing backslash")
            if data[pos + 1] != ord("\n"):  # backslash-newline is a line continuation
                out.append(data[pos + 1])
            pos += 2
        else:
            out.append(c)
            pos += 1
    return bytes(out), pos


def _double_quoted(data: bytes, pos: int, out: bytearray) -> int:
    end = len(data)
    while pos < end:
        c = data[pos]
        if c == ord('"'):
            return pos + 1
        if c == ord("\\") and pos + 1 < end and data[pos + 1] in _DQ_ESCAPABLE:
            if data[pos + 1] != ord("\n"):
                out.append(data[pos + 1])
            pos += 2
            continue
        out.append(c)
        pos += 1
    raise RecordError("unterminated double quote")


def _ansi_quoted(data: bytes, pos: int, out: bytearray) -> int:
    end = len(data)
    while pos < end:
        c = data[pos]
        if c == ord("'"):
            return pos + 1
        if c != ord("\\"):
            out.append(c)
            pos += 1
            continue
        if pos + 1 >= end:
            break
        e = data[pos + 1]
        pos += 2
        if e in _ANSI:
            out += _ANSI[e]
        elif ord("0") <= e <= ord("7"):
            digits = bytes([e])
            while len(digits) < 3 and pos < end and ord("0") <= data[pos] <= ord("7"):
                digits += data[pos:pos + 1]
                pos += 1
            out.append(int(digits, 8) & 0xFF)
        elif e in (ord("x"), ord("u"), ord("U")):
            width = {ord("x"): 2, ord("u"): 4, ord("U"): 8}[e]
            digits = b""
            while len(digits) < width and pos < end and data[pos:pos + 1].isalnum() \
                    and data[pos:pos + 1] in b"0123456789abcdefABCDEF":
                digits += data[pos:pos + 1]
                pos += 1
            if not digits:
                raise RecordError(f"offset {pos}: bad \\{chr(e)} escape")
            n = int(digits, 16)
            if n > 0x10FFFF:                   # bash prints $'\U7fffffff' for such bytes
                raise RecordError(f"offset {pos}: \\{chr(e)}{digits.decode()} is beyond Unicode")
            out += bytes([n]) if e == ord("x") else chr(n).encode("utf-8", "surrogatepass")
        elif e == ord("c") and pos < end:
            out.append(data[pos] & 0x1F)
            pos += 1
        else:
            out += bytes([ord("\\"), e])
    raise RecordError("unterminated $'...' quote")

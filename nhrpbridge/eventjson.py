"""API event lines built from per-record JSON: each record serialised once.

Why: one change raises several events that carry the same records (a Child SA's
child-up and link-up carry the same link; a storm of 30,000 records raises 90,000
events), and JSON encoding was the largest single cost of the daemon in the storm.
Records are frozen dataclasses, so a record's JSON is fixed for the object's life and can
be kept by identity (the object is held with it, so its id is not reused while cached).
Most records are new, though (a storm encodes 100,000 of them), so a record is written
field by field in sorted key order with json's own C string escaper, without building
the dict and sorting it first (measured: 3.9 us against 8.9 us per IKE SA).

The line is byte-for-byte what `jsonl.encode(event_dict(ev))` gives (sorted keys, no
spaces): top-level keys in sorted order are child-sa, ike-sa, link, seq, time, type.
A value that cannot go out as UTF-8 (surrogate escapes from pluto's bytes) takes the
general path, which escapes it.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from json.encoder import encode_basestring  # ensure_ascii=False's string form (C)
from operator import attrgetter
from typing import Any

from .protocol import jsonl
from .sa import ChildSa, Event, IkeSa, Link
from .wire import api_names, event_dict, spi_hex

__all__ = ["EventEncoder"]

_dumps = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode
_KINDS: dict[str, str] = {}   # event kind -> its JSON string (a handful)
KEEP = 4096          # records kept; the cache starts over when full (a storm walks through)


def _fields_writer(kind: type, special: dict[str, Callable[[Any], str]]) -> Callable[[Any], str]:
    """rec -> its JSON object, as wire's dict of it gives under sort_keys: the API keys
    sorted once, scalars written the way json writes them, anything else through json."""
    keys, _ = api_names(kind)
    order = sorted((key, key.replace("-", "_")) for key in keys)
    get = attrgetter(*(attr for _, attr in order))
    plan = [(json.dumps(key) + ":", special.get(key)) for key, _ in order]

    def write(rec: Any) -> str:
        out = []
        for (prefix, conv), v in zip(plan, get(rec), strict=True):
            t = type(v)
            if conv is not None:
                out.append(prefix + conv(v))
            elif t is str:
                out.append(prefix + encode_basestring(v))
            elif v is None:
                out.append(prefix + "null")
            elif t is bool:
                out.append(prefix + ("true" if v else "false"))
            elif t is int or (t is float and math.isfinite(v)):
                out.append(prefix + repr(v))
            else:
                out.append(prefix + _dumps(v))
        return "{" + ",".join(out) + "}"
    return write


def _spi(v: int) -> str:
    return f'"{spi_hex(v)}"'


def _link(link: Link) -> str:
    return (f'{{"child-ids":{_dumps(list(link.children))},"children":{len(link.children)},'
            f'"connection":{encode_basestring(link.connection)},'
            f'"local-host":{encode_basestring(link.local_host)},'
            f'"remote-host":{encode_basestring(link.remote_host)},'
            f'"remote-id":{encode_basestring(link.remote_id)},'
            f'"up":{"true" if link.children else "false"}}}')


_ike = _fields_writer(IkeSa, {})
_child = _fields_writer(ChildSa, {"spi-in": _spi, "spi-out": _spi})


class EventEncoder:
    """encode(event) -> one API line; records cached by identity."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[Any, str]] = {}

    def _record(self, rec: Any, write: Callable[[Any], str]) -> str:
        hit = self._cache.get(id(rec))
        if hit is not None and hit[0] is rec:
            return hit[1]
        if len(self._cache) >= KEEP:
            self._cache.clear()
        text = write(rec)
        self._cache[id(rec)] = (rec, text)
        return text

    def encode(self, ev: Event) -> bytes:
        parts = []
        if ev.child_sa is not None:
            parts.append('"child-sa":' + self._record(ev.child_sa, _child))
        if ev.ike_sa is not None:
            parts.append('"ike-sa":' + self._record(ev.ike_sa, _ike))
        if ev.link is not None:
            parts.append('"link":' + self._record(ev.link, _link))
        kind = _KINDS.get(ev.kind) or _KINDS.setdefault(ev.kind, _dumps(ev.kind))
        # the number forms json itself writes (int.__repr__, float.__repr__), without a call
        # into the encoder per scalar (that was most of the cost)
        when = repr(ev.time) if type(ev.time) is int or math.isfinite(ev.time) \
            else _dumps(ev.time)
        parts.append(f'"seq":{ev.seq!r},"time":{when},"type":{kind}')
        try:
            return ("{" + ",".join(parts) + "}\n").encode("utf-8")
        except UnicodeEncodeError:
            return jsonl.encode(event_dict(ev))

"""API event lines built from per-record JSON: each record serialised once.

Why: one change raises several events that carry the same records (a Child SA's
child-up and link-up carry the same link; a storm of 30,000 records raises 90,000
events), and JSON encoding was the largest single cost of the daemon in the storm.
Records are frozen dataclasses, so a record's JSON is fixed for the object's life and can
be kept by identity (the object is held with it, so its id is not reused while cached).

The line is byte-for-byte what `jsonl.encode(event_dict(ev))` gives (sorted keys, no
spaces): top-level keys in sorted order are child-sa, ike-sa, link, seq, time, type.
A value that cannot go out as UTF-8 (surrogate escapes from pluto's bytes) takes the
general path, which escapes it.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from .protocol import jsonl
from .sa import Event
from .wire import child_dict, event_dict, ike_dict, link_dict

__all__ = ["EventEncoder"]

_dumps = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode
_KINDS: dict[str, str] = {}   # event kind -> its JSON string (a handful)
KEEP = 4096          # records kept; the cache starts over when full (a storm walks through)


class EventEncoder:
    """encode(event) -> one API line; records cached by identity."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[Any, str]] = {}

    def _record(self, rec: Any, as_dict: Callable[[Any], dict[str, Any]]) -> str:
        hit = self._cache.get(id(rec))
        if hit is not None and hit[0] is rec:
            return hit[1]
        if len(self._cache) >= KEEP:
            self._cache.clear()
        text = _dumps(as_dict(rec))
        self._cache[id(rec)] = (rec, text)
        return text

    def encode(self, ev: Event) -> bytes:
        parts = []
        if ev.child_sa is not None:
            parts.append('"child-sa":' + self._record(ev.child_sa, child_dict))
        if ev.ike_sa is not None:
            parts.append('"ike-sa":' + self._record(ev.ike_sa, ike_dict))
        if ev.link is not None:
            parts.append('"link":' + self._record(ev.link, link_dict))
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

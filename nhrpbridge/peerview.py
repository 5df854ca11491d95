"""One line per peer: nhrpbridge's links and SAs joined with nhrpd's cache. Pure.

Why: "what is the state of spoke X" has answers in three places (pluto's SAs, nhrpd's
cache, the last registration decision); an operator wants them side by side, and a
disagreement (an SA without a registration, a cache entry without an SA) is exactly
what they are looking for.

Inputs: the API's `list` reply, its `bindings` reply (the last decision per peer NBMA),
and the text of `show ip nhrp cache json` (FRR >= 8: a {"table": [...]} object; the plain
text table of older versions is read too). nhrpd shows no expiry time in either form,
only whether a timer runs on the entry ("timeout").
"""
from __future__ import annotations

import json
from typing import Any

__all__ = ["parse_nhrp_cache", "peer_rows", "format_peers"]

NHRP_KEYS = ("interface", "type", "protocol", "nbma", "claimed_nbma", "used", "timeout",
             "auth", "identity")


def parse_nhrp_cache(text: str) -> list[dict[str, Any]]:
    """nhrpd's cache entries as dicts with NHRP_KEYS; ValueError if it is neither form."""
    text = text.strip()
    if text.startswith("{"):
        table = json.loads(text).get("table")
        if not isinstance(table, list):
            raise ValueError("no \"table\" list in nhrpd's JSON")
        return [{k: e.get(k) for k in NHRP_KEYS} for e in table if isinstance(e, dict)]
    out = []
    for line in text.splitlines()[1:]:           # Iface Type Protocol NBMA Claimed Flags Identity
        f = line.split()
        if len(f) >= 5:
            out.append({"interface": f[0], "type": f[1], "protocol": f[2], "nbma": f[3],
                        "claimed_nbma": f[4], "used": None, "timeout": None, "auth": None,
                        "identity": " ".join(f[5:]) or None})
    if text and not out and not text.startswith("Iface"):
        raise ValueError("not nhrpd's cache table")
    return out


def peer_rows(listing: dict[str, Any], bindings: dict[str, dict[str, Any]],
              cache: list[dict[str, Any]] | None, now: float) -> list[dict[str, Any]]:
    """One dict per peer NBMA (links first, then cache entries without a link)."""
    ikes = {i["uniqueid"]: i for i in listing.get("ike-sas", [])}
    kids = {c["uniqueid"]: c for c in listing.get("child-sas", [])}
    by_nbma: dict[str, list[dict[str, Any]]] = {}
    for e in cache or []:
        if e.get("type") in ("dynamic", "nhs", "static", "cached") and e.get("nbma"):
            by_nbma.setdefault(e["nbma"], []).append(e)
    rows = []
    seen = set()
    for lk in sorted(listing.get("links", []), key=lambda x: (x["connection"], x["remote-host"])):
        nbma = lk["remote-host"]
        seen.add(nbma)
        children = [kids[c] for c in lk.get("child-ids", []) if c in kids]
        ike_list = sorted({ikes[c["ike-uniqueid"]]["uniqueid"]: ikes[c["ike-uniqueid"]]
                           for c in children if c["ike-uniqueid"] in ikes}.values(),
                          key=lambda i: i.get("established") or 0)
        rekeyed = max([c.get("rekeyed") or 0 for c in children]
                      + [i.get("rekeyed") or 0 for i in ike_list], default=0)
        since = min((i.get("established") or 0 for i in ike_list), default=0) or \
            min((c.get("installed") or 0 for c in children), default=0)
        rows.append(_row(nbma, lk["connection"], lk["local-host"], lk["remote-id"], lk["up"],
                         len(children), [i.get("serial") for i in ike_list], since,
                         rekeyed,
                         by_nbma.get(nbma, []), bindings.get(nbma), now))
    for nbma in sorted(set(by_nbma) - seen):
        rows.append(_row(nbma, None, None, None, False, 0, [], 0, 0, by_nbma[nbma],
                         bindings.get(nbma), now))
    return rows


def _row(nbma: str, conn: str | None, local: str | None, rid: str | None, up: bool,
         children: int, serials: list[Any], since: float, rekey: float,
         entries: list[dict[str, Any]], binding: dict[str, Any] | None,
         now: float) -> dict[str, Any]:
    e = entries[0] if entries else {}
    return {
        "nbma": nbma, "connection": conn, "local-host": local, "remote-id": rid,
        "gre-address": e.get("protocol") or (binding or {}).get("gre-address"),
        "link": ("up" if up else "down") if conn else None, "children": children,
        "ike-serials": [s for s in serials if s is not None],
        "up-since": since or None, "up-for": round(now - since) if since else None,
        "last-rekey": rekey or None, "rekey-ago": round(now - rekey) if rekey else None,
        "nhrp-type": e.get("type"), "nhrp-timer": e.get("timeout"),
        "nhrp-identity": e.get("identity"),
        "nhrp-entries": len(entries),
        "binding": binding.get("decision") if binding else None,
        "binding-code": binding.get("code") if binding else None,
        "binding-age": round(now - binding["time"]) if binding and binding.get("time") else None,
    }


def _ago(v: Any) -> str:
    return "-" if v is None else f"{int(v)}s"


def format_peers(rows: list[dict[str, Any]], nhrpd_note: str = "") -> str:
    """The table `status --peers` prints."""
    head = ("NBMA", "GRE", "LINK", "IKE", "CHILD", "UP-FOR", "REKEY-AGO", "NHRP", "BINDING",
            "REMOTE-ID")
    out = [head]
    for r in rows:
        nhrp = r["nhrp-type"] or ("?" if nhrpd_note else "-")
        if r["nhrp-timer"]:
            nhrp += "+timer"
        binding = f"{r['binding']}:{r['binding-code']} {_ago(r['binding-age'])} ago" \
            if r["binding"] else "-"
        out.append((r["nbma"], r["gre-address"] or "-", r["link"] or "-",
                    ",".join(f"#{s}" for s in r["ike-serials"]) or "-", str(r["children"]),
                    _ago(r["up-for"]), _ago(r["rekey-ago"]), nhrp, binding, r["remote-id"] or "-"))
    widths = [max(len(str(row[i])) for row in out) for i in range(len(head))]
    text = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in out]
    if len(out) == 1:
        text.append("(no peers)")
    if nhrpd_note:
        text.append(f"(nhrpd's view unavailable: {nhrpd_note})")
    return "\n".join(text)

"""What the CLI prints for people: `status` tables and `events` lines (scripts use --json)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["format_event", "format_status"]


def format_status(reply: dict[str, Any]) -> str:
    """Human tables, in the spirit of `show dmvpn`."""
    lines = [f"Links ({len(reply['links'])}):"]
    rows: list[tuple[str, ...]] = [("CONNECTION", "LOCAL", "REMOTE", "REMOTE-ID", "CHILDREN", "STATE")]
    for lk in sorted(reply["links"], key=lambda lk: (lk["connection"], lk["remote-host"])):
        rows.append((lk["connection"], lk["local-host"], lk["remote-host"], lk["remote-id"],
                     str(lk["children"]), "up" if lk["up"] else "down"))
    lines += _table(rows)
    lines.append(f"IKE SAs ({len(reply['ike-sas'])}):")
    rows = [("ID", "CONNECTION", "SERIAL", "LOCAL", "REMOTE", "REMOTE-ID", "AUTH", "STATE")]
    for i in reply["ike-sas"]:
        serial = f"#{i['serial']}" if i.get("serial") else "-"
        inst = f"[{i['instance']}]" if i.get("instance") else ""
        rows.append((str(i["uniqueid"]), i["conn-name"] + inst, serial, i["local-host"],
                     i["remote-host"], i["remote-id"], i.get("auth") or "-", i["state"]))
    lines += _table(rows)
    lines.append(f"Child SAs ({len(reply['child-sas'])}):")
    rows = [("ID", "IKE", "CONNECTION", "LOCAL", "REMOTE", "SPI-IN", "SPI-OUT", "MODE", "STATE")]
    for c in reply["child-sas"]:
        rows.append((str(c["uniqueid"]), str(c["ike-uniqueid"]), c["conn-name"], c["local-host"],
                     c["remote-host"], c["spi-in"], c["spi-out"], c["mode"], c["state"]))
    lines += _table(rows)
    return "\n".join(lines)


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    if len(rows) == 1:
        return ["  (none)"]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def format_event(msg: dict[str, Any]) -> str:
    kind = msg.get("type", "?")
    rec = msg.get("link") or msg.get("child-sa") or msg.get("ike-sa") or {}
    seq = f"{msg['seq']:>6} " if "seq" in msg else "     - "
    if kind == "synced":
        return f"{seq}synced (state above, changes below)"
    what = f"{rec.get('connection', '')} {rec.get('local-host', '')} -> {rec.get('remote-host', '')}"
    if "child-sa" in msg:
        c = msg["child-sa"]
        what += f" spi {c['spi-in']}/{c['spi-out']}"
    if "link" in msg:
        what += f" children={msg['link']['children']}"
    return f"{seq}{kind:<12} {what}"

"""Asking nhrpd for its view through vtysh (for `status --peers`): argv, no shell."""
from __future__ import annotations

import subprocess
from typing import Any

from .peerview import parse_nhrp_cache

__all__ = ["nhrpd_cache"]

TIMEOUT = 10.0


def nhrpd_cache(vtysh: str, vty_socket: str | None = None
                ) -> tuple[list[dict[str, Any]] | None, str]:
    """nhrpd's cache entries, or (None, why they could not be read)."""
    if not vtysh:
        return None, "not asked (--vtysh '')"
    argv = [vtysh] + (["--vty_socket", vty_socket] if vty_socket else []) + \
        ["-c", "show ip nhrp cache json"]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{vtysh}: {exc}"
    if r.returncode != 0:
        return None, f"{vtysh} exited {r.returncode}: {(r.stderr or r.stdout).strip()[:200]}"
    try:
        return parse_nhrp_cache(r.stdout), ""
    except ValueError as exc:
        return None, f"{vtysh}: {exc}"

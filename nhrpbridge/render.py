"""Render ipsec.conf, ipsec.secrets and the FRR interface from one YAML (jinja2).

Strategy:
- Templates live in the top-level templates/ directory. One FileSystemLoader gets a
  search path, earlier directories overriding later ones: --templates DIR,
  /etc/nhrpbridge/templates, the source checkout (only when setup.cfg sits next to
  it), and share/nhrpbridge/templates under <sys data>, /usr/local and /usr for
  installed copies (`nhrpbridge install` puts them under its --prefix).
- Values are escaped for ipsec.conf by the `ipsec` filter (quoted when they hold
  spaces or commas, as DNs do) and refused when they cannot be written safely
  (a newline, a double quote, NUL): RenderError names the value.
- `check()` feeds the result to libreswan's own parser, `ipsec addconn --config F
  --checkconfig`, together with a sample per-peer conn so the also= layout is
  checked too. 4.10 exits 0 on per-conn errors, so any stderr output is failure.
"""
from __future__ import annotations

import os
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

import jinja2

from .config import Config, NodeConfig
from .errors import RenderError

__all__ = ["template_dirs", "environment", "libreswan_major", "render_ipsec", "render_frr", "render_secrets",
           "render_peers", "check_ipsec"]

_UNSAFE = ("\n", "\r", "\0", '"')


def template_dirs(extra: str | None = None) -> list[Path]:
    dirs = []
    if extra:
        dirs.append(Path(extra))
    dirs.append(Path("/etc/nhrpbridge/templates"))
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "setup.cfg").exists():
        dirs.append(checkout / "templates")
    for prefix in (sysconfig.get_path("data"), "/usr/local", "/usr"):
        d = Path(prefix) / "share" / "nhrpbridge" / "templates"
        if d not in dirs:
            dirs.append(d)
    return [d for d in dirs if d.is_dir()]


def _check_safe(value: Any) -> str:
    text = str(value)
    for bad in _UNSAFE:
        if bad in text:
            raise RenderError(f"{text!r} cannot be written into ipsec.conf safely "
                              f"(contains {bad!r})")
    if any(ord(ch) < 32 and ch != "\t" for ch in text):
        raise RenderError(f"{text!r} contains control characters")
    return text


def ipsec_value(value: Any) -> str:
    """An ipsec.conf value: quoted when it holds spaces, commas or '#'."""
    text = _check_safe(value)
    if not text:
        raise RenderError("empty value")
    return f'"{text}"' if any(c in text for c in " \t,#=") else text


def ipsec_word(value: Any) -> str:
    """A word inside an already quoted value (leftupdown="..."): no spaces allowed."""
    text = _check_safe(value)
    if not text or any(c in text for c in " \t'\\$`"):
        raise RenderError(f"{text!r} must be one word without quotes, spaces or '$'")
    return text


def ipsec_secret(value: Any) -> str:
    text = _check_safe(value)
    return f'"{text}"'


def environment(templates: str | None = None) -> jinja2.Environment:
    dirs = template_dirs(templates)
    if not dirs:
        raise RenderError("no template directory found (give --templates DIR)")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader([str(d) for d in dirs]),
                             undefined=jinja2.StrictUndefined, autoescape=False,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(ipsec=ipsec_value, ipsec_word=ipsec_word, ipsec_secret=ipsec_secret)
    return env


def _node(cfg: Config) -> NodeConfig:
    if cfg.node is None:
        raise RenderError(f"{cfg.source}: no `node:` section to render from")
    return cfg.node


def _context(cfg: Config, libreswan: int = 4) -> dict[str, Any]:
    return {"node": _node(cfg), "source": cfg.source, "spool": str(cfg.spool_dir),
            "event_socket": cfg.event_socket or str(cfg.state_dir / "nhrp-events.sock"),
            "libreswan": libreswan}


def libreswan_major(cfg: Config, ipsec: str | None = None) -> int:
    """The libreswan major version the conns are for: `pluto: version:`, else asked.

    Keywords differ: 4.x refuses `keyexchange=ikev2`, 5.x renamed `ikev2=insist` to it
    (and logs a warning for every conn loaded with the old spelling).
    """
    if cfg.libreswan_version != "auto":
        return int(cfg.libreswan_version)
    cmd = ipsec or cfg.ipsec
    try:
        r = subprocess.run([cmd, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RenderError(f"cannot ask `{cmd} --version` which libreswan this is ({exc}); "
                          "set `pluto: version: 4` or `5`") from None
    from .errors import PlutoError
    from .pluto import parse_version
    try:
        return parse_version(r.stdout + r.stderr)[0]
    except PlutoError as exc:
        raise RenderError(f"{exc}; set `pluto: version: 4` or `5`") from None


def render_ipsec(cfg: Config, templates: str | None = None, libreswan: int = 4) -> str:
    return environment(templates).get_template("ipsec.conf.j2").render(
        **_context(cfg, libreswan))


def render_frr(cfg: Config, templates: str | None = None) -> str:
    return environment(templates).get_template("frr.conf.j2").render(**_context(cfg))


def render_secrets(cfg: Config, templates: str | None = None) -> str:
    node = _node(cfg)
    if node.auth != "psk":
        raise RenderError("ipsec.secrets is only rendered for PSK auth (certificates live in NSS)")
    return environment(templates).get_template("ipsec.secrets.j2").render(**_context(cfg))


def render_peers(ipsec_conf: str, peers: list[tuple[str, str, str, str | None]],
                 templates: str | None = None) -> str:
    """The per-peer conns file the initiate code maintains: [(name, profile, remote,
    local)]; local (left=) only with a dynamic local address."""
    items = [{"name": n, "profile": p, "remote": r, "local": loc} for n, p, r, loc in peers]
    tpl = environment(templates).get_template("peers.conf.j2")
    return tpl.render(ipsec_conf=ipsec_conf, peers=items)


def check_ipsec(text: str, profile: str, ipsec: str = "ipsec",
                templates: str | None = None, dynamic: bool = False) -> list[str]:
    """Problems libreswan's parser reports for `text` (+ a sample per-peer conn, with
    left= when the local address is dynamic)."""
    sample = environment(templates).get_template("peer.conf.j2").render(
        name=f"{profile}-192-0-2-99", profile=profile, remote="192.0.2.99",
        local="192.0.2.98" if dynamic else None)
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write(text + "\n" + sample)
        path = f.name
    try:
        r = subprocess.run([ipsec, "addconn", "--config", path, "--checkconfig"],
                           capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise RenderError(f"{ipsec}: not found; install libreswan to --check") from None
    finally:
        os.unlink(path)
    problems = [l for l in r.stderr.replace(path, "<rendered>").splitlines() if l.strip()]
    if r.returncode != 0 and not problems:
        problems.append(f"ipsec addconn --checkconfig exited {r.returncode}")
    return problems

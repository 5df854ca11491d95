"""`nhrpbridge install`: the hook, the systemd unit, tmpfiles.d and templates in place.

Why: `pip install` puts the hook and the templates under the Python prefix, where
neither pluto's leftupdown= nor systemd looks; an operator should not copy five files
by hand and get a mode wrong.

Strategy: `plan()` decides, from the files this copy of nhrpbridge carries (the source
checkout, or `<sys data>/share/nhrpbridge` and `<sys data>/libexec/nhrpbridge` of an
installed wheel), what goes where under PREFIX (and DESTDIR, for packaging); `apply()`
writes only what differs (content or mode), each file through a temporary name and a
rename, so running it twice changes nothing and a crash leaves no half-written file.
The unit's ExecStart/ExecReload name the `nhrpbridge` this command runs from.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from .errors import InstallError

__all__ = ["Item", "apply", "command", "plan", "sources"]

SAFE_PATH = re.compile(r"[A-Za-z0-9_./+-]+")


@dataclass(frozen=True)
class Item:
    what: str             # hook, unit, tmpfiles, template
    path: Path            # where it belongs on the system
    target: Path          # where it is written (DESTDIR included)
    content: bytes
    mode: int

    def state(self) -> str:
        """installed (new), updated (differs), unchanged."""
        try:
            st = self.target.stat()
            same = self.target.read_bytes() == self.content and st.st_mode & 0o7777 == self.mode
        except FileNotFoundError:
            return "installed"
        except OSError as exc:
            raise InstallError(f"{self.target}: {exc.strerror}") from None
        return "unchanged" if same else "updated"


def sources() -> dict[str, Path]:
    """hook, unit, tmpfiles and templates (a directory) this copy carries."""
    checkout = Path(__file__).resolve().parents[1]
    data = Path(sysconfig.get_path("data"))
    if (checkout / "setup.cfg").exists():
        found = {"hook": checkout / "hooks" / "nhrpbridge-updown",
                 "unit": checkout / "samples" / "nhrpbridge.service",
                 "tmpfiles": checkout / "samples" / "nhrpbridge.tmpfiles",
                 "templates": checkout / "templates"}
    else:
        share = data / "share" / "nhrpbridge"
        found = {"hook": data / "libexec" / "nhrpbridge" / "nhrpbridge-updown",
                 "unit": share / "systemd" / "nhrpbridge.service",
                 "tmpfiles": share / "systemd" / "nhrpbridge.tmpfiles",
                 "templates": share / "templates"}
    missing = [f"{k} ({p})" for k, p in found.items() if not p.exists()]
    if missing:
        raise InstallError("this copy of nhrpbridge lacks " + ", ".join(missing))
    return found


def command() -> str:
    """How the unit starts this nhrpbridge: its console script, or python -m."""
    script = shutil.which("nhrpbridge")
    argv0 = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "nhrpbridge" and argv0.is_file():
        script = str(argv0)
    cmd = script or f"{sys.executable} -m nhrpbridge"
    if not all(SAFE_PATH.fullmatch(part) for part in cmd.split(" ")):
        raise InstallError(f"{cmd!r} cannot be written into a systemd unit safely")
    return cmd


def plan(prefix: str = "/usr/local", destdir: str = "", config: str = "",
         found: dict[str, Path] | None = None, cmd: str | None = None) -> list[Item]:
    """What goes where; nothing is written."""
    if not prefix.startswith("/") or not SAFE_PATH.fullmatch(prefix):
        raise InstallError(f"--prefix {prefix!r} must be an absolute path of plain characters")
    if config and (not config.startswith("/") or not SAFE_PATH.fullmatch(config)):
        raise InstallError(f"--config {config!r} must be an absolute path of plain characters")
    found = found or sources()
    root = Path(destdir or "/")
    pre = Path(prefix)
    unit = _read(found["unit"]).decode()
    unit = unit.replace("/usr/bin/nhrpbridge", cmd or command())
    if config:
        unit = unit.replace("/etc/nhrpbridge/nhrpbridge.yaml", config)
    files = [("hook", pre / "libexec" / "nhrpbridge" / "updown", _read(found["hook"]),
              0o755),
             ("unit", pre / "lib" / "systemd" / "system" / "nhrpbridge.service", unit.encode(),
              0o644),
             ("tmpfiles", pre / "lib" / "tmpfiles.d" / "nhrpbridge.conf",
              _read(found["tmpfiles"]), 0o644)]
    for t in sorted(found["templates"].glob("*.j2")):
        files.append(("template", pre / "share" / "nhrpbridge" / "templates" / t.name,
                      _read(t), 0o644))
    return [Item(what, path, root / str(path).lstrip("/"), content, mode)
            for what, path, content, mode in files]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror}") from None


def apply(items: list[Item], dry_run: bool = False) -> list[tuple[Item, str]]:
    """Write what differs; return (item, installed|updated|unchanged) for each."""
    done: list[tuple[Item, str]] = []
    for item in items:
        state = item.state()
        if state != "unchanged" and not dry_run:
            try:
                item.target.parent.mkdir(parents=True, exist_ok=True)
                tmp = item.target.with_name(f".{item.target.name}.tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                             item.mode)
                with os.fdopen(fd, "wb") as f:
                    f.write(item.content)
                os.chmod(tmp, item.mode)
                os.replace(tmp, item.target)
            except OSError as exc:
                raise InstallError(f"{exc.filename or item.target}: {exc.strerror} "
                                   f"(installed so far: {len(done)} files)") from None
        done.append((item, state))
    return done

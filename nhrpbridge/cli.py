"""The `nhrpbridge` command. Exit codes: 0 ok, 1 failure or invalid config,
2 usage, 3 daemon unreachable."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .cliparser import build_parser
from .config import DEFAULT_CONFIG, Config, load_config
from .display import format_event, format_status
from .errors import ConfigError, DaemonUnreachable, NhrpBridgeError

__all__ = ["main"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    # peer IDs may carry bytes that are not UTF-8 (kept as surrogate escapes): print
    # them as \xNN rather than die on them
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_FAIL
    except BrokenPipeError:
        return EXIT_OK


# ---- commands ------------------------------------------------------------------

def _config_for(args: argparse.Namespace) -> Config:
    path = getattr(args, "config", None)
    state_dir = getattr(args, "state_dir", None)
    if path:
        cfg = load_config(path)
    elif state_dir:
        cfg = Config()
    elif os.path.exists(DEFAULT_CONFIG):
        cfg = load_config(DEFAULT_CONFIG)
    else:
        cfg = Config()
    if state_dir:
        cfg = Config.for_state_dir(state_dir, cfg)
    return cfg


def cmd_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .assemble import Options, build_daemon
    from .systemd import setup_logging
    if not args.config and not args.state_dir and not os.path.exists(DEFAULT_CONFIG):
        print(f"nhrpbridge serve: no {DEFAULT_CONFIG}; give -c FILE or --state-dir DIR",
              file=sys.stderr)
        return EXIT_USAGE
    names = {"nhrp_event_socket": "event_socket"}     # option -> config field, where they differ

    def config() -> Config:
        """The file (if any) with the command line on top: at start and on each reload."""
        return replace(_config_for(args), **{names.get(arg, arg): getattr(args, arg) for arg in (
            "log_level", "pluto_log", "ipsec", "ipsec_conf", "pluto_rundir", "vici_socket",
            "nhrp_event_socket", "cert_store") if getattr(args, arg, None)})
    cfg = config()
    setup_logging(cfg.log_level)
    has_file = bool(args.config) or (not args.state_dir and os.path.exists(DEFAULT_CONFIG))
    daemon = build_daemon(cfg, Options(policy=args.policy, pluto=not args.no_pluto),
                          config_loader=config if has_file else None)
    try:
        asyncio.run(daemon.run())
    except (OSError, NhrpBridgeError) as exc:
        logging.getLogger("nhrpbridge").error("cannot start: %s", exc)
        return EXIT_FAIL
    return EXIT_OK


def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return args.socket
    return str(_config_for(args).api_socket)


def _client(args: argparse.Namespace, timeout: float | None = 10.0):
    from .client import ApiClient
    return ApiClient(_socket_path(args), timeout=timeout)


def _unreachable(exc: Exception) -> int:
    print(f"nhrpbridge: {exc}", file=sys.stderr)
    return EXIT_UNREACHABLE


def cmd_status(args: argparse.Namespace) -> int:
    try:
        with _client(args) as c:
            req = {"connection": args.connection} if args.connection else {}
            reply = c.request("list", **req)
            bindings = c.request("bindings") if args.peers else {}
    except DaemonUnreachable as exc:
        return _unreachable(exc)
    if not reply.get("ok"):
        print(f"nhrpbridge: {reply.get('error', {}).get('message')}", file=sys.stderr)
        return EXIT_FAIL
    if args.peers:
        return _print_peers(args, reply, bindings.get("bindings", {}))
    if args.json:
        out = {k: reply[k] for k in ("links", "ike-sas", "child-sas", "seq")}
        print(json.dumps(out, indent=None, sort_keys=True))
        return EXIT_OK
    print(format_status(reply))
    return EXIT_OK


def _print_peers(args: argparse.Namespace, listing: dict[str, Any],
                 bindings: dict[str, dict[str, Any]]) -> int:
    import time

    from .peerview import format_peers, peer_rows
    from .vtysh import nhrpd_cache
    cache, note = nhrpd_cache(args.vtysh, args.vty_socket)
    rows = peer_rows(listing, bindings, cache, time.time())
    if args.json:
        print(json.dumps({"peers": rows, "nhrpd": note or "ok"}, sort_keys=True))
    else:
        print(format_peers(rows, note))
    return EXIT_OK


def cmd_events(args: argparse.Namespace) -> int:
    try:
        c = _client(args, timeout=None)
    except DaemonUnreachable as exc:
        return _unreachable(exc)
    with c:
        req: dict[str, Any] = {"op": "subscribe", "id": 1}
        if args.connection:
            req["connection"] = args.connection
        c.send(req)
        pushed = 0
        for msg in c.messages():
            if msg.get("type") == "reply":
                if not msg.get("ok"):
                    print(f"nhrpbridge: {msg['error']['message']}", file=sys.stderr)
                    return EXIT_FAIL
                continue
            print(json.dumps(msg, sort_keys=True) if args.json else format_event(msg), flush=True)
            if "seq" in msg and msg.get("type") != "synced":
                pushed += 1
                if args.count is not None and pushed >= args.count:
                    return EXIT_OK
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    problems: list[str] = []
    for path in [args.config, *args.files]:
        try:
            load_config(path)
        except ConfigError as exc:
            problems += [str(p) for p in exc.problems]
    if args.json:
        print(json.dumps({"ok": not problems, "problems": problems}))
    else:
        for p in problems:
            print(p)
        if not problems:
            print(f"{', '.join([args.config, *args.files])}: OK")
    return EXIT_FAIL if problems else EXIT_OK


def _control(args: argparse.Namespace, op: str, **req: Any) -> int:
    try:
        with _client(args, timeout=None) as c:
            reply = c.request(op, **{k: v for k, v in req.items() if v is not None})
    except DaemonUnreachable as exc:
        return _unreachable(exc)
    if getattr(args, "json", False):
        print(json.dumps(reply, sort_keys=True))
    elif reply.get("ok"):
        body = {k: v for k, v in reply.items() if k not in ("id", "ok", "type")}
        print(f"{op}: ok" + (f" {json.dumps(body, sort_keys=True)}" if body else ""))
    else:
        err = reply.get("error", {})
        print(f"{op}: {err.get('code')}: {err.get('message')}", file=sys.stderr)
    return EXIT_OK if reply.get("ok") else EXIT_FAIL


def cmd_initiate(args: argparse.Namespace) -> int:
    return _control(args, "initiate", connection=args.connection, **{"remote-host": args.host},
                    timeout=args.timeout)


def cmd_terminate(args: argparse.Namespace) -> int:
    return _control(args, "terminate", connection=args.connection,
                    **{"remote-host": args.host, "ike-id": args.ike_id})


def cmd_authorize(args: argparse.Namespace) -> int:
    try:
        with _client(args) as c:
            req = {"connection": args.connection, "remote-nbma": args.remote_nbma,
                   "gre-address": args.gre_address}
            if args.local_nbma:
                req["local-nbma"] = args.local_nbma
            reply = c.request("authorize", **req)
    except DaemonUnreachable as exc:
        return _unreachable(exc)
    if args.json:
        print(json.dumps(reply, sort_keys=True))
    elif reply.get("ok"):
        print(f"{reply['decision']}: {reply['reason']} (policy {reply['policy']})")
    else:
        print(f"authorize: {reply['error']['message']}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK if reply.get("accept") else EXIT_FAIL


def cmd_resync(args: argparse.Namespace) -> int:
    return _control(args, "resync")


def cmd_restart(args: argparse.Namespace) -> int:
    """Ask for the restart on one connection, then wait on it for the new program's hello:
    the connection is one of those handed over."""
    import time
    t0 = time.monotonic()
    try:
        with _client(args, timeout=args.timeout) as c:
            before = c.request("hello")
            reply = c.request("restart")
            if reply.get("ok"):
                after = c.request("hello")
    except DaemonUnreachable as exc:
        return _unreachable(exc)
    except OSError as exc:
        print(f"nhrpbridge restart: no answer from the new program: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if not reply.get("ok"):
        print(f"restart: {reply['error']['code']}: {reply['error']['message']}", file=sys.stderr)
        return EXIT_FAIL
    took = time.monotonic() - t0
    ok = after.get("started", 0) > before.get("started", 0)
    if args.json:
        print(json.dumps({"restarted": ok, "pid": after.get("pid"), "seconds": round(took, 3),
                          "server": after.get("server")}, sort_keys=True))
    elif ok:
        print(f"restarted: {after.get('server')}, pid {after.get('pid')}, {took:.2f} s; "
              "connections kept")
    else:
        print("restart: the daemon answered but did not restart (see its log)", file=sys.stderr)
    return EXIT_OK if ok else EXIT_FAIL


def cmd_reload(args: argparse.Namespace) -> int:
    try:
        with _client(args) as c:
            reply = c.request("reload")
    except DaemonUnreachable as exc:
        return _unreachable(exc)
    ok = bool(reply.get("ok") and reply.get("reloaded"))
    if args.json:
        print(json.dumps(reply, sort_keys=True))
    elif not reply.get("ok"):
        print(f"reload: {reply['error']['code']}: {reply['error']['message']}", file=sys.stderr)
    elif not reply.get("reloaded"):
        print("reload refused, the running configuration stays:", file=sys.stderr)
        for problem in reply.get("problems", []):
            print(f"  {problem}", file=sys.stderr)
    else:
        print(f"reloaded: changed in place: {', '.join(reply['changed']) or 'nothing'}")
        if reply["needs-restart"]:
            print(f"needs `nhrpbridge restart`: {', '.join(reply['needs-restart'])}")
    return EXIT_OK if ok else EXIT_FAIL


def cmd_render(args: argparse.Namespace) -> int:
    from .errors import RenderError
    from .render import check_ipsec, libreswan_major, render_frr, render_ipsec, render_secrets
    cfg = load_config(args.config)
    try:
        major = int(args.libreswan) if args.libreswan else libreswan_major(cfg, args.ipsec_cmd)
        ipsec_text = render_ipsec(cfg, args.templates, major)
        outputs = []
        if args.ipsec or not (args.frr or args.secrets):
            outputs.append((args.ipsec or "-", ipsec_text, 0o644))
        if args.frr:
            outputs.append((args.frr, render_frr(cfg, args.templates), 0o644))
        if args.secrets:
            outputs.append((args.secrets, render_secrets(cfg, args.templates), 0o600))
        if args.check and cfg.node is not None:
            problems = check_ipsec(ipsec_text, cfg.node.profile, args.ipsec_cmd or cfg.ipsec,
                                   args.templates, dynamic=cfg.node.nbma == "auto")
            if problems:
                for p in problems:
                    print(f"{args.config}: ipsec addconn --checkconfig: {p}", file=sys.stderr)
                return EXIT_FAIL
    except RenderError as exc:
        line = cfg.node.line if cfg.node else 1
        print(f"{args.config}:{line}: node: {exc}", file=sys.stderr)
        return EXIT_FAIL
    for out, text, mode in outputs:
        if out == "-":
            sys.stdout.write(text)
            continue
        tmp = f"{out}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, out)
    if args.check:
        print(f"{args.config}: rendered conns (libreswan {major}.x) pass ipsec addconn "
              "--checkconfig", file=sys.stderr)
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    from .replay import replay_file
    if not args.spool and not args.state_dir:
        print("nhrpbridge replay: give --spool DIR or --state-dir DIR", file=sys.stderr)
        return EXIT_USAGE
    spool = args.spool or str(Path(args.state_dir) / "spool")
    for path in args.files:
        try:
            n = replay_file(path, spool, args.delay)
        except (OSError, ValueError) as exc:
            print(f"nhrpbridge replay: {path}: {exc}", file=sys.stderr)
            return EXIT_FAIL
        print(f"{path}: {n} hook calls")
    return EXIT_OK


def cmd_install(args: argparse.Namespace) -> int:
    from .install import apply, plan
    try:
        done = apply(plan(args.prefix, args.destdir, args.config or ""), args.dry_run)
    except NhrpBridgeError as exc:
        print(f"nhrpbridge install: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        print(json.dumps({"dry-run": args.dry_run, "files": [
            {"what": i.what, "path": str(i.target), "mode": f"{i.mode:04o}", "state": st}
            for i, st in done]}))
        return EXIT_OK
    verb = {"installed": "would install", "updated": "would update"} if args.dry_run else {}
    for item, state in done:
        print(f"{verb.get(state, state):>13}  {item.target}  ({item.what}, {item.mode:04o})")
    hook = next(i.path for i, _ in done if i.what == "hook")
    print(f"next: leftupdown=\"{hook} --spool /run/nhrpbridge/spool\" (node.hook: {hook}); "
          "systemd-tmpfiles --create nhrpbridge.conf; systemctl daemon-reload; "
          "systemctl enable --now nhrpbridge")
    return EXIT_OK


def cmd_version(args: argparse.Namespace) -> int:
    print(f"nhrpbridge {__version__}")
    return EXIT_OK


_COMMANDS = {"serve": cmd_serve, "status": cmd_status, "events": cmd_events,
             "check-config": cmd_check_config, "initiate": cmd_initiate,
             "terminate": cmd_terminate, "resync": cmd_resync, "reload": cmd_reload, "restart": cmd_restart, "replay": cmd_replay, "render": cmd_render,
             "authorize": cmd_authorize, "install": cmd_install,
             "version": cmd_version}

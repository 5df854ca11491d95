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
from .config import DEFAULT_CONFIG, Config, load_config
from .configfields import LOG_LEVELS
from .display import format_event, format_status
from .errors import ConfigError, DaemonUnreachable, NhrpBridgeError

__all__ = ["main"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def _add_socket_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--socket", metavar="PATH", help="API socket (default: from the config, "
                   "/run/nhrpbridge/api.sock)")
    g.add_argument("--state-dir", metavar="DIR", help="talk to the daemon started with "
                   "`serve --state-dir DIR` (socket DIR/api.sock)")
    p.add_argument("-c", "--config", metavar="FILE", help=f"config file (default {DEFAULT_CONFIG})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nhrpbridge",
        description="Bridge libreswan (pluto) to FRR nhrpd: follows the updown hook and the "
                    "pluto log, keeps an SA database and serves it on unix sockets.",
        epilog="Run `nhrpbridge COMMAND --help` for each command's options.")
    parser.add_argument("--version", action="version", version=f"nhrpbridge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("serve", help="run the daemon in the foreground",
                       description="Run the daemon (foreground; logs to stderr / the journal).")
    p.add_argument("-c", "--config", metavar="FILE",
                   help=f"config file (default {DEFAULT_CONFIG}; optional with --state-dir)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="keep every runtime path under DIR: spool DIR/spool/, state "
                        "DIR/state.json, API socket DIR/api.sock; no config file needed, "
                        "runs unprivileged")
    p.add_argument("--log-level", choices=LOG_LEVELS)
    p.add_argument("--pluto-log", metavar="FILE|journald",
                   help="follow pluto's log: a file (ipsec.conf logfile=) or 'journald'")
    p.add_argument("--ipsec", metavar="CMD", help="the ipsec executable to run (default ipsec)")
    p.add_argument("--ipsec-conf", metavar="FILE",
                   help="ipsec.conf defining the profile templates (default /etc/ipsec.conf)")
    p.add_argument("--pluto-rundir", metavar="DIR", help="pluto's --rundir (whack --rundir)")
    p.add_argument("--no-pluto", action="store_true",
                   help="do not run whack at all (no reconciliation, no initiate/terminate)")
    p.add_argument("--vici-socket", metavar="PATH",
                   help="serve a VICI-compatible socket for nhrpd at PATH "
                        "(nhrpd uses /var/run/charon.vici)")
    p.add_argument("--nhrp-event-socket", metavar="PATH",
                   help="listen for nhrpd's `nhrp event socket` (authorize-binding)")
    p.add_argument("--cert-store", metavar="DIR", help="peer certificates (PEM/DER files)")
    p.add_argument("--policy", metavar="NAME", help="registration policy for every connection")

    p = sub.add_parser("status", help="show links and SAs",
                       description="Show links, IKE SAs and Child SAs from the daemon.")
    _add_socket_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object (links, ike-sas, child-sas)")
    p.add_argument("--connection", metavar="NAME", help="only this connection")

    p = sub.add_parser("events", help="follow the event stream",
                       description="Subscribe: print the current state, then every change.")
    _add_socket_args(p)
    p.add_argument("--json", action="store_true", help="one JSON message per line")
    p.add_argument("--connection", metavar="NAME", help="only this connection")
    p.add_argument("--count", type=int, metavar="N", help="exit after N pushed events")

    p = sub.add_parser("check-config", help="check a config file and report every problem",
                       description="Check a YAML config; print FILE:LINE: field: message "
                                   "for every problem; exit 1 if there is any.")
    p.add_argument("-c", "--config", metavar="FILE", default=DEFAULT_CONFIG)
    p.add_argument("files", nargs="*", metavar="FILE", help="more files to check")
    p.add_argument("--json", action="store_true")

    for name, hlp in (("initiate", "bring up the link of CONNECTION to HOST"),
                      ("terminate", "tear down CONNECTION (to HOST only, if given)")):
        p = sub.add_parser(name, help=hlp, description=hlp[0].upper() + hlp[1:] + ".")
        _add_socket_args(p)
        p.add_argument("connection", metavar="CONNECTION")
        p.add_argument("host", metavar="HOST", nargs="?" if name == "terminate" else None)
        p.add_argument("--json", action="store_true")
        if name == "initiate":
            p.add_argument("--timeout", type=float, metavar="SECONDS")
        else:
            p.add_argument("--ike-id", type=int, metavar="N", help="only this IKE SA uniqueid")

    p = sub.add_parser("authorize", help="dry-run the registration policy",
                       description="Would a registration of GRE_ADDRESS from REMOTE_NBMA on "
                                   "CONNECTION be accepted? Asks the daemon (nothing changes).")
    _add_socket_args(p)
    p.add_argument("connection", metavar="CONNECTION")
    p.add_argument("remote_nbma", metavar="REMOTE_NBMA")
    p.add_argument("gre_address", metavar="GRE_ADDRESS")
    p.add_argument("--local-nbma", metavar="ADDR")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("resync", help="reconcile the daemon with pluto now")
    _add_socket_args(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("render", help="write ipsec.conf / FRR config from the node section",
                       description="Render the libreswan conns, ipsec.secrets (PSK) and the FRR "
                                   "nhrpd interface from the `node:` section of the config, with "
                                   "jinja2 templates. Without outputs, ipsec.conf goes to stdout.")
    p.add_argument("-c", "--config", metavar="FILE", default=DEFAULT_CONFIG)
    p.add_argument("--ipsec", metavar="OUT", help="write the ipsec.conf stanzas here ('-': stdout)")
    p.add_argument("--frr", metavar="OUT", help="write the FRR nhrpd interface here ('-': stdout)")
    p.add_argument("--secrets", metavar="OUT", help="write ipsec.secrets here (PSK only; mode 0600)")
    p.add_argument("--check", action="store_true",
                   help="validate with libreswan's `ipsec addconn --checkconfig`; any message fails")
    p.add_argument("--templates", metavar="DIR", help="templates that override the shipped ones")
    p.add_argument("--ipsec-cmd", metavar="CMD", default=None,
                   help="ipsec executable for --check and the version (default: pluto: ipsec:)")
    p.add_argument("--libreswan", choices=["4", "5"],
                   help="write conns for this libreswan major version (default: `pluto: version:`, "
                        "or ask `ipsec --version`)")

    p = sub.add_parser("replay", help="run recorded updown calls through the hook",
                       description="Replay lab updown log lines (VERB=... CONN=... | PLUTO_*=...) "
                                   "through the real hook into a spool, as pluto would.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--spool", metavar="DIR", help="spool directory (default from --state-dir)")
    p.add_argument("--state-dir", metavar="DIR")
    p.add_argument("--delay", type=float, default=0.0, metavar="SECONDS",
                   help="pause between calls")

    p = sub.add_parser("version", help="print the version")
    return parser


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
    cfg = _config_for(args)
    names = {"nhrp_event_socket": "event_socket"}     # option -> config field, where they differ
    cfg = replace(cfg, **{names.get(arg, arg): getattr(args, arg) for arg in (
        "log_level", "pluto_log", "ipsec", "ipsec_conf", "pluto_rundir", "vici_socket",
        "nhrp_event_socket", "cert_store") if getattr(args, arg, None)})
    setup_logging(cfg.log_level)
    daemon = build_daemon(cfg, Options(policy=args.policy, pluto=not args.no_pluto))
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
    except DaemonUnreachable as exc:
        return _unreachable(exc)
    if not reply.get("ok"):
        print(f"nhrpbridge: {reply.get('error', {}).get('message')}", file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        out = {k: reply[k] for k in ("links", "ike-sas", "child-sas", "seq")}
        print(json.dumps(out, indent=None, sort_keys=True))
        return EXIT_OK
    print(format_status(reply))
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
                                   args.templates)
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


def cmd_version(args: argparse.Namespace) -> int:
    print(f"nhrpbridge {__version__}")
    return EXIT_OK


_COMMANDS = {"serve": cmd_serve, "status": cmd_status, "events": cmd_events,
             "check-config": cmd_check_config, "initiate": cmd_initiate,
             "terminate": cmd_terminate, "resync": cmd_resync, "replay": cmd_replay, "render": cmd_render,
             "authorize": cmd_authorize,
             "version": cmd_version}

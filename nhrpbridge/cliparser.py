"""The `nhrpbridge` command line: subcommands, options and their --help texts."""
from __future__ import annotations

import argparse

from . import __version__
from .config import DEFAULT_CONFIG
from .configfields import LOG_LEVELS

__all__ = ["build_parser"]


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

    p = sub.add_parser("status", help="show links and SAs, or one line per peer",
                       description="Show links, IKE SAs and Child SAs from the daemon. With "
                                   "--peers: one line per peer joining nhrpbridge's link and "
                                   "SAs with nhrpd's cache (vtysh 'show ip nhrp cache json') "
                                   "and the last registration decision.")
    _add_socket_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object (links, ike-sas, "
                   "child-sas; with --peers: {\"peers\": [...]})")
    p.add_argument("--connection", metavar="NAME", help="only this connection")
    p.add_argument("--peers", action="store_true", help="one line per peer (NBMA, GRE address, "
                   "link, IKE serials, Child SAs, up for, last rekey, nhrpd cache type, last "
                   "binding decision, ID)")
    p.add_argument("--vtysh", metavar="CMD", default="vtysh",
                   help="vtysh to ask nhrpd with (default vtysh; '' = do not ask nhrpd)")
    p.add_argument("--vty-socket", metavar="DIR", help="vtysh --vty_socket DIR (FRR's run "
                   "directory, when not the default)")

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

    p = sub.add_parser("restart", help="restart the daemon without dropping nhrpd or any client",
                       description="The running daemon execs the program on disk (an upgrade "
                                   "takes effect) with the same arguments and pid; its sockets, "
                                   "nhrpd's VICI connection, API subscribers and the nhrp event "
                                   "socket stay open, and no event is lost or doubled. Exit 0 "
                                   "once the new program answers.")
    _add_socket_args(p)
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="give up waiting for the new program after S seconds (default 120)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("reload", help="re-read the config file and the certificate store in place",
                       description="The daemon reads its config file again (as on SIGHUP): "
                                   "policies, prefixes, timeouts, the certificate store and the "
                                   "log level change at once; sockets, directories and the pluto "
                                   "log source need `nhrpbridge restart`, and the reply names "
                                   "them. A config with problems changes nothing (exit 1).")
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

    p = sub.add_parser("install", help="install the hook, systemd unit, tmpfiles.d entry and "
                       "templates", description="Place the updown hook "
                       "(PREFIX/libexec/nhrpbridge/updown), the systemd unit "
                       "(PREFIX/lib/systemd/system/nhrpbridge.service, starting this nhrpbridge), "
                       "the tmpfiles.d entry (PREFIX/lib/tmpfiles.d/nhrpbridge.conf) and the "
                       "render templates (PREFIX/share/nhrpbridge/templates). Only files that "
                       "differ are written: running it again changes nothing. Prints what it did.")
    p.add_argument("--prefix", default="/usr/local", help="where to install (default /usr/local; "
                   "systemd and tmpfiles.d read /usr/local/lib as well as /usr/lib)")
    p.add_argument("--destdir", default="", metavar="DIR",
                   help="stage everything under DIR (packaging); paths inside stay as for --prefix")
    p.add_argument("-c", "--config", metavar="FILE",
                   help="the config file the unit passes (default /etc/nhrpbridge/nhrpbridge.yaml)")
    p.add_argument("--dry-run", action="store_true", help="say what would change; write nothing")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("version", help="print the version")
    return parser

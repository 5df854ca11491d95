"""systemd's fd store: a crash (kill -9) under systemd does not drop nhrpd's VICI connection.

STAND-IN for systemd (not running here): a datagram socket plays $NOTIFY_SOCKET and keeps
the descriptors the daemon stores; the "restart" starts the next daemon the way systemd
does, with those descriptors at 3.. and LISTEN_FDS/LISTEN_FDNAMES/LISTEN_PID set.
"""
import os
import socket
import subprocess
import sys

from conftest import ROOT, run_hook, up_env, wait_until
from test_restart import _vici_events

from nhrpbridge.client import ApiClient
from nhrpbridge.protocol.vici import Packet, PacketType, encode_packet


class StandInSystemd:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.path = str(path)
        self.store = {}                  # name -> fd (what systemd would keep)
        self.messages = []

    def pump(self):
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, 4096, 16)
            except TimeoutError:
                return
            msg = data.decode()
            self.messages.append(msg)
            fields = dict(line.split("=", 1) for line in msg.splitlines() if "=" in line)
            if fields.get("FDSTORE") == "1":
                for fd in fds:
                    self.store.setdefault(fields["FDNAME"], []).append(fd)
            elif fields.get("FDSTOREREMOVE") == "1":
                for fd in self.store.pop(fields["FDNAME"], []):
                    os.close(fd)

    def start(self, state, vici):
        """Start (or restart) the service: the stored fds at 3.., as systemd passes them."""
        pairs = [(n, fd) for n, fds in self.store.items() for fd in fds]
        names, fds = [n for n, _ in pairs], [fd for _, fd in pairs]

        def place():
            high = [os.dup(fd) for fd in fds]
            for i, fd in enumerate(high):
                os.dup2(fd, 3 + i)
        env = dict(os.environ, NOTIFY_SOCKET=self.path, LISTEN_FDS=str(len(fds)),
                   LISTEN_FDNAMES=":".join(names))
        cmd = (f"LISTEN_PID=$$ exec {sys.executable} -m nhrpbridge serve --state-dir {state} "
               f"--no-pluto --vici-socket {vici}")
        return subprocess.Popen(["sh", "-c", cmd], cwd=ROOT, env=env, preexec_fn=place,
                                close_fds=False, stderr=open(f"{state}.log", "a"))


def test_crash_under_systemd_keeps_nhrpds_connection(sockdir):
    systemd = StandInSystemd(sockdir / "notify")
    state, vici = sockdir / "state", sockdir / "vici.sock"
    first = systemd.start(state, vici)
    try:
        wait_until(lambda: vici.exists() and (state / "api.sock").exists(), what="sockets")
        v = socket.socket(socket.AF_UNIX)
        v.settimeout(20)
        v.connect(str(vici))
        v.sendall(encode_packet(Packet(PacketType.EVENT_REGISTER, "child-updown")))
        assert _vici_events(v, 1)[0].type == PacketType.EVENT_CONFIRM
        systemd.pump()
        assert "READY=1" in systemd.messages
        assert sorted(systemd.store) == [f"listen{state}/api.sock", f"listen{vici}",
                                         "vici.2.child-updown"]
        first.kill()                                        # a crash
        first.wait(10)
        second = systemd.start(state, vici)                 # systemd: Restart=on-failure
        try:
            wait_until(lambda: (ApiClient(str(state / "api.sock")).request("hello")["pid"]
                                == second.pid), timeout=30, what="the next daemon")
            run_hook(up_env(peer="198.51.100.11", spi_in="0x11"), state / "spool", "--no-chain")
            (ev,) = _vici_events(v, 1)                      # the same connection, still served
            assert ev.name == "child-updown" and ev.message["dmvpn"]["remote-host"] == b"198.51.100.11"
            log = (sockdir / "state.log").read_text()
            assert "after a crash: 3 descriptors from systemd's fd store, 1 connections kept" in log
            # closing it for good removes it from the store, and the peer sees the end
            v.close()
            wait_until(lambda: (systemd.pump() or True) and "vici.2.child-updown" not in systemd.store,
                       what="FDSTOREREMOVE")
        finally:
            second.terminate()
            second.wait(10)
    finally:
        if first.poll() is None:
            first.kill()

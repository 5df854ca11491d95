"""A hub with 20,000 spokes whose certificates are in the store: nhrpd's list-sas dump.

Each IKE SA carries the peer's certificate (remote-cert-data, about 1.5 KB of DER), so
the dump is tens of megabytes: it must stream (never wait whole in the socket, where
a client's drop limit or the daemon's memory would meet it) and leave RSS bounded.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

from common import Daemon, row, spoke_env, step, write_record
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from nhrpbridge.protocol.vici import Packet, PacketType, encode_packet


def _store(path: Path, spokes: int) -> int:
    """One certificate per spoke (an RSA-2048 key, SANs: GRE IP and names), EC-signed
    by one CA so that 20,000 take seconds; returns the mean DER size."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "DMVPN Bench CA")])
    pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    path.mkdir()
    total = 0
    for i in range(spokes):
        subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "XX"),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "DMVPN Lab"),
                             x509.NameAttribute(NameOID.COMMON_NAME, f"spoke{i}.dmvpn.example")])
        san = [x509.IPAddress(ipaddress.ip_address(f"203.0.{i // 256 % 256}.{i % 256}"))]
        san += [x509.DNSName(f"spoke{i}-{k}.branch-offices.dmvpn.example") for k in range(20)]
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca)
                .public_key(pub).serial_number(i + 1)
                .not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=365))
                .add_extension(x509.SubjectAlternativeName(san), critical=False)
                .sign(ca_key, hashes.SHA256()))
        total += len(cert.public_bytes(Encoding.DER))
        (path / f"spoke{i}.pem").write_bytes(cert.public_bytes(Encoding.PEM))
    return total // spokes


def _dump(d: Daemon, slow: bool) -> tuple[float, int, float]:
    """(seconds, bytes, peak RSS growth MB) of one list-sas, read fast or slowly."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(d.vici)
    s.sendall(encode_packet(Packet(PacketType.EVENT_REGISTER, "list-sa")))
    s.recv(16)
    base = d.rss_mb()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], d.rss_mb())
            time.sleep(0.02)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    s.sendall(encode_packet(Packet(PacketType.CMD_REQUEST, "list-sas")))
    size = _read_dump(s, 0.002 if slow else 0.0)     # slow: 64 KiB every 2 ms, ~30 MB/s
    took = time.perf_counter() - t0
    stop.set()
    t.join()
    s.close()
    return took, size, peak[0] - base


def _read_dump(s: socket.socket, pause: float) -> int:
    """Bytes of a list-sas stream up to its CMD_RESPONSE, reading 64 KiB at a time."""
    size, buf = 0, bytearray()
    while True:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed during the dump")
        size += len(chunk)
        buf += chunk
        while len(buf) >= 5:
            length = int.from_bytes(buf[:4], "big")
            if len(buf) < 4 + length:
                break
            if buf[4] == PacketType.CMD_RESPONSE:
                return size
            del buf[:4 + length]
        if pause:
            time.sleep(pause)


def run(spokes: int = 20_000) -> None:
    print(f"list-sas with certificates: {spokes:,} spokes, each with its certificate in the store")
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        with step("make the certificates"):
            t0 = time.perf_counter()
            mean = _store(Path(tmp) / "peers", spokes)
            made = time.perf_counter() - t0
        state = Path(tmp) / "s"
        (state / "spool").mkdir(parents=True)
        for i in range(spokes):
            write_record(state / "spool", i + 1, spoke_env(i))
        with step("start the daemon with the records and the store"):
            t0 = time.perf_counter()
            d = Daemon(state, extra=["--cert-store", str(Path(tmp) / "peers")]).start(wait=300)
            started = time.perf_counter() - t0
        try:
            row(f"{spokes:,} certificates made (bench set-up)", f"{made:.1f} s",
                f"{mean} B DER each")
            row(f"start-up: {spokes:,} records + {spokes:,} certificates", f"{started:.1f} s")
            rss = d.rss_mb()
            row(f"daemon RSS, {spokes:,} peers with certificates", f"{rss:.0f} MB", "",
                "goal <= 400 MB", rss <= 400)
            with step("list-sas, fast reader"):
                took, size, grew = _dump(d, slow=False)
            row("list-sas with certificates (fast reader)", f"{took:.2f} s",
                f"{size / 1e6:.0f} MB, {size / took / 1e6:.0f} MB/s", "goal <= 4 s", took <= 4)
            with step("list-sas, slow reader"):
                took, size, grew = _dump(d, slow=True)
            row("list-sas to a slow reader (30 MB/s)", f"{took:.2f} s",
                f"{size / 1e6:.0f} MB")
            row("  daemon RSS growth meanwhile", f"{grew:.0f} MB",
                f"dump {size / 1e6:.0f} MB", "goal <= 16 MB (streamed)", grew <= 16)
        finally:
            d.stop()


if __name__ == "__main__":
    run()

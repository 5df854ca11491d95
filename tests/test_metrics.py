"""The Prometheus/OpenMetrics endpoint: what a scraper sees after things happened."""
import asyncio
import socket
from dataclasses import replace

import pytest
from conftest import run_hook, up_env, wait_until
from memory import MemoryDaemon
from prometheus_client.parser import text_string_to_metric_families
from test_nhrp_events import block, replies

from nhrpbridge.assemble import Options
from nhrpbridge.config import Config, load_config
from nhrpbridge.errors import ConfigError, ControlError, ErrorCode
from nhrpbridge.metrics import Facts, Metrics, TimedControl
from nhrpbridge.sadb import SaDatabase

S1, S3 = "198.51.100.11", "198.51.100.13"


@pytest.fixture
def hub(sockdir):
    cfg = replace(Config.for_state_dir(sockdir / "state"), event_socket=str(sockdir / "ev.sock"),
                  metrics_listen=str(sockdir / "metrics.sock"))
    d = MemoryDaemon(cfg, Options(policy="gre-prefix-by-peer-id", pluto=False)).start()
    yield d
    d.stop()


def scrape(d, request=b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"):
    s = d.connect(d.cfg.metrics_listen)
    s.sendall(request)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode(), body.decode()


def samples(body):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body) for s in fam.samples}


def test_links_events_and_decisions_are_counted(hub):
    run_hook(up_env(peer=S1), hub.state_dir / "spool", "--no-chain")
    run_hook(up_env(peer=S3, spi_in="0xb1", spi_out="0xb2"), hub.state_dir / "spool", "--no-chain")
    wait_until(lambda: len(hub.daemon.db.links) == 2, what="links")
    ev = hub.connect(hub.cfg.event_socket)
    ev.sendall(block(1, remote_nbma=S1) + block(2, remote_nbma=S3, remote_addr="203.0.113.13"))
    assert [r["result"] for r in replies(ev, 2)] == ["reject", "reject"]   # no prefixes set
    head, body = scrape(hub)
    assert head.startswith("HTTP/1.1 200 OK") and "text/plain" in head
    got = samples(body)
    assert got[("nhrpbridge_links", (("connection", "dmvpn"), ("state", "up")))] == 2
    assert got[("nhrpbridge_child_sas", (("connection", "dmvpn"),))] == 2
    assert got[("nhrpbridge_events_total", (("kind", "link-up"),))] == 2
    assert got[("nhrpbridge_bindings_total",
                (("decision", "reject"), ("reason", "unknown-peer-id")))] == 2
    assert got[("nhrpbridge_records_total", ())] == 2
    assert got[("nhrpbridge_spool_backlog", ())] == 0
    assert ("nhrpbridge_whack_calls_total", ()) not in got      # --no-pluto: no whack at all
    ev.close()


def test_openmetrics_when_the_scraper_asks_for_it(hub):
    head, body = scrape(hub, b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;"
                             b" version=1.0.0\r\n\r\n")
    assert "application/openmetrics-text" in head
    assert body.rstrip().endswith("# EOF")


@pytest.mark.parametrize("request_, status", [
    (b"POST /metrics HTTP/1.1\r\n\r\n", "405"),
    (b"GET /other HTTP/1.1\r\n\r\n", "404"),
    (b"garbage\r\n\r\n", "400"),
])
def test_bad_requests_get_an_http_error_and_the_next_scrape_works(hub, request_, status):
    head, body = scrape(hub, request_)
    assert head.split()[1] == status and body
    assert scrape(hub)[0].startswith("HTTP/1.1 200")


def test_a_scraper_that_sends_nothing_does_not_stop_the_others(hub):
    idle = hub.connect(hub.cfg.metrics_listen)          # connected, never sends a request
    assert scrape(hub)[0].startswith("HTTP/1.1 200")
    idle.close()


def test_tcp_listen(sockdir):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    cfg = replace(Config.for_state_dir(sockdir / "state"), metrics_listen=f"127.0.0.1:{port}")
    d = MemoryDaemon(cfg).start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK") and b"nhrpbridge_seq" in data
        assert f"metrics on http://127.0.0.1:{port}/metrics" in d.log_text()
    finally:
        d.stop()


@pytest.mark.parametrize("value, message", [
    ("localhost:9108", "neither HOST:PORT"),
    ("127.0.0.1:0", "port must be a number from 1 to 65535"),
    ("127.0.0.1", "neither HOST:PORT"),
    ("relative/metrics.sock", "neither HOST:PORT"),
])
def test_bad_listen_addresses_are_refused_with_the_field(tmp_path, value, message):
    f = tmp_path / "c.yaml"
    f.write_text(f"metrics:\n  listen: \"{value}\"\n")
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    assert f"{f}:2: metrics.listen:" in str(exc.value) and message in str(exc.value)


def test_ipv6_and_unix_listen_addresses_are_accepted(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("metrics:\n  listen: \"[::1]:9108\"\n")
    assert load_config(f).metrics_listen == "[::1]:9108"
    f.write_text("metrics:\n  listen: /run/nhrpbridge/metrics.sock\n  mode: \"0660\"\n")
    assert load_config(f).metrics_listen == "/run/nhrpbridge/metrics.sock"


class ControlStandIn:
    """Stand-in for the daemon's Control: initiate succeeds for one host, fails otherwise."""

    async def initiate(self, connection, remote, local, timeout, wait=True, shortcut=False):
        if remote != S1:
            raise ControlError("pluto said no", ErrorCode.PLUTO_ERROR)
        return {"initiated": True}


def test_initiates_are_counted_by_result_and_timed():
    m = Metrics(SaDatabase(), lambda: Facts())
    clock = iter([0.0, 0.2, 1.0, 4.0])
    timed = TimedControl(ControlStandIn(), m, clock=lambda: next(clock))  # type: ignore[arg-type]

    async def run():
        await timed.initiate("dmvpn", S1, None, None)
        with pytest.raises(ControlError):
            await timed.initiate("dmvpn", S3, None, None)
    asyncio.run(run())
    got = samples(m.exposition()[0].decode())
    assert got[("nhrpbridge_initiates_total", (("result", "ok"),))] == 1
    assert got[("nhrpbridge_initiates_total", (("result", "pluto-error"),))] == 1
    assert got[("nhrpbridge_initiate_seconds_count", ())] == 2
    assert got[("nhrpbridge_initiate_seconds_sum", ())] == pytest.approx(3.2)
    assert got[("nhrpbridge_initiate_seconds_bucket", (("le", "0.25"),))] == 1

"""Reliability against real failures: a real Mosquitto, a real TimescaleDB, `aquafleet ingest`.

Every test ends with the same check: each published message is stored exactly once.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request

import psutil  # type: ignore[import-untyped]
import pytest
from firmware_protocol import Telemetry

from tests.fix_mqtt import MakeMqttBroker
from tests.fix_pg import MakePgServer, _free_port
from tests.ingest.conftest import DEVICES, MakeIngest
from tests.ingest.fleet import (
    count,
    prepare_database,
    publish_all,
    scalar,
    telemetry,
    wait_until,
)

pytestmark = pytest.mark.slow


def _stream(n: int, devices: list[str] = DEVICES) -> list[Telemetry]:
    per_device = -(-n // len(devices))
    return [telemetry(d, seq) for seq in range(1, per_device + 1) for d in devices][:n]


def _assert_exactly_once(url: str, n: int) -> None:
    total, distinct = (
        scalar(url, "SELECT count(*) FROM telemetry"),
        scalar(url, "SELECT count(DISTINCT (device_id, boot, seq)) FROM telemetry"),
    )
    assert (total, distinct) == (n, n)
    assert count(url, "quarantine") == 0


def _publish_in_background(
    host: str, port: int, messages: list[Telemetry], rate: float
) -> threading.Thread:
    thread = threading.Thread(
        target=publish_all, args=(host, port, messages), kwargs={"pace_per_s": rate}, daemon=True
    )
    thread.start()
    return thread


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, name
    return float(match[1])


def test_kill_9_mid_stream_then_restart_loses_and_duplicates_nothing(
    ledger_url: str, make_mqtt_broker: MakeMqttBroker, make_ingest: MakeIngest
) -> None:
    broker = make_mqtt_broker()
    args = ("--client-id", "kill9", "--batch-ms", "20")
    n = 20_000
    first = make_ingest(ledger_url, broker.url, *args).start()
    publisher = _publish_in_background(broker.host, broker.port, _stream(n), rate=2500)

    wait_until(lambda: count(ledger_url, "telemetry") >= n // 3, message="a third stored")
    first.kill9()
    stored_at_kill = count(ledger_url, "telemetry")
    time.sleep(1)
    make_ingest(ledger_url, broker.url, *args).start()
    publisher.join(60)

    wait_until(lambda: count(ledger_url, "telemetry") >= n, timeout=60, message="all stored")
    time.sleep(0.5)  # a duplicate would show up now
    assert stored_at_kill < n
    _assert_exactly_once(ledger_url, n)


def test_database_down_20s_under_load_nothing_lost_memory_bounded(
    make_pg_server: MakePgServer, make_mqtt_broker: MakeMqttBroker, make_ingest: MakeIngest
) -> None:
    server = make_pg_server()
    url = server.url(server.create_database())
    prepare_database(url, DEVICES)
    broker = make_mqtt_broker()
    metrics_port = _free_port()
    max_inflight = 1000
    ingest = make_ingest(
        url, broker.url, "--client-id", "dbdown", "--max-inflight", str(max_inflight),
        "--batch-rows", "500", "--metrics-port", str(metrics_port),
    ).start()  # fmt: skip
    n = 30_000
    publisher = _publish_in_background(broker.host, broker.port, _stream(n), rate=1000)
    wait_until(lambda: count(url, "telemetry") >= 3000, message="traffic flowing")
    rss_before = ingest.rss_bytes()

    server.stop()
    rss, inflight = [], []
    down_until = time.monotonic() + 20
    while time.monotonic() < down_until:
        assert ingest.running()
        rss.append(ingest.rss_bytes())
        inflight.append(_metric(metrics_port, "aquafleet_ingest_inflight_messages"))
        time.sleep(0.5)
    server.start()

    publisher.join(60)
    wait_until(lambda: count(url, "telemetry") >= n, timeout=60, message="all stored")
    time.sleep(0.5)
    _assert_exactly_once(url, n)
    # About 20 000 messages arrived during the outage; ingest held at most its in-flight cap,
    # the broker the rest.
    assert max(inflight) <= max_inflight
    assert max(inflight) >= max_inflight * 0.5  # it did fill up, then stopped taking more
    assert max(rss) - rss_before < 40 * 1024 * 1024
    assert _metric(metrics_port, "aquafleet_ingest_database_errors_total") >= 1
    assert "database back after" in ingest.log()


def test_broker_restart_the_ingestor_reconnects_and_nothing_held_is_lost(
    ledger_url: str, make_mqtt_broker: MakeMqttBroker, make_ingest: MakeIngest
) -> None:
    broker = make_mqtt_broker()
    metrics_port = _free_port()
    args = ("--client-id", "brestart", "--metrics-port", str(metrics_port))
    # Register the session, then let the broker hold a backlog for it.
    make_ingest(ledger_url, broker.url, *args).start().terminate()
    n = 30_000
    publish_all(broker.host, broker.port, _stream(n))
    ingest = make_ingest(ledger_url, broker.url, *args).start()

    wait_until(lambda: count(ledger_url, "telemetry") > 0, message="draining started")
    broker.restart()  # with messages still queued and some in flight, unacknowledged

    wait_until(lambda: count(ledger_url, "telemetry") >= n, timeout=60, message="all stored")
    time.sleep(0.5)
    _assert_exactly_once(ledger_url, n)
    assert _metric(metrics_port, "aquafleet_ingest_broker_reconnects_total") >= 1
    assert ingest.running()


def test_two_workers_one_killed_and_restarted_the_union_is_complete(
    ledger_url: str, make_mqtt_broker: MakeMqttBroker, make_ingest: MakeIngest
) -> None:
    broker = make_mqtt_broker()
    ingest = make_ingest(
        ledger_url, broker.url, "--workers", "2", "--client-id", "pair", "--batch-ms", "20"
    ).start()
    wait_until(lambda: ingest.log().count("connected to") >= 2, message="both workers connected")
    n = 20_000
    publisher = _publish_in_background(broker.host, broker.port, _stream(n), rate=2500)

    wait_until(lambda: count(ledger_url, "telemetry") >= n // 3, message="a third stored")
    workers = psutil.Process(ingest.pid).children()
    victim = next(w for w in workers if "spawn_main" in " ".join(w.cmdline()))
    victim.kill()  # SIGKILL; the supervisor starts it again under the same client id
    publisher.join(60)

    wait_until(lambda: count(ledger_url, "telemetry") >= n, timeout=60, message="all stored")
    time.sleep(0.5)
    _assert_exactly_once(ledger_url, n)
    assert "restarting" in ingest.log()
    assert ingest.log().count("connected to") >= 3
    # both sessions took part
    assert scalar(ledger_url, "SELECT count(DISTINCT received_at) > 1 FROM telemetry")

"""`aquafleet ingest` from the command line: help, refusals, a first run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request

import psycopg
from firmware_protocol import Message, PresenceState

from tests.fix_mqtt import MosquittoBroker
from tests.fix_pg import _free_port
from tests.ingest.conftest import AQUAFLEET, DEVICES, MakeIngest
from tests.ingest.fleet import (
    Raw,
    ack,
    birth,
    count,
    fault_event,
    publish_all,
    status,
    telemetry,
    wait_until,
)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AQUAFLEET_")}
    clean.update(env or {})
    return subprocess.run(
        [str(AQUAFLEET), *args], env=clean, capture_output=True, text=True, timeout=60, check=False
    )


def test_help_lists_the_options() -> None:
    result = _run("ingest", "--help")

    assert result.returncode == 0
    for option in ("--workers", "--client-id", "--group", "--metrics-port", "--batch-rows",
                   "--batch-ms", "--no-shared", "--protocol"):  # fmt: skip
        assert option in result.stdout
    assert _run("broker", "credentials", "--help").returncode == 0


def test_without_a_broker_url_it_refuses_in_one_line() -> None:
    result = _run("ingest")

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "AQUAFLEET_BROKER_URL" in lines[0]


def test_a_bad_option_is_one_line() -> None:
    result = _run("ingest", "--workers", "0", env={"AQUAFLEET_BROKER_URL": "mqtt://127.0.0.1:1"})

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--workers" in result.stderr


def test_an_unreachable_database_is_one_line() -> None:
    port = _free_port()
    result = _run(
        "ingest",
        env={
            "AQUAFLEET_BROKER_URL": "mqtt://127.0.0.1:1",
            "AQUAFLEET_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/none",
        },
    )

    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "database" in result.stderr


def test_ingest_stores_every_kind_and_keeps_device_state(
    ledger_url: str, mqtt_broker: MosquittoBroker, make_ingest: MakeIngest
) -> None:
    metrics_port = _free_port()
    ingest = make_ingest(
        ledger_url,
        mqtt_broker.url,
        "--client-id",
        "cli-e2e",
        "--group",
        "cli-e2e",
        "--metrics-port",
        str(metrics_port),
        env={"AQUAFLEET_LOG_FORMAT": "json"},
    ).start()
    a, b = DEVICES[0], DEVICES[1]
    messages: list[Message | Raw] = [
        birth(a, seq=0, fw="2.4.0", config_version=9),
        status(a, PresenceState.ONLINE),
        *[telemetry(a, seq) for seq in range(1, 21)],
        fault_event(a, 21),
        ack(a, 22, "cmd-1"),
        birth(b, seq=0),
        telemetry(b, 1),
    ]

    publish_all(mqtt_broker.host, mqtt_broker.port, messages)

    wait_until(lambda: count(ledger_url, "message_keys") == 25, message="25 keyed messages")
    assert count(ledger_url, "telemetry") == 23  # 21 readings + the two births' readings
    assert count(ledger_url, "device_events", "kind = 'fault_raised' AND code = 'leak'") == 1
    assert count(ledger_url, "command_acks", "cmd_id = 'cmd-1' AND status = 'succeeded'") == 1
    assert count(ledger_url, "device_presence") == 1
    assert count(ledger_url, "quarantine") == 0
    with psycopg.connect(ledger_url) as conn:
        row = conn.execute(
            "SELECT firmware, config_version, config ->> 'hot_setpoint', presence, "
            "last_seen_at IS NOT NULL FROM device_state WHERE device_id = %s",
            (a,),
        ).fetchone()
    assert row == ("2.4.0", 9, "92.0", "online", True)

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        exposition = r.read().decode()
    assert "aquafleet_ingest_messages_received_total 26.0" in exposition
    assert 'aquafleet_ingest_messages_stored_total{kind="telemetry"} 21.0' in exposition
    assert "aquafleet_ingest_commit_seconds_count" in exposition
    assert "aquafleet_ingest_lag_seconds_bucket" in exposition
    assert "aquafleet_ingest_inflight_messages" in exposition

    assert ingest.terminate() == 0
    events = [json.loads(line) for line in ingest.log().splitlines() if line.startswith("{")]
    assert {"connected", "started", "stopped"} <= {e.get("event") for e in events}

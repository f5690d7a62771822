"""Lowering the number of workers loses nothing: a retired worker's session is drained, then ended.

Mosquitto gives an offline member of a shared subscription its share of the messages, queued in
its persistent session; this is what happens when ``--workers 3`` becomes ``--workers 1``.
"""

from __future__ import annotations

import time
import uuid

from aquafleet.db import Database
from ingest import IngestConfig, IngestWorker
from tests.fix_cli import RunCli
from tests.fix_mqtt import MosquittoBroker
from tests.ingest.conftest import DEVICES
from tests.ingest.fleet import count, publish_all, telemetry, wait_until


def test_retiring_the_sessions_of_dropped_workers_stores_their_share(
    ledger_url: str, mqtt_broker: MosquittoBroker, run_cli: RunCli
) -> None:
    base = f"retire-{uuid.uuid4().hex[:6]}"

    def config(client_id: str) -> IngestConfig:
        return IngestConfig(
            host=mqtt_broker.host, port=mqtt_broker.port, client_id=client_id, group=base,
            batch_ms=20,
        )  # fmt: skip

    # three workers ran once, and stopped: their sessions and group memberships stay
    for k in range(3):
        worker = IngestWorker(config(f"{base}-{k}"), Database(url=ledger_url))
        worker.start()
        worker.stop()
    remaining = IngestWorker(config(f"{base}-0"), Database(url=ledger_url))
    remaining.start()
    try:
        first = [telemetry(DEVICES[0], seq) for seq in range(1, 61)]
        publish_all(mqtt_broker.host, mqtt_broker.port, first)
        time.sleep(2)
        # the broker queued a share for the two workers no longer run
        assert count(ledger_url, "telemetry") < 60

        env = {"AQUAFLEET_DATABASE_URL": ledger_url, "AQUAFLEET_BROKER_URL": mqtt_broker.url}
        for k in (1, 2):
            result = run_cli(
                "ingest", "--retire-session", f"{base}-{k}", "--group", base, env=env, timeout=120
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout.startswith(f"retired session {base}-{k}: ")

        wait_until(lambda: count(ledger_url, "telemetry") == 60, message="the queued share stored")

        # and the retired sessions get nothing any more: the remaining worker gets everything
        second = [telemetry(DEVICES[0], seq) for seq in range(61, 91)]
        publish_all(mqtt_broker.host, mqtt_broker.port, second)
        wait_until(lambda: count(ledger_url, "telemetry") == 90, message="all of the second lot")
    finally:
        remaining.stop()


def test_retiring_needs_a_single_worker(run_cli: RunCli, mqtt_broker: MosquittoBroker) -> None:
    env = {"AQUAFLEET_BROKER_URL": mqtt_broker.url}

    result = run_cli("ingest", "--retire-session", "x-1", "--workers", "2", env=env)

    assert result.returncode == 2
    assert "--retire-session" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

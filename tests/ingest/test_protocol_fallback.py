"""Brokers without MQTT 5 or shared subscriptions: a plain subscription over MQTT 3.1.1."""

from __future__ import annotations

import paho.mqtt.client as mqtt

from aquafleet.db import Database
from ingest import IngestConfig, IngestWorker, Protocol
from simulators.embedded_broker import AmqttBroker
from tests.fix_mqtt import MakeMqttBroker
from tests.ingest.conftest import DEVICES, MakeIngest
from tests.ingest.fleet import count, publish_all, telemetry, wait_until


def test_in_process_against_amqtt_detects_3_1_1_and_stores(ledger_url: str) -> None:
    broker = AmqttBroker()
    broker.start()
    try:
        config = IngestConfig(
            host="127.0.0.1", port=broker.port, client_id="amqtt-ingest", shared=False,
            protocol=Protocol.AUTO, batch_ms=10,
        )  # fmt: skip
        worker = IngestWorker(config, Database(url=ledger_url))
        worker.start()
        try:
            assert worker.session.protocol_name == "3.1.1"
            messages = [telemetry(d, seq) for seq in range(1, 11) for d in DEVICES[:5]]
            publish_all("127.0.0.1", broker.port, messages, protocol=mqtt.MQTTv311)

            wait_until(lambda: worker.counters().stored == 50, message="50 stored")
            assert count(ledger_url, "telemetry") == 50
        finally:
            worker.stop()
    finally:
        broker.stop()


def test_cli_plain_subscription_over_3_1_1_keeps_its_session(
    ledger_url: str, make_mqtt_broker: MakeMqttBroker, make_ingest: MakeIngest
) -> None:
    broker = make_mqtt_broker()
    args = ("--no-shared", "--protocol", "3.1.1", "--client-id", "plain311")
    first = make_ingest(ledger_url, broker.url, *args).start()
    publish_all(broker.host, broker.port, [telemetry(DEVICES[0], s) for s in range(1, 101)])
    wait_until(lambda: count(ledger_url, "telemetry") == 100, message="100 stored")
    assert "MQTT 3.1.1" in first.log()
    assert first.terminate() == 0

    # Published while ingest is away: the broker keeps them for the clean_session=0 session.
    publish_all(broker.host, broker.port, [telemetry(DEVICES[0], s) for s in range(101, 201)])
    make_ingest(ledger_url, broker.url, *args).start()

    wait_until(lambda: count(ledger_url, "telemetry") == 200, message="200 stored")


def test_several_workers_need_the_shared_subscription(
    ledger_url: str, make_mqtt_broker: MakeMqttBroker, make_ingest: MakeIngest
) -> None:
    broker = make_mqtt_broker()
    ingest = make_ingest(ledger_url, broker.url, "--no-shared", "--workers", "2")
    ingest.start(wait_running=False)
    assert ingest.process is not None
    assert ingest.process.wait(30) == 2
    lines = ingest.log().strip().splitlines()
    assert len(lines) == 1
    assert "--no-shared" in lines[0]

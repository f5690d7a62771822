"""The demo's local brokers, and what the in-process one really supports."""

from __future__ import annotations

import socket
import threading
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from simulators.embedded_broker import (
    AmqttBroker,
    BrokerKind,
    MosquittoBroker,
    find_mosquitto,
    start_local_broker,
)

needs_mosquitto = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")


def connect(port: int, protocol: MQTTProtocolVersion) -> tuple[mqtt.Client, object]:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}", protocol=protocol
    )
    result: list[object] = []
    done = threading.Event()

    def on_connect(_c: object, _u: object, _f: object, reason: object, _p: object = None) -> None:
        result.append(reason)
        done.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert done.wait(10)
    return client, result[0]


def collect(client: mqtt.Client, topic_filter: str) -> list[bytes]:
    got: list[bytes] = []
    subscribed = threading.Event()
    client.on_message = lambda _c, _u, m: got.append(bytes(m.payload))
    client.on_subscribe = lambda *_: subscribed.set()
    client.subscribe(topic_filter, 1)
    assert subscribed.wait(10)
    return got


@pytest.fixture
def amqtt_broker():
    broker = AmqttBroker()
    broker.start()
    yield broker
    broker.stop()


def test_amqtt_refuses_mqtt5_and_accepts_311(amqtt_broker):
    assert not amqtt_broker.capabilities.mqtt5
    v5, reason = connect(amqtt_broker.port, mqtt.MQTTv5)
    assert "Unsupported protocol version" in str(reason)
    v5.loop_stop()
    v5.disconnect()
    v311, reason = connect(amqtt_broker.port, mqtt.MQTTv311)
    assert str(reason) == "Success"
    v311.disconnect()
    v311.loop_stop()


def test_amqtt_grants_a_shared_subscription_but_delivers_nothing_on_it(amqtt_broker):
    assert not amqtt_broker.capabilities.shared_subscriptions
    subscriber, _ = connect(amqtt_broker.port, mqtt.MQTTv311)
    shared = collect(subscriber, "$share/ingest/demo/#")
    plain_client, _ = connect(amqtt_broker.port, mqtt.MQTTv311)
    plain = collect(plain_client, "demo/#")
    publisher, _ = connect(amqtt_broker.port, mqtt.MQTTv311)
    publisher.publish("demo/x", b"hello", qos=1).wait_for_publish(10)
    deadline = threading.Event()
    for _ in range(50):
        if plain:
            break
        deadline.wait(0.05)
    assert plain == [b"hello"]
    assert shared == []
    for client in (subscriber, plain_client, publisher):
        client.disconnect()
        client.loop_stop()


def test_amqtt_stops_and_frees_its_port():
    broker = AmqttBroker()
    broker.start()
    port = broker.port
    broker.stop()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


@needs_mosquitto
def test_mosquitto_child_speaks_mqtt5_and_stops(tmp_path):
    broker = MosquittoBroker(tmp_path / "broker")
    assert broker.capabilities.mqtt5
    assert broker.capabilities.shared_subscriptions
    with broker:
        client, reason = connect(broker.port, mqtt.MQTTv5)
        assert str(reason) == "Success"
        client.disconnect()
        client.loop_stop()
        assert "max_queued_messages 0" in broker.config_file.read_text()
    with pytest.raises(OSError):  # noqa: PT011 - the port is closed, whatever the errno
        socket.create_connection(("127.0.0.1", broker.port), timeout=1).close()


@needs_mosquitto
def test_mosquitto_is_preferred_when_installed(tmp_path):
    broker = start_local_broker(tmp_path)
    try:
        assert broker.kind is BrokerKind.MOSQUITTO
        assert broker.url.startswith("mqtt://127.0.0.1:")
    finally:
        broker.stop()


def test_amqtt_on_request(tmp_path):
    broker = start_local_broker(tmp_path, prefer="amqtt")
    try:
        assert broker.kind is BrokerKind.AMQTT
    finally:
        broker.stop()

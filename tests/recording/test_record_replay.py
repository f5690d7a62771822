"""Recording from a real broker and replaying to it: what goes out is what came in."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from aquafleet.config import Settings
from simulators.embedded_broker import AmqttBroker
from simulators.recording import (
    BrokerConnectionError,
    Recorder,
    RecordingFormatError,
    RecordingReader,
)
from simulators.replay import Replayer


@dataclass
class Observer:
    """A subscriber that keeps (topic, payload, qos, retain) of what it receives."""

    client: mqtt.Client
    received: list[tuple[str, bytes, int, bool]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[str, bytes, int, bool]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.received) >= count, timeout)
        return list(self.received)


def _connect(url: str, *, v5: bool = True) -> mqtt.Client:
    host, port = url.removeprefix("mqtt://").split(":")
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"t-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
    )
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(host, int(port))
    client.loop_start()
    assert connected.wait(10)
    return client


@pytest.fixture
def root() -> str:
    # each test's own topic tree on the shared broker
    return f"rec-{uuid.uuid4().hex[:10]}"


def observe(url: str, topic_filter: str, *, v5: bool = True) -> Observer:
    client = _connect(url, v5=v5)
    observer = Observer(client)

    def on_message(_c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        with observer.arrived:
            observer.received.append((m.topic, bytes(m.payload), m.qos, bool(m.retain)))
            observer.arrived.notify_all()

    subscribed = threading.Event()
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    if v5:
        client.subscribe(topic_filter, options=SubscribeOptions(qos=1, retainAsPublished=True))
    else:
        client.subscribe(topic_filter, 1)
    assert subscribed.wait(10)
    return observer


@pytest.fixture
def publisher_factory() -> Iterator[list[mqtt.Client]]:
    clients: list[mqtt.Client] = []
    yield clients
    for client in clients:
        client.disconnect()
        client.loop_stop()


def settings(url: str, tmp_path: Path) -> Settings:
    return Settings(broker_url=url, state_dir=tmp_path / "state")


TRAFFIC = [
    # (delay before, subtopic, payload, qos, retain)
    (0.0, "dev-001/telemetry", b'{"seq": 1}', 1, False),
    (0.2, "dev-002/telemetry", b'{"seq": 1, "x": "\xe6\xb0\xb4"}', 1, False),
    (0.0, "dev-001/status", b'{"state": "lost"}', 1, True),
    (0.3, "dev-002/event", b"\x00\x01binary\xff", 0, False),
    (0.0, "dev-003/status", b"", 1, True),  # clears a retained message
]


def publish_traffic(url: str, root: str, clients: list[mqtt.Client]) -> None:
    publisher = _connect(url)
    clients.append(publisher)
    for delay, sub, payload, qos, retain in TRAFFIC:
        time.sleep(delay)
        publisher.publish(f"{root}/{sub}", payload, qos=qos, retain=retain).wait_for_publish(10)


def read_frames(path: Path) -> list[tuple[str, bytes, int, bool]]:
    with RecordingReader(path) as reader:
        return [(f.topic, f.payload, f.qos, f.retain) for f in reader]


def expected(root: str) -> list[tuple[str, bytes, int, bool]]:
    return [(f"{root}/{sub}", payload, qos, retain) for _, sub, payload, qos, retain in TRAFFIC]


@pytest.mark.parametrize("name", ["traffic.rec", "traffic.rec.gz"])
def test_record_then_replay_republishes_the_same_messages(
    mqtt_broker, tmp_path, root, publisher_factory, name
):
    url = mqtt_broker.url
    path = tmp_path / name
    # a retained presence published before the recorder starts is recorded, flagged retained
    first = _connect(url)
    publisher_factory.append(first)
    first.publish(
        f"{root}/dev-000/status", b'{"state":"online"}', qos=1, retain=True
    ).wait_for_publish(10)

    recorder = Recorder(settings(url, tmp_path), path, filters=[f"{root}/#"], max_messages=6)
    recorder.start()
    try:
        publish_traffic(url, root, publisher_factory)
        assert recorder.full.wait(10)
    finally:
        recorder.stop()
    recorded = read_frames(path)
    assert recorded == [(f"{root}/dev-000/status", b'{"state":"online"}', 1, True), *expected(root)]

    observer = observe(url, f"{root}/+/telemetry")
    observer_events = observe(url, f"{root}/+/event")
    try:
        result = Replayer(settings(url, tmp_path), path, speed=None).run()
        assert result.published == 6
        assert result.truncated is None
        telemetry = observer.wait_for(2)
        assert telemetry == [e for e in expected(root) if e[0].endswith("telemetry")]
        assert observer_events.wait_for(1) == [e for e in expected(root) if e[0].endswith("event")]
    finally:
        for client in (observer.client, observer_events.client):
            client.disconnect()
            client.loop_stop()
    # the replay left the retained presence as the recording had it
    late = observe(url, f"{root}/+/status")
    try:
        assert late.wait_for(2, timeout=2) == [
            (f"{root}/dev-000/status", b'{"state":"online"}', 1, True),
            (f"{root}/dev-001/status", b'{"state": "lost"}', 1, True),
        ]
    finally:
        late.client.disconnect()
        late.client.loop_stop()


def test_replay_scales_the_recorded_timing(mqtt_broker, tmp_path, root, publisher_factory):
    url = mqtt_broker.url
    path = tmp_path / "timed.rec"
    recorder = Recorder(settings(url, tmp_path), path, filters=[f"{root}/#"], max_messages=5)
    with recorder:
        publish_traffic(url, root, publisher_factory)
        assert recorder.full.wait(10)
    with RecordingReader(path) as reader:
        offsets = [f.offset_s for f in reader]
    span = offsets[-1] - offsets[0]
    assert 0.45 < span < 1.5

    started = time.monotonic()
    result = Replayer(settings(url, tmp_path), path, speed=0.5).run()
    assert time.monotonic() - started >= span / 0.5 * 0.95
    assert result.recorded_s == pytest.approx(span)

    started = time.monotonic()
    Replayer(settings(url, tmp_path), path, speed=4).run()
    assert time.monotonic() - started < span / 4 + 0.5


def test_record_and_replay_work_on_an_mqtt_311_only_broker(tmp_path, root, publisher_factory):
    broker = AmqttBroker()
    with broker:
        url = broker.url
        path = tmp_path / "amqtt.rec"
        recorder = Recorder(settings(url, tmp_path), path, filters=[f"{root}/#"], max_messages=5)
        with recorder:
            publisher = _connect(url, v5=False)
            publisher_factory.append(publisher)
            for _, sub, payload, qos, retain in TRAFFIC:
                publisher.publish(
                    f"{root}/{sub}", payload, qos=qos, retain=retain
                ).wait_for_publish(10)
            assert recorder.full.wait(10)
        # amqtt delivers at the subscription's QoS, so only topics and payloads are compared
        recorded = [(t, p) for t, p, _, _ in read_frames(path)]
        assert recorded == [(t, p) for t, p, _, _ in expected(root)]

        observer = observe(url, f"{root}/+/telemetry", v5=False)
        try:
            Replayer(settings(url, tmp_path), path, speed=None).run()
            # amqtt also hands retained messages to subscriptions they do not match
            with observer.arrived:
                observer.arrived.wait_for(
                    lambda: sum(m[0].endswith("telemetry") for m in observer.received) >= 2, 10
                )
            got = [m for m in observer.received if m[0].endswith("telemetry")]
            assert [(t, p) for t, p, _, _ in got] == [
                (t, p) for t, p, _, _ in expected(root) if t.endswith("telemetry")
            ]
        finally:
            observer.client.disconnect()
            observer.client.loop_stop()


def test_replay_refuses_a_foreign_file_before_connecting(tmp_path):
    path = tmp_path / "ledger.csv"
    path.write_text("device_id,class\n")
    with pytest.raises(RecordingFormatError, match="not an aquafleet recording"):
        Replayer(settings("mqtt://127.0.0.1:1", tmp_path), path).run()


def test_an_unreachable_broker_is_one_clear_error(tmp_path):
    with pytest.raises(BrokerConnectionError, match="cannot connect to the broker"):
        Recorder(settings("mqtt://127.0.0.1:1", tmp_path), tmp_path / "x.rec").start()

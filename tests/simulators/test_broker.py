"""The simulator through a real Mosquitto: per-device connections with real Wills, gateways,
commands over MQTT, and the same bytes as the in-memory run."""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from firmware_protocol import Command, Rebirth, encode, topic_for
from paho.mqtt.enums import CallbackAPIVersion

from simulators import (
    MemorySink,
    Simulation,
    SimulationConfig,
    generate_ledger,
    machines_from_ledger,
    parse_scenario,
)
from simulators.mqtt import BrokerAddress, MqttSink
from tests.fix_mqtt import MosquittoBroker
from tests.simulators.helpers import START_MS


class Subscriber:
    """Collects live (not retained) messages of the devices whose ids start with ``prefix``."""

    def __init__(self, broker: MosquittoBroker, prefix: str) -> None:
        self.prefix = prefix
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.on_connect = lambda c, *_: c.subscribe("aquafleet/v1/+/+", qos=1)
        client.on_subscribe = lambda *_: ready.set()
        client.on_message = self._on_message
        client.connect(broker.host, broker.port)
        client.loop_start()
        assert ready.wait(10)
        self.client = client

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        if m.retain or not m.topic.split("/")[2].startswith(self.prefix):
            return
        with self._lock:
            self.messages.append((m.topic, bytes(m.payload)))

    def wait_for(self, n: int, timeout: float = 30.0) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= n:
                    break
            time.sleep(0.05)
        time.sleep(0.2)  # anything beyond n would be a surplus: let it arrive
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _by_topic(messages: list[tuple[str, bytes]]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = defaultdict(list)
    for topic, payload in messages:
        out[topic].append(payload)
    return dict(out)


def _config(prefix: str, n: int = 6) -> SimulationConfig:
    machines = machines_from_ledger(generate_ledger(n, seed=5, id_prefix=prefix))
    ids = [m.device_id for m in machines]
    scenario = parse_scenario(
        {
            "faults": [{"fault": "leak", "devices": [ids[0]], "at": "+5m"}],
            "misbehaviours": [
                {"kind": "offline", "devices": [ids[1]], "at": "+10m", "duration": "5m"},
                {"kind": "flapping", "devices": [ids[2]], "at": 0,
                 "params": {"reconnects_per_hour": 60}},
                {"kind": "duplicate", "devices": [ids[3]], "at": 0},
            ],
        }
    )  # fmt: skip
    return SimulationConfig(
        machines=machines, start_ms=START_MS, duration_ms=30 * 60_000, seed=2, scenario=scenario
    )


@pytest.mark.parametrize("mode", ["per-device", "multiplexed"])
def test_broker_stream_is_the_in_memory_stream(mqtt_broker: MosquittoBroker, mode: str) -> None:
    prefix = f"B{uuid.uuid4().hex[:6].upper()}"
    config = _config(prefix)
    memory = MemorySink()
    Simulation(config, memory).run()
    subscriber = Subscriber(mqtt_broker, prefix)
    sink = MqttSink(
        BrokerAddress(mqtt_broker.host, mqtt_broker.port), mode=mode, gateways=2,
        gateway_prefix=f"{prefix}gw", start_ms=START_MS,
    )  # fmt: skip
    try:
        Simulation(config, sink).run()
    finally:
        sink.close()
    got = subscriber.wait_for(len(memory.messages))
    subscriber.close()
    expected = [(m.topic, m.payload) for m in memory.messages]
    gateway = {t: p for t, p in _by_topic(got).items() if "gw-" in t}
    machines = {t: p for t, p in _by_topic(got).items() if "gw-" not in t}
    # per machine the order is the protocol's; across machines connections interleave freely
    assert machines == _by_topic(expected)
    if mode == "multiplexed":
        states = [b'"online"' in p for payloads in gateway.values() for p in payloads]
        assert states == [True, False, True, False]  # two gateways, online then offline
    else:
        assert gateway == {}
    wills = [p for t, p in got if t.endswith("/status") and b'"lost"' in p]
    assert len(wills) >= 2  # the offline machine, and the flapping one at least once


def test_commands_over_mqtt_are_acknowledged(mqtt_broker: MosquittoBroker) -> None:
    prefix = f"C{uuid.uuid4().hex[:6].upper()}"
    config = _config(prefix, n=4)
    device = config.machines[0].device_id
    subscriber = Subscriber(mqtt_broker, prefix)
    sink = MqttSink(BrokerAddress(mqtt_broker.host, mqtt_broker.port), mode="per-device")
    sim = Simulation(config, sink)
    try:
        sink.send(sim.begin())
        command = Command(device_id=device, id="rb-1", ts=START_MS, expires_at=START_MS + 10**12,
                          body=Rebirth())  # fmt: skip
        subscriber.client.publish(topic_for(command), encode(command), qos=1)
        deadline = time.monotonic() + 10
        while sim.stats.commands == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
            sink.send(sim.tick())  # a tick takes in the commands that arrived
        sink.send(sim.finish())
    finally:
        sink.close()
    got = subscriber.wait_for(1)
    subscriber.close()
    acks = [p for t, p in got if t == f"aquafleet/v1/{device}/ack"]
    assert len(acks) == 1
    assert b'"cmd_id":"rb-1","status":"succeeded"' in acks[0]
    births = [p for t, p in got if t == f"aquafleet/v1/{device}/birth"]
    assert len(births) == 2  # the first connect, and the rebirth

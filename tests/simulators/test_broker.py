"""The simulator through a real Mosquitto: per-device connections with real Wills, gateways (the
ledger's and generated ones), commands over MQTT, and the same bytes as the in-memory run."""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from firmware_protocol import Command, PresenceState, Rebirth, Status, decode, encode, topic_for
from paho.mqtt.enums import CallbackAPIVersion

from simulators import (
    MemorySink,
    Simulation,
    SimulationConfig,
    gateway_assignment,
    generate_ledger,
    machines_from_ledger,
    parse_scenario,
    write_ledger_csv,
)
from simulators.mqtt import BrokerAddress, MqttSink
from tests.fix_cli import RunCli
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
        return self.wait_until(lambda messages: len(messages) >= n, timeout)

    def wait_until(
        self, done: Callable[[list[tuple[str, bytes]]], bool], timeout: float = 30.0
    ) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if done(self.messages):
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


def _statuses(
    messages: list[tuple[str, bytes]], device_id: str, *, at_ms: int = START_MS
) -> list[Status]:
    out = []
    for topic, payload in messages:
        if topic == f"aquafleet/v1/{device_id}/status":
            status = decode(topic, payload, received_at_ms=at_ms)
            assert isinstance(status, Status)
            out.append(status)
    return out


def _config(prefix: str, n: int = 6, gateways: int = 0) -> SimulationConfig:
    machines = machines_from_ledger(generate_ledger(n, seed=5, id_prefix=prefix, gateways=gateways))
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
    # generated gateways are the simulator's transport, not devices: they announce nothing
    assert gateway == {}
    wills = [p for t, p in got if t.endswith("/status") and b'"lost"' in p]
    assert len(wills) >= 2  # the offline machine, and the flapping one at least once


def test_machines_speak_through_the_ledgers_gateways(mqtt_broker: MosquittoBroker) -> None:
    prefix = f"G{uuid.uuid4().hex[:6].upper()}"
    config = _config(prefix, n=12, gateways=3)
    ids = [m.device_id for m in config.machines]
    # the last two machines are behind no gateway here: a generated gateway carries them
    gateway_of = gateway_assignment(config.machines[:-2])
    ledger_gateways: dict[str, list[str]] = defaultdict(list)
    for machine, gw_id in gateway_of.items():
        ledger_gateways[gw_id].append(machine)
    assert sorted(ledger_gateways) == [f"{prefix}-GW01", f"{prefix}-GW02", f"{prefix}-GW03"]
    memory = MemorySink()
    Simulation(config, memory).run()
    subscriber = Subscriber(mqtt_broker, prefix)
    sink = MqttSink(
        BrokerAddress(mqtt_broker.host, mqtt_broker.port), mode="multiplexed", gateways=1,
        gateway_prefix=f"{prefix}gw", start_ms=START_MS, gateway_of=gateway_of,
    )  # fmt: skip
    try:
        Simulation(config, sink).run()
    finally:
        sink.close()
    # the 3 ledger gateways announce themselves online, then offline; the generated one that
    # carries the last two machines announces nothing
    got = subscriber.wait_for(len(memory.messages) + 2 * 3)
    subscriber.close()
    expected_gateways = dict(ledger_gateways)
    for gw_id, machines in expected_gateways.items():
        statuses = _statuses(got, gw_id)
        assert [s.state for s in statuses] == [PresenceState.ONLINE, PresenceState.OFFLINE]
        assert all(sorted(s.serves) == sorted(machines) for s in statuses), gw_id
    by_topic = _by_topic(got)
    speakers = {topic.split("/")[2] for topic in by_topic}
    assert speakers == set(ids) | set(expected_gateways)
    of_machines = {t: p for t, p in by_topic.items() if t.split("/")[2] in ids}
    assert of_machines == _by_topic([(m.topic, m.payload) for m in memory.messages])


def test_simulate_multiplexed_uses_the_ledgers_gateways(
    run_cli: RunCli, tmp_path: Path, mqtt_broker: MosquittoBroker
) -> None:
    prefix = f"L{uuid.uuid4().hex[:6].upper()}"
    ledger = generate_ledger(9, seed=4, id_prefix=prefix, gateways=2)
    path = tmp_path / "fleet.csv"
    write_ledger_csv(ledger, path)
    everyone = Subscriber(mqtt_broker, "")
    result = run_cli(
        "simulate", "--ledger", str(path), "--connection", "multiplexed",
        "--as-fast-as-possible", "--duration", "10m", "--broker-url", mqtt_broker.url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    gateways = [f"aquafleet/v1/{prefix}-GW01/status", f"aquafleet/v1/{prefix}-GW02/status"]
    got = everyone.wait_until(lambda messages: sum(t in gateways for t, _p in messages) >= 4)
    everyone.close()
    gateway_statuses = {
        topic.split("/")[2] for topic, _p in got if "-GW" in topic or "simgw" in topic
    }
    # the ledger's gateways carry every machine; no generated gateway connects
    assert gateway_statuses == {f"{prefix}-GW01", f"{prefix}-GW02"}
    for gw_id in gateway_statuses:
        serves = tuple(sorted(d.device_id for d in ledger.devices if d.gateway_id == gw_id))
        statuses = _statuses(got, gw_id, at_ms=int(time.time() * 1000))
        assert [s.serves for s in statuses] == [serves, serves]
    speakers = {topic.split("/")[2] for topic, _p in got if topic.split("/")[2].startswith(prefix)}
    assert speakers == {d.device_id for d in ledger.devices} | gateway_statuses


@pytest.mark.parametrize(("mode", "gateways"), [("per-device", 0), ("multiplexed", 2)])
def test_commands_over_mqtt_are_acknowledged(
    mqtt_broker: MosquittoBroker, mode: str, gateways: int
) -> None:
    prefix = f"C{uuid.uuid4().hex[:6].upper()}"
    config = _config(prefix, n=4, gateways=gateways)
    device = config.machines[0].device_id
    subscriber = Subscriber(mqtt_broker, prefix)
    sink = MqttSink(
        BrokerAddress(mqtt_broker.host, mqtt_broker.port), mode=mode, start_ms=START_MS,
        gateway_of=gateway_assignment(config.machines),
    )  # fmt: skip
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
    assert len(acks) == 1  # one connection carries the machine, so one delivery of the command
    assert b'"cmd_id":"rb-1","status":"succeeded"' in acks[0]
    births = [p for t, p in got if t == f"aquafleet/v1/{device}/birth"]
    assert len(births) == 2  # the first connect, and the rebirth

"""The production broker configuration, enforced by a real Mosquitto.

The broker runs ingest/broker/mosquitto.conf as shipped, with only the machine-specific lines
changed (port, file paths, no TLS certificates), and the password file and ACL that
`aquafleet broker credentials` writes from the ledger. A test-only observer account that may
read everything is added to a copy of the ACL, to see what really got through.
"""

from __future__ import annotations

import csv
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ingest.broker import ACL_FILE, COMMANDER_USER, INGEST_USER, MOSQUITTO_CONF, mosquitto_hash
from tests.fix_mqtt import MosquittoBroker, find_mosquitto
from tests.ingest.conftest import AQUAFLEET, DEVICES, MakeIngest
from tests.ingest.fleet import as_raw, count, telemetry, wait_until

A, B, C = DEVICES[0], DEVICES[1], DEVICES[2]
GATEWAY = "GW-CAMPUS-01"  # the ledger puts A and B behind it
OBSERVER = "_observer"


class ProductionBroker(MosquittoBroker):
    """Mosquitto with the shipped production configuration, adapted to a test machine."""

    def __init__(self, credentials_dir: Path) -> None:
        self.credentials_dir = credentials_dir
        super().__init__()

    def write_config(self, **_: object) -> None:
        text = MOSQUITTO_CONF.read_text()
        text = text.replace(
            "/etc/mosquitto/aquafleet.passwd", str(self.credentials_dir / "aquafleet.passwd")
        )
        text = text.replace("/etc/mosquitto/aquafleet.acl", str(self.credentials_dir / "test.acl"))
        text = text.replace("/var/lib/mosquitto/", f"{self.data_dir}/")
        text = re.sub(r"(?m)^listener 8883$", f"listener {self.port} {self.host}", text)
        text = re.sub(r"(?m)^(certfile|keyfile|cafile|tls_version) .*$", "", text)
        text = text.replace("log_dest syslog", "log_dest stderr")
        # As root Mosquitto would switch to its own user, which cannot read the test's files.
        self.config_file.write_text("user root\n" + text)


def _credentials(tmp_path: Path, database_url: str) -> tuple[Path, dict[str, str]]:
    import os
    import subprocess

    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE devices SET gateway_id = %s WHERE device_id = ANY(%s)", (GATEWAY, [A, B])
        )

    out = tmp_path / "broker"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AQUAFLEET_")}
    env.update({"AQUAFLEET_DATABASE_URL": database_url, "AQUAFLEET_STATE_DIR": str(tmp_path)})
    result = subprocess.run(
        [str(AQUAFLEET), "broker", "credentials", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with (out / "credentials.csv").open() as f:
        rows = list(csv.reader(f))[1:]
    passwords = {user: password for user, password in rows}
    # The test's observer, which may read everything.
    passwords[OBSERVER] = "observer-secret"
    with (out / "aquafleet.passwd").open("a") as f:
        f.write(f"{OBSERVER}:{mosquitto_hash('observer-secret')}\n")
    (out / "test.acl").write_text(
        f"user {OBSERVER}\ntopic read #\n\n" + (out / "aquafleet.acl").read_text()
    )
    return out, passwords


@pytest.fixture
def secured(tmp_path: Path, ledger_url: str) -> Iterator[tuple[ProductionBroker, dict[str, str]]]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto not installed")
    out, passwords = _credentials(tmp_path, ledger_url)
    broker = ProductionBroker(out)
    try:
        broker.start()
        yield broker, passwords
    finally:
        broker.cleanup()


class Client:
    """A paho client that records what it receives and the broker's PUBACK reason codes."""

    def __init__(self, broker: MosquittoBroker, user: str | None, password: str | None) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.puback: dict[int, ReasonCode] = {}
        self.connack: ReasonCode | None = None
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"t-{user}-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5,
        )  # fmt: skip
        if user is not None:
            self.client.username_pw_set(user, password)
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_connect = self._on_connect
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        wait_until(lambda: self.connack is not None, 10, message="CONNACK")

    def _on_connect(self, c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: object) -> None:
        self.connack = rc

    def _on_message(self, c: mqtt.Client, u: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append((message.topic, bytes(message.payload)))

    def _on_publish(
        self, c: mqtt.Client, u: object, mid: int, rc: ReasonCode, p: Properties
    ) -> None:
        self.puback[mid] = rc

    def subscribe(self, topic: str) -> ReasonCode:
        """Subscribe; the broker's SUBACK reason code."""
        codes: list[ReasonCode] = []
        done = threading.Event()

        def on_subscribe(
            c: mqtt.Client, u: object, mid: int, rcs: list[ReasonCode], p: object
        ) -> None:
            codes.extend(rcs)
            done.set()

        self.client.on_subscribe = on_subscribe
        self.client.subscribe(topic, qos=1)
        assert done.wait(10)
        return codes[0]

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        wait_until(lambda: info.mid in self.puback, 10, message="PUBACK")
        return self.puback[info.mid]

    def topics(self) -> list[str]:
        with self._lock:
            return [t for t, _ in self.received]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_credentials_cover_the_ledger_and_keep_issued_passwords(
    tmp_path: Path, ledger_url: str
) -> None:
    out, first = _credentials(tmp_path, ledger_url)
    _, second = _credentials(tmp_path, ledger_url)

    assert set(DEVICES) | {GATEWAY, INGEST_USER, COMMANDER_USER} <= set(first)
    assert first == second
    assert (out / "credentials.csv").stat().st_mode & 0o777 == 0o600
    assert (out / "aquafleet.passwd").stat().st_mode & 0o777 == 0o600
    acl = (out / "aquafleet.acl").read_text()
    assert acl.startswith(ACL_FILE.read_text())
    assert f"user {GATEWAY}\ntopic write aquafleet/v1/{A}/birth" in acl


def _attempt(broker: MosquittoBroker, user: str, password: str, topic: str) -> ReasonCode:
    """Publish once from a fresh connection: Mosquitto 2.0 answers a refused publish with
    PUBACK "Not authorized" and then drops the connection."""
    client = Client(broker, user, password)
    try:
        return client.publish(topic, as_raw(telemetry(A, 99)).payload)
    finally:
        client.close()


def test_devices_publish_only_under_their_own_id_and_read_only_their_commands(
    secured: tuple[ProductionBroker, dict[str, str]],
) -> None:
    broker, passwords = secured
    observer = Client(broker, OBSERVER, passwords[OBSERVER])
    observer.subscribe("#")
    device_a = Client(broker, A, passwords[A])
    commander = Client(broker, COMMANDER_USER, passwords[COMMANDER_USER])
    try:
        # Asking for everyone's commands is accepted, but only its own are delivered.
        device_a.subscribe("aquafleet/v1/+/cmd")
        device_a.subscribe(f"aquafleet/v1/{B}/cmd")
        own = as_raw(telemetry(A, 1))
        assert not device_a.publish(own.topic, own.payload).is_failure
        for topic in (
            f"aquafleet/v1/{B}/telemetry",  # under another device's id
            f"aquafleet/v1/{B}/status",
            f"aquafleet/v1/{A}/cmd",  # commands come from the cloud only
        ):
            assert _attempt(broker, A, passwords[A], topic).getName() == "Not authorized", topic
        assert not commander.publish(f"aquafleet/v1/{B}/cmd", b'{"for":"B"}').is_failure
        assert not commander.publish(f"aquafleet/v1/{A}/cmd", b'{"for":"A"}').is_failure

        wait_until(lambda: f"aquafleet/v1/{A}/cmd" in device_a.topics(), message="A's command")
        wait_until(lambda: f"aquafleet/v1/{B}/cmd" in observer.topics(), message="B's command")
        time.sleep(0.3)
        assert f"aquafleet/v1/{A}/telemetry" in observer.topics()
        assert f"aquafleet/v1/{B}/telemetry" not in observer.topics()
        assert f"aquafleet/v1/{B}/status" not in observer.topics()
        assert device_a.topics() == [f"aquafleet/v1/{A}/cmd"]
    finally:
        for c in (observer, device_a, commander):
            c.close()


def test_the_ingest_account_can_only_subscribe(
    secured: tuple[ProductionBroker, dict[str, str]],
) -> None:
    broker, passwords = secured
    observer = Client(broker, OBSERVER, passwords[OBSERVER])
    observer.subscribe("#")
    ingest = Client(broker, INGEST_USER, passwords[INGEST_USER])
    device_a = Client(broker, A, passwords[A])
    try:
        assert not ingest.subscribe("$share/g/aquafleet/v1/+/telemetry").is_failure
        device_a.subscribe(f"aquafleet/v1/{A}/cmd")
        for topic in (
            f"aquafleet/v1/{A}/telemetry",  # as if it were a device
            f"aquafleet/v1/{A}/cmd",  # as if it were the commander
            f"aquafleet/v1/{INGEST_USER}/telemetry",  # under its own name, as devices may
            "aquafleet/v1/anything",
        ):
            reason = _attempt(broker, INGEST_USER, passwords[INGEST_USER], topic)
            assert reason.getName() == "Not authorized", topic
        payload = as_raw(telemetry(A, 1)).payload
        device_a.publish(f"aquafleet/v1/{A}/telemetry", payload)

        wait_until(lambda: len(ingest.topics()) == 1, message="the device's message at ingest")
        time.sleep(0.3)
        assert observer.topics() == [f"aquafleet/v1/{A}/telemetry"]
        assert device_a.topics() == []
    finally:
        for c in (observer, ingest, device_a):
            c.close()


def test_wrong_password_and_anonymous_are_refused(
    secured: tuple[ProductionBroker, dict[str, str]],
) -> None:
    broker, passwords = secured
    for user, password in ((A, passwords[B]), (None, None), ("AQ-NOT-IN-LEDGER", "x")):
        client = Client(broker, user, password)
        try:
            assert client.connack is not None
            assert client.connack.is_failure
        finally:
            client.close()


def test_ingest_runs_under_the_ingest_account(
    secured: tuple[ProductionBroker, dict[str, str]], ledger_url: str, make_ingest: MakeIngest
) -> None:
    broker, passwords = secured
    ingest = make_ingest(
        ledger_url, broker.url, "--client-id", "acl-ingest",
        env={"AQUAFLEET_BROKER_USERNAME": INGEST_USER,
             "AQUAFLEET_BROKER_PASSWORD": passwords[INGEST_USER]},
    ).start()  # fmt: skip
    device_a = Client(broker, A, passwords[A])
    try:
        for seq in range(1, 6):
            raw = as_raw(telemetry(A, seq))
            device_a.publish(raw.topic, raw.payload)
        # Forged under B's id: the broker refuses it, nothing reaches ingest.
        assert _attempt(broker, A, passwords[A], f"aquafleet/v1/{B}/telemetry").is_failure
        wait_until(lambda: count(ledger_url, "telemetry") == 5, message="5 stored")
        time.sleep(0.5)
        assert count(ledger_url, "telemetry", f"device_id = '{B}'") == 0
        assert count(ledger_url, "quarantine") == 0
    finally:
        device_a.close()
    assert ingest.terminate() == 0


def test_ingest_with_a_wrong_password_stops_with_one_line(
    secured: tuple[ProductionBroker, dict[str, str]], ledger_url: str, make_ingest: MakeIngest
) -> None:
    broker, _ = secured
    ingest = make_ingest(
        ledger_url, broker.url,
        env={"AQUAFLEET_BROKER_USERNAME": INGEST_USER, "AQUAFLEET_BROKER_PASSWORD": "wrong"},
    ).start(wait_running=False)  # fmt: skip
    assert ingest.process is not None
    assert ingest.process.wait(30) == 1
    assert "refused the connection" in ingest.log().strip().splitlines()[-1]


def test_a_gateway_publishes_for_its_machines_only(
    secured: tuple[ProductionBroker, dict[str, str]],
) -> None:
    broker, passwords = secured
    observer = Client(broker, OBSERVER, passwords[OBSERVER])
    observer.subscribe("#")
    gateway = Client(broker, GATEWAY, passwords[GATEWAY])
    commander = Client(broker, COMMANDER_USER, passwords[COMMANDER_USER])
    try:
        gateway.subscribe("aquafleet/v1/+/cmd")
        for machine in (A, B):
            raw = as_raw(telemetry(machine, 1))
            assert not gateway.publish(raw.topic, raw.payload).is_failure
        assert not gateway.publish(f"aquafleet/v1/{GATEWAY}/status", b"{}").is_failure
        # C is behind no gateway: the gateway cannot speak for it.
        assert _attempt(broker, GATEWAY, passwords[GATEWAY], f"aquafleet/v1/{C}/telemetry")\
            .getName() == "Not authorized"  # fmt: skip
        for machine in (A, C):
            assert not commander.publish(f"aquafleet/v1/{machine}/cmd", b"{}").is_failure

        wait_until(lambda: f"aquafleet/v1/{A}/cmd" in gateway.topics(), message="A's command")
        time.sleep(0.3)
        assert gateway.topics() == [f"aquafleet/v1/{A}/cmd"]
        uplink = [t for t in observer.topics() if not t.endswith("/cmd")]
        assert sorted(uplink) == sorted(
            [f"aquafleet/v1/{A}/telemetry", f"aquafleet/v1/{B}/telemetry",
             f"aquafleet/v1/{GATEWAY}/status"]
        )  # fmt: skip
    finally:
        for c in (observer, gateway, commander):
            c.close()

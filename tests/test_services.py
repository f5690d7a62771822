"""The service fixtures themselves: real PostgreSQL, TimescaleDB and Mosquitto."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests import fix_mqtt, fix_pg
from tests.fix_mqtt import MakeMqttBroker, MosquittoBroker
from tests.fix_pg import MakePgServer, PgServer

TIMEOUT = 10.0


# --- PostgreSQL / TimescaleDB ---------------------------------------------


def test_timescaledb_is_preloaded(pg_server: PgServer, database_url: str) -> None:
    assert pg_server.timescaledb
    assert database_url.startswith(f"postgresql://postgres@127.0.0.1:{pg_server.port}/")
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SHOW shared_preload_libraries").fetchone()
        assert row == ("timescaledb",)
        row = conn.execute(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'"
        ).fetchone()
        assert row is not None


def test_create_hypertable(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION timescaledb")
        conn.execute(
            "CREATE TABLE readings"
            " (time timestamptz NOT NULL, device text, litres double precision)"
        )
        conn.execute("SELECT create_hypertable('readings', by_range('time', INTERVAL '1 day'))")
        conn.execute(
            "INSERT INTO readings"
            " SELECT t, 'dev-1', 1.5 FROM generate_series("
            "   '2025-01-01'::timestamptz, '2025-01-03 23:00', INTERVAL '1 hour') AS t"
        )
        row = conn.execute("SELECT count(*) FROM show_chunks('readings')").fetchone()
        assert row == (3,)


def test_each_test_gets_an_empty_database(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public'"
        ).fetchone()
        assert row == (0,)
        row = conn.execute(
            "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone()
        assert row == (0,)


def test_plain_server_has_no_timescaledb(
    plain_pg_server: PgServer, plain_database_url: str
) -> None:
    assert not plain_pg_server.timescaledb
    with psycopg.connect(plain_database_url) as conn:
        row = conn.execute("SHOW shared_preload_libraries").fetchone()
        assert row == ("",)


def test_own_server_survives_stop_and_start(make_pg_server: MakePgServer) -> None:
    server = make_pg_server(timescaledb=False)
    url = server.url()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (42)")

    server.stop()
    assert not server.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2).close()

    port = server.port
    server.start()
    assert server.is_running()
    assert server.port == port
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT n FROM kept").fetchone() == (42,)


# --- Mosquitto --------------------------------------------------------------


class Client:
    """A paho MQTT 5 client run on its own thread, waited on with timeouts."""

    def __init__(
        self, broker: MosquittoBroker, *, username: str | None = None, password: str | None = None
    ) -> None:
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv5,
        )
        if username is not None:
            self.paho.username_pw_set(username, password)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connect_result: ReasonCode | None = None
        self._connected = threading.Event()
        self._subscribed: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.paho.on_connect = self._on_connect
        self.paho.on_message = self._on_message
        self.paho.on_subscribe = self._on_subscribe
        self._broker = broker

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connect_result = reason_code
        self._connected.set()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.messages.put(message)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._subscribed.put(reason_codes)

    def subscribe(self, name: str) -> None:
        """Subscribe with QoS 1 and wait for the broker's SUBACK."""
        self.paho.subscribe(name, qos=1)
        (granted,) = self._subscribed.get(timeout=TIMEOUT)
        assert not granted.is_failure, granted

    def connect(self) -> ReasonCode:
        self.paho.connect(self._broker.host, self._broker.port)
        self.paho.loop_start()
        assert self._connected.wait(TIMEOUT), "no CONNACK"
        assert self.connect_result is not None
        return self.connect_result

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


@contextmanager
def connected(broker: MosquittoBroker, **credentials: str) -> Iterator[Client]:
    client = Client(broker, **credentials)
    try:
        result = client.connect()
        assert not result.is_failure, result
        yield client
    finally:
        client.close()


def topic() -> str:
    # The session broker is shared: each test writes under a topic of its own.
    return f"aquafleet-test/{uuid.uuid4().hex}"


def publish_retained(broker: MosquittoBroker, name: str, payload: bytes) -> None:
    with connected(broker) as client:
        info = client.paho.publish(name, payload, qos=1, retain=True)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published()


def receive_retained(broker: MosquittoBroker, name: str) -> mqtt.MQTTMessage:
    with connected(broker) as client:
        client.subscribe(name)
        return client.messages.get(timeout=TIMEOUT)


def test_mqtt5_client_connects(mqtt_broker: MosquittoBroker) -> None:
    assert mqtt_broker.url == f"mqtt://127.0.0.1:{mqtt_broker.port}"
    client = Client(mqtt_broker)
    try:
        assert client.connect() == "Success"
    finally:
        client.close()


def test_retained_message_survives_stop_and_start(make_mqtt_broker: MakeMqttBroker) -> None:
    broker = make_mqtt_broker()
    name = topic()
    publish_retained(broker, name, b"kept")

    port = broker.port
    broker.stop()
    assert not broker.is_running()
    broker.start()
    assert broker.port == port

    message = receive_retained(broker, name)
    assert message.payload == b"kept"
    assert message.retain
    assert message.qos == 1


def saved_since(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime > since
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_retained_message_survives_kill_after_autosave(make_mqtt_broker: MakeMqttBroker) -> None:
    broker = make_mqtt_broker()
    name = topic()
    publish_retained(broker, name, b"autosaved")
    # The PUBACK came: any save from now on holds the message.
    published_at = time.time()
    deadline = time.monotonic() + TIMEOUT
    while not saved_since(broker.persistence_file, published_at):
        assert time.monotonic() < deadline, "no autosave"
        time.sleep(0.1)
    broker.kill()
    broker.start()
    assert receive_retained(broker, name).payload == b"autosaved"


def test_password_file_and_acl(make_mqtt_broker: MakeMqttBroker, tmp_path: Path) -> None:
    passwords = fix_mqtt.write_password_file(tmp_path / "passwd", {"device-1": "s3cret"})
    acl = tmp_path / "acl"
    acl.write_text("user device-1\ntopic readwrite aquafleet-test/#\n")
    broker = make_mqtt_broker(allow_anonymous=False, password_file=passwords, acl_file=acl)

    anonymous = Client(broker)
    try:
        assert anonymous.connect().is_failure
    finally:
        anonymous.close()

    wrong = Client(broker, username="device-1", password="wrong")
    try:
        assert wrong.connect().is_failure
    finally:
        wrong.close()

    name = topic()
    with connected(broker, username="device-1", password="s3cret") as client:
        client.subscribe(name)
        client.paho.publish(name, b"hello", qos=1).wait_for_publish(TIMEOUT)
        assert client.messages.get(timeout=TIMEOUT).payload == b"hello"


# --- Skip or fail -----------------------------------------------------------


@pytest.mark.parametrize("unavailable", [fix_pg.unavailable, fix_mqtt.unavailable])
def test_missing_service_skips_unless_required(
    unavailable: Callable[[str], NoReturn], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AQUAFLEET_REQUIRE_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception):
        unavailable("no such service")
    monkeypatch.setenv("AQUAFLEET_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception):
        unavailable("no such service")

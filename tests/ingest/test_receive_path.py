"""The receive path of `IngestClient`: every shape of PUBLISH a broker may deliver is stored.

The client takes plain QoS 1 packets on a short path and leaves the rest to paho; these tests
publish each kind through a real Mosquitto and check the outcome in the database, and that the
session stayed up (a wrong acknowledgement makes the broker drop the connection).
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest import IngestConfig, IngestWorker
from ingest.client import BufferedSocket, IngestClient
from tests.fix_mqtt import MosquittoBroker
from tests.ingest.conftest import DEVICES
from tests.ingest.fleet import (
    as_raw,
    count,
    publish_all,
    publisher,
    running_worker,
    telemetry,
    wait_until,
)

A = DEVICES[0]


def _config(broker: MosquittoBroker, name: str) -> IngestConfig:
    return IngestConfig(host=broker.host, port=broker.port, client_id=name, group=name, batch_ms=20)


@pytest.fixture
def worker_name() -> str:
    return f"recv-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def worker(
    ledger_url: str, mqtt_broker: MosquittoBroker, worker_name: str
) -> Iterator[IngestWorker]:
    with running_worker(ledger_url, _config(mqtt_broker, worker_name)) as w:
        yield w


def test_qos0_messages_are_stored_and_never_acknowledged(
    worker: IngestWorker, ledger_url: str, mqtt_broker: MosquittoBroker, worker_name: str
) -> None:
    at_qos1 = [telemetry(A, seq) for seq in range(1, 51)]
    at_qos0 = [telemetry(A, seq) for seq in range(51, 101)]
    publish_all(mqtt_broker.host, mqtt_broker.port, at_qos1[:25])
    publish_all(mqtt_broker.host, mqtt_broker.port, at_qos0, qos=0)
    publish_all(mqtt_broker.host, mqtt_broker.port, at_qos1[25:])

    wait_until(lambda: count(ledger_url, "telemetry") == 100, message="all 100 stored")
    # An acknowledgement for a QoS 0 message is a protocol error the broker disconnects for.
    assert worker.counters().reconnects == 0
    assert worker.session.is_connected()
    worker.stop()

    # Everything at QoS 1 was acknowledged: the resumed session brings nothing again.
    with running_worker(ledger_url, _config(mqtt_broker, worker_name)) as again:
        publish_all(mqtt_broker.host, mqtt_broker.port, [telemetry(A, 101)])
        wait_until(lambda: again.counters().received >= 1, message="the new message")
        assert again.counters().duplicates == 0
        assert again.counters().received == 1


def test_messages_with_mqtt5_properties_take_paho_path_and_are_stored(
    worker: IngestWorker, ledger_url: str, mqtt_broker: MosquittoBroker
) -> None:
    client = publisher(mqtt_broker.host, mqtt_broker.port)
    try:
        infos = []
        for seq in range(1, 21):
            raw = as_raw(telemetry(A, seq))
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ContentType = "application/json"
            props.MessageExpiryInterval = 3600
            props.UserProperty = ("firmware", "2.4.1")
            infos.append(client.publish(raw.topic, raw.payload, qos=1, properties=props))
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.loop_stop()
        client.disconnect()
    publish_all(mqtt_broker.host, mqtt_broker.port, [telemetry(A, seq) for seq in range(21, 41)])

    wait_until(lambda: count(ledger_url, "telemetry") == 40, message="all 40 stored")
    assert worker.counters().reconnects == 0


def test_a_payload_spanning_several_reads_is_received_whole(
    worker: IngestWorker, ledger_url: str, mqtt_broker: MosquittoBroker
) -> None:
    # Larger than one socket read: the packet is assembled across reads. Too large to store,
    # it is quarantined with its true size, and what follows it is stored.
    big = as_raw(telemetry(A, 1))
    payload = big.payload[:-1] + b',"padding":"' + b"x" * 600_000 + b'"}'
    client = publisher(mqtt_broker.host, mqtt_broker.port)
    try:
        client.publish(big.topic, payload, qos=1).wait_for_publish(30)
    finally:
        client.loop_stop()
        client.disconnect()
    publish_all(mqtt_broker.host, mqtt_broker.port, [telemetry(A, seq) for seq in range(2, 12)])

    wait_until(lambda: count(ledger_url, "telemetry") == 10, message="10 stored")
    wait_until(lambda: count(ledger_url, "quarantine") == 1, message="the large one quarantined")
    assert count(ledger_url, "quarantine", f"payload_bytes = {len(payload)}") == 1
    assert worker.counters().reconnects == 0


# -- BufferedSocket on its own -------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[BufferedSocket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    try:
        yield BufferedSocket(ours), theirs
    finally:
        ours.close()
        theirs.close()


def test_small_reads_are_answered_from_one_chunk(
    pair: tuple[BufferedSocket, socket.socket],
) -> None:
    buffered, peer = pair
    peer.sendall(b"\x30\x05hello\x30\x02hi")
    assert buffered.recv(1) == b"\x30"
    assert buffered.pending() == 10
    assert buffered.recv(1) == b"\x05"
    assert buffered.recv(5) == b"hello"
    assert buffered.recv(100) == b"\x30\x02hi"  # no more than the chunk holds
    assert buffered.pending() == 0
    with pytest.raises(BlockingIOError):
        buffered.recv(1)
    assert buffered.received_ms > 0
    peer.close()
    assert buffered.recv(1) == b""  # end of stream, as a socket says it


def test_what_the_socket_cannot_take_yet_is_kept_and_sent_later(
    pair: tuple[BufferedSocket, socket.socket],
) -> None:
    buffered, peer = pair
    peer.setblocking(False)
    data = bytes(range(256)) * 20_000  # 5 MB: more than a socket pair's buffers hold
    buffered.write(data)
    assert 0 < buffered.unsent < len(data)
    # Later writes queue behind what waits instead of overtaking it.
    assert buffered.send(b"tail") == 4
    received = bytearray()
    while len(received) < len(data) + 4:
        buffered.flush()
        with contextlib.suppress(BlockingIOError):
            received += peer.recv(1 << 20)
    assert bytes(received) == data + b"tail"
    assert buffered.unsent == 0


def test_the_client_reads_through_a_buffered_socket(mqtt_broker: MosquittoBroker) -> None:
    client = IngestClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(mqtt_broker.host, mqtt_broker.port)
    try:
        assert isinstance(client.socket(), BufferedSocket)
    finally:
        client.disconnect()


def test_ack_all_writes_the_packets_paho_would_write(
    pair: tuple[BufferedSocket, socket.socket],
) -> None:
    buffered, peer = pair
    mids = [1, 2, 300, 65535]
    client = IngestClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    client.buffered = buffered
    client._sock = buffered  # as connect() leaves it
    client.ack_all(mids)
    peer.setblocking(False)
    written = peer.recv(100)
    # What paho's own ack() queues for each message, in order.
    expected = b"".join(bytes([0x40, 2, mid >> 8, mid & 0xFF]) for mid in mids)
    assert written == expected

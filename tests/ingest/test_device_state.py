"""Device state kept by ingest: presence from status and Will, birth data, gaps and resends."""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import psycopg
import pytest
from firmware_protocol import (
    AckStatus,
    Command,
    Message,
    PresenceState,
    Resend,
    Status,
    decode,
)
from paho.mqtt.enums import CallbackAPIVersion

from aquafleet.db import Database
from ingest import IngestConfig, IngestWorker
from ingest.relay import CommandRelay
from tests.fix_mqtt import MosquittoBroker
from tests.ingest.conftest import DEVICES
from tests.ingest.fleet import (
    ack,
    birth,
    count,
    now_ms,
    publish_all,
    running_worker,
    scalar,
    status,
    telemetry,
    wait_until,
)

A = DEVICES[0]


@pytest.fixture
def config(mqtt_broker: MosquittoBroker) -> IngestConfig:
    name = f"state-{uuid.uuid4().hex[:8]}"
    return IngestConfig(
        host=mqtt_broker.host,
        port=mqtt_broker.port,
        client_id=name,
        group=name,
        batch_ms=10,
        reorder_window_s=1.0,
    )


@pytest.fixture
def worker(ledger_url: str, config: IngestConfig) -> Iterator[IngestWorker]:
    with running_worker(ledger_url, config) as w:
        yield w


def _state(url: str, column: str) -> object:
    return scalar(url, f"SELECT {column} FROM device_state WHERE device_id = %s", (A,))


def _publish_one_by_one(
    broker: MosquittoBroker, worker: IngestWorker, messages: list[Message]
) -> None:
    # One at a time, so each is committed before the next: arrival order is the test's order.
    for message in messages:
        _publish_and_wait(broker, worker, message)


def _publish_and_wait(broker: MosquittoBroker, worker: IngestWorker, message: Message) -> None:
    target = worker.counters().received + 1
    publish_all(broker.host, broker.port, [message])
    wait_until(lambda: worker.counters().received >= target, message="received")


def test_presence_follows_status_and_a_stale_will_is_ignored(
    worker: IngestWorker, ledger_url: str, mqtt_broker: MosquittoBroker
) -> None:
    t = now_ms()
    _publish_one_by_one(
        mqtt_broker,
        worker,
        [
            birth(A, boot=1, conn=1, seq=0, ts=t - 5000),
            status(A, PresenceState.ONLINE, boot=1, conn=1, ts=t - 5000),
            # the device reconnects (connection 2) before its first connection's Will arrives
            status(A, PresenceState.ONLINE, boot=1, conn=2, ts=t - 1000),
            status(A, PresenceState.LOST, boot=1, conn=1, ts=t - 5000),
        ],
    )
    assert _state(ledger_url, "presence") == "online"
    assert _state(ledger_url, "presence_conn") == 2

    _publish_one_by_one(
        mqtt_broker, worker, [status(A, PresenceState.LOST, boot=1, conn=2, ts=t - 1000)]
    )
    assert _state(ledger_url, "presence") == "lost"

    # a reboot: a new boot's birth brings it back, with its firmware and configuration
    _publish_one_by_one(
        mqtt_broker, worker, [birth(A, boot=2, conn=1, seq=0, fw="3.0.0", config_version=12)]
    )
    assert _state(ledger_url, "presence") == "online"
    assert _state(ledger_url, "firmware") == "3.0.0"
    assert _state(ledger_url, "config_version") == 12
    assert count(ledger_url, "device_presence", f"device_id = '{A}'") == 4


def test_an_older_birth_does_not_overwrite_a_newer_one(
    worker: IngestWorker, ledger_url: str, mqtt_broker: MosquittoBroker
) -> None:
    # The boot-4 birth is older (device time) and delivered late.
    now = now_ms()
    _publish_one_by_one(
        mqtt_broker,
        worker,
        [
            birth(A, boot=5, conn=1, fw="3.1.0", ts=now),
            birth(A, boot=4, conn=9, fw="2.0.0", ts=now - 60_000),
        ],
    )
    assert _state(ledger_url, "firmware") == "3.1.0"
    assert _state(ledger_url, "boot") == 5
    assert _state(ledger_url, "boot_counter_lost_at") is None
    assert worker.counters().boot_counter_resets == 0


def test_a_birth_with_a_lower_boot_and_a_later_time_means_a_lost_boot_counter(
    worker: IngestWorker, ledger_url: str, mqtt_broker: MosquittoBroker
) -> None:
    # SPEC 7.1: the flash holding the counter was erased; the device starts again at boot 1.
    now = now_ms()
    _publish_one_by_one(
        mqtt_broker,
        worker,
        [
            birth(A, boot=57, conn=3, fw="3.1.0", ts=now - 600_000),
            status(A, PresenceState.ONLINE, boot=57, conn=3, ts=now - 600_000),
            birth(A, boot=1, conn=1, fw="3.1.1", ts=now),
        ],
    )
    assert _state(ledger_url, "boot") == 1
    assert _state(ledger_url, "firmware") == "3.1.1"
    assert _state(ledger_url, "highest_boot") == 57
    assert _state(ledger_url, "boot_counter_lost_at") is not None
    assert (_state(ledger_url, "presence"), _state(ledger_url, "presence_boot")) == ("online", 1)
    assert worker.counters().boot_counter_resets == 1

    # The new boot's own presence applies from now on.
    _publish_one_by_one(
        mqtt_broker, worker, [status(A, PresenceState.OFFLINE, boot=1, conn=1, ts=now + 1000)]
    )
    assert _state(ledger_url, "presence") == "offline"


def test_last_seen_moves_with_every_message(
    worker: IngestWorker, ledger_url: str, mqtt_broker: MosquittoBroker
) -> None:
    publish_all(mqtt_broker.host, mqtt_broker.port, [telemetry(A, 1)])
    wait_until(lambda: _state(ledger_url, "last_seen_at") is not None, message="last seen")
    first = _state(ledger_url, "last_seen_at")
    publish_all(mqtt_broker.host, mqtt_broker.port, [telemetry(A, 2)])
    wait_until(lambda: _state(ledger_url, "last_seen_at") != first, message="last seen moved")


# Device time does not matter to the scan: traffic stamped hours ago (a device whose clock is
# behind, a replayed recording) has its gaps found like live traffic.
@pytest.mark.parametrize("hours_ago", [0, 6], ids=["stamped-now", "stamped-6h-ago"])
def test_a_gap_is_recorded_a_resend_asked_for_and_the_replay_fills_it(
    worker: IngestWorker,
    ledger_url: str,
    mqtt_broker: MosquittoBroker,
    config: IngestConfig,
    hours_ago: int,
) -> None:
    start = now_ms() - hours_ago * 3_600_000
    sent = {seq: telemetry(A, seq, ts=start + seq * 1000) for seq in range(1, 21)}
    lost = {11, 12, 13}
    with _device_and_relay(mqtt_broker, ledger_url, config) as device_commands:
        publish_all(
            mqtt_broker.host,
            mqtt_broker.port,
            [m for seq, m in sent.items() if seq not in lost],
        )

        boot, from_seq, to_seq, cmd_id = _requested_gap(ledger_url)
        assert (boot, from_seq, to_seq) == (1, 11, 13)
        wait_until(lambda: len(device_commands) == 1, message="the resend at the device")
        command = decode(
            f"aquafleet/v1/{A}/cmd", bytes(device_commands[0].payload), received_at_ms=now_ms()
        )
        assert isinstance(command, Command)
        assert command.id == cmd_id
        assert command.body == Resend(boot=1, from_seq=11, to_seq=13)
        assert count(ledger_url, "command_outbox", "sent_at IS NOT NULL") == 1

        # The device replays what it kept, flagged historical.
        replay = [telemetry(A, seq, ts=sent[seq].ts, hist=True) for seq in sorted(lost)]
        publish_all(mqtt_broker.host, mqtt_broker.port, replay)

        wait_until(
            lambda: count(ledger_url, "sequence_gaps", "state = 'filled'") == 1,
            timeout=20,
            message="the gap filled",
        )
        assert count(ledger_url, "telemetry", "historical") == 3
        assert count(ledger_url, "telemetry") == 20
        assert worker.counters().gaps_detected == 1


def test_a_birth_sends_the_devices_unanswered_commands_again(
    worker: IngestWorker, ledger_url: str, mqtt_broker: MosquittoBroker, config: IngestConfig
) -> None:
    with _device_and_relay(mqtt_broker, ledger_url, config) as received:
        publish_all(mqtt_broker.host, mqtt_broker.port, [telemetry(A, s) for s in (1, 2, 5)])
        cmd_id = _requested_gap(ledger_url)[3]
        wait_until(lambda: len(received) == 1, message="the resend at the device")

        # The device reboots before answering: the birth brings the command out again, with
        # the expiry it has left.
        _publish_and_wait(mqtt_broker, worker, birth(A, boot=2, conn=1))
        wait_until(lambda: len(received) == 2, message="the resend sent again")
        assert received[1].payload == received[0].payload
        first, again = (m.properties.MessageExpiryInterval for m in received)  # type: ignore[union-attr]
        assert 0 < again <= first <= config.resend_expiry_s

        # Answered, it is not sent again at the next connection.
        _publish_and_wait(mqtt_broker, worker, ack(A, 1, cmd_id, boot=2))
        _publish_and_wait(mqtt_broker, worker, birth(A, boot=2, conn=2))
        time.sleep(1.0)  # several relay turns
        assert len(received) == 2


@contextlib.contextmanager
def _device_and_relay(
    broker: MosquittoBroker, ledger_url: str, config: IngestConfig
) -> Iterator[list[mqtt.MQTTMessage]]:
    """Device A listening on its command topic, and a command relay; yields what A receives."""
    received: list[mqtt.MQTTMessage] = []
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{A}-dev", protocol=mqtt.MQTTv5)
    device.on_message = lambda c, u, m: received.append(m)
    device.connect(broker.host, broker.port)
    device.subscribe(f"aquafleet/v1/{A}/cmd", qos=1)
    device.loop_start()
    relay = CommandRelay(config, Database(url=ledger_url), every_s=0.2)
    relay.start()
    try:
        yield received
    finally:
        relay.stop()
        device.loop_stop()
        device.disconnect()


def _requested_gap(url: str) -> tuple[int, int, int, str]:
    wait_until(
        lambda: count(url, "sequence_gaps", "state = 'requested'") == 1,
        timeout=20,
        message="the gap requested",
    )
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT boot, from_seq, to_seq, resend_cmd_id FROM sequence_gaps"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), str(row[3])


def _gap_faults(url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT device_id, severity, subject, detail, cleared_at IS NOT NULL"
            " FROM cloud_faults WHERE code = 'telemetry_gap'"
        ).fetchall()


def test_what_the_replay_cannot_fill_becomes_a_permanent_gap_raising_telemetry_gap(
    worker: IngestWorker, ledger_url: str, mqtt_broker: MosquittoBroker
) -> None:
    sent = {seq: telemetry(A, seq) for seq in range(1, 21)}
    publish_all(
        mqtt_broker.host, mqtt_broker.port, [m for s, m in sent.items() if s not in {11, 12, 13}]
    )
    boot, from_seq, to_seq, cmd_id = _requested_gap(ledger_url)
    assert (boot, from_seq, to_seq) == (1, 11, 13)

    # The device kept only seq 12, replays it, then sends its final ack.
    publish_all(
        mqtt_broker.host,
        mqtt_broker.port,
        [telemetry(A, 12, ts=sent[12].ts, hist=True), ack(A, 21, cmd_id)],
    )

    wait_until(
        lambda: count(ledger_url, "sequence_gaps", "state = 'permanent'") == 1,
        timeout=20,
        message="the gap permanent",
    )
    assert scalar(ledger_url, "SELECT missing FROM sequence_gaps") == 2
    assert _gap_faults(ledger_url) == [
        (
            A,
            "info",
            "boot 1 seq 11..13",
            {"boot": 1, "from_seq": 11, "to_seq": 13, "missing": 2, "resend_cmd_id": cmd_id,
             "resend": "succeeded"},
            False,
        )
    ]  # fmt: skip
    assert worker.counters().permanent_gaps == 1
    # The command itself is settled by the final ack.
    assert scalar(
        ledger_url, "SELECT outcome FROM command_outbox WHERE cmd_id = %s", (cmd_id,)
    ) == ("succeeded")

    # The rest turns up after all (a later replay): the gap closes and the fault clears.
    publish_all(
        mqtt_broker.host,
        mqtt_broker.port,
        [telemetry(A, seq, ts=sent[seq].ts, hist=True) for seq in (11, 13)],
    )
    wait_until(
        lambda: count(ledger_url, "sequence_gaps", "state = 'filled'") == 1,
        timeout=20,
        message="the gap filled",
    )
    assert [f[4] for f in _gap_faults(ledger_url)] == [True]


def test_a_resend_that_expires_unanswered_leaves_a_permanent_gap(
    ledger_url: str, config: IngestConfig, mqtt_broker: MosquittoBroker
) -> None:
    with running_worker(ledger_url, dataclasses.replace(config, resend_expiry_s=1)):
        publish_all(mqtt_broker.host, mqtt_broker.port, [telemetry(A, s) for s in (1, 2, 3, 7, 8)])
        _requested_gap(ledger_url)
        # An answer that is not final does not settle it.
        publish_all(
            mqtt_broker.host,
            mqtt_broker.port,
            [ack(A, 9, _requested_gap(ledger_url)[3], status=AckStatus.IN_PROGRESS)],
        )
        wait_until(
            lambda: count(ledger_url, "sequence_gaps", "state = 'permanent'") == 1,
            timeout=20,
            message="the gap permanent",
        )
        faults = _gap_faults(ledger_url)
        assert len(faults) == 1
        detail = faults[0][3]
        assert isinstance(detail, dict)
        assert (detail["from_seq"], detail["to_seq"], detail["missing"]) == (4, 6, 3)
        assert detail["resend"] == "expired unanswered"
        # SPEC 6.4: the command expired unanswered is recorded as such.
        assert scalar(ledger_url, "SELECT outcome FROM command_outbox") == "expired"


def test_reordering_within_the_window_is_not_a_gap(
    worker: IngestWorker, ledger_url: str, mqtt_broker: MosquittoBroker
) -> None:
    messages = [telemetry(A, seq) for seq in range(1, 41)]
    random.Random(7).shuffle(messages)

    publish_all(mqtt_broker.host, mqtt_broker.port, messages)

    wait_until(lambda: count(ledger_url, "telemetry") == 40, message="all stored")
    # the scan has looked past these messages
    wait_until(
        lambda: bool(
            scalar(
                ledger_url,
                "SELECT scanned_to > (SELECT max(received_at) FROM message_keys) "
                "FROM gap_scan_state",
            )
        ),
        timeout=20,
        message="the scan past the messages",
    )
    assert count(ledger_url, "sequence_gaps") == 0


def test_a_gateways_will_marks_the_machines_it_served_lost(
    worker: IngestWorker, ledger_url: str, mqtt_broker: MosquittoBroker
) -> None:
    a, b, gateway = DEVICES[0], DEVICES[1], "GW-CAMPUS-01"
    with psycopg.connect(ledger_url) as conn:
        conn.execute(
            "UPDATE devices SET gateway_id = %s WHERE device_id = ANY(%s)", (gateway, [a, b])
        )
    # The worker reloads its device cache early, on an unknown id, at most once a second.
    time.sleep(1.1)
    t = now_ms()
    online = Status(device_id=gateway, boot=1, conn=1, ts=t, state=PresenceState.ONLINE,
                    serves=(a, b))  # fmt: skip
    will = Status(device_id=gateway, boot=1, conn=1, ts=t, state=PresenceState.LOST,
                  serves=(a, b))  # fmt: skip
    stranger = status("GW-NOT-IN-LEDGER", PresenceState.ONLINE)
    _publish_one_by_one(
        mqtt_broker,
        worker,
        [online, birth(a, conn=1), birth(b, conn=1), stranger, will],
    )

    with psycopg.connect(ledger_url) as conn:
        rows = conn.execute("SELECT device_id, presence FROM device_state").fetchall()
    presence = {str(d): str(p) for d, p in rows}
    assert presence == {gateway: "lost", a: "lost", b: "lost"}
    assert count(ledger_url, "quarantine", "reason = 'unknown_device'") == 1

    # A comes back through the gateway's next link session to it; B stays lost.
    _publish_one_by_one(mqtt_broker, worker, [birth(a, conn=2, seq=1)])
    assert _state(ledger_url, "presence") == "online"
    assert (
        scalar(ledger_url, "SELECT presence FROM device_state WHERE device_id = %s", (b,)) == "lost"
    )

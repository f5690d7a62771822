"""Each kind of bad input, mixed into good traffic: the good is stored, the bad quarantined.

No bad message may crash the ingestor, block its batch, or be stored; each lands in the
quarantine with its reason code, topic, bounded payload and time, and is counted.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator

import orjson
import psycopg
import pytest
from firmware_protocol import RejectReason, to_wire

from ingest import IngestWorker
from tests.fix_mqtt import MosquittoBroker
from tests.fix_pg import _free_port
from tests.ingest.conftest import DEVICES, MakeIngest
from tests.ingest.fleet import (
    Raw,
    count,
    now_ms,
    publish_all,
    running_worker,
    telemetry,
    wait_until,
    worker_config,
)

A, B = DEVICES[0], DEVICES[1]
TOPIC_A = f"aquafleet/v1/{A}/telemetry"


def _wire(**changes: object) -> bytes:
    """A valid telemetry of A at seq 500, with ``changes`` applied to its JSON object."""
    document = to_wire(telemetry(A, 500))
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            document[outer][inner] = value
        else:
            document[key] = value
    return orjson.dumps(document)


def _replace(old: bytes, new: bytes) -> bytes:
    payload = _wire()
    assert old in payload
    return payload.replace(old, new, 1)


# (case, bad message, reason). Each is published between good messages of the same device.
BAD_INPUTS: list[tuple[str, Callable[[], Raw], RejectReason]] = [
    ("malformed_json", lambda: Raw(TOPIC_A, b'{"v":1,"device_id":'), RejectReason.MALFORMED_JSON),
    ("not_utf8", lambda: Raw(TOPIC_A, b'{"v":1,"device_id":"\xff\xfe"}'), RejectReason.NOT_UTF8),
    ("schema_violation", lambda: Raw(TOPIC_A, _wire(**{"metrics.tds_in": -5})),
     RejectReason.SCHEMA_VIOLATION),
    ("missing_field", lambda: Raw(TOPIC_A, orjson.dumps({"v": 1, "device_id": A, "seq": 1})),
     RejectReason.SCHEMA_VIOLATION),
    ("not_an_object", lambda: Raw(TOPIC_A, b"[1, 2, 3]"), RejectReason.SCHEMA_VIOLATION),
    ("nul_in_text", lambda: Raw(f"aquafleet/v1/{A}/event", orjson.dumps(
        {"v": 1, "device_id": A, "boot": 1, "seq": 500, "ts": now_ms(), "event": "door_opened",
         "detail": "door\u0000open"})), RejectReason.SCHEMA_VIOLATION),
    ("unknown_device", lambda: Raw("aquafleet/v1/ZZ-NOT-IN-LEDGER/telemetry",
                                   _wire(device_id="ZZ-NOT-IN-LEDGER")),
     RejectReason.UNKNOWN_DEVICE),
    ("identity_mismatch", lambda: Raw(f"aquafleet/v1/{B}/telemetry", _wire()),
     RejectReason.IDENTITY_MISMATCH),
    ("oversized", lambda: Raw(TOPIC_A, _wire(padding="x" * 20_000)), RejectReason.TOO_LARGE),
    ("clock_future", lambda: Raw(TOPIC_A, _wire(ts=now_ms() + 3_600_000)),
     RejectReason.CLOCK_FUTURE),
    ("clock_past", lambda: Raw(TOPIC_A, _wire(ts=now_ms() - 3 * 86_400_000)),
     RejectReason.CLOCK_PAST),
    ("nan", lambda: Raw(TOPIC_A, _replace(b'"tds_in":310.0', b'"tds_in":NaN')),
     RejectReason.NON_FINITE_NUMBER),
    ("infinity", lambda: Raw(TOPIC_A, _replace(b'"tds_in":310.0', b'"tds_in":-Infinity')),
     RejectReason.NON_FINITE_NUMBER),
    ("overflow_to_infinity", lambda: Raw(TOPIC_A, _replace(b'"tds_in":310.0', b'"tds_in":1e999')),
     RejectReason.NON_FINITE_NUMBER),
    ("unknown_major_version", lambda: Raw(TOPIC_A, _wire(v=2)), RejectReason.UNSUPPORTED_VERSION),
    ("duplicate_sequence_number",
     lambda: Raw(TOPIC_A, _wire(seq=5, ts=now_ms() - 1234)), RejectReason.DUPLICATE),
]  # fmt: skip


@pytest.fixture
def worker(ledger_url: str, mqtt_broker: MosquittoBroker) -> Iterator[IngestWorker]:
    with running_worker(ledger_url, worker_config(mqtt_broker.host, mqtt_broker.port, "bad")) as w:
        yield w


@pytest.mark.parametrize(
    ("make_bad", "reason"),
    [pytest.param(make, reason, id=case) for case, make, reason in BAD_INPUTS],
)
def test_bad_input_is_quarantined_and_the_good_around_it_stored(
    make_bad: Callable[[], Raw],
    reason: RejectReason,
    worker: IngestWorker,
    ledger_url: str,
    mqtt_broker: MosquittoBroker,
) -> None:
    bad = make_bad()
    before = [telemetry(A, seq) for seq in range(1, 11)]
    after = [telemetry(A, seq) for seq in range(11, 21)]

    publish_all(mqtt_broker.host, mqtt_broker.port, [*before, bad, *after])

    wait_until(lambda: worker.counters().received == 21, message="21 messages received")
    wait_until(lambda: count(ledger_url, "quarantine") == 1, message="one quarantined row")
    assert count(ledger_url, "telemetry", f"device_id = '{A}'") == 20
    assert count(ledger_url, "telemetry", "seq = 500") == 0
    with psycopg.connect(ledger_url) as conn:
        row = conn.execute(
            "SELECT topic, reason, payload, payload_bytes, received_at > now() - interval '1 min'"
            " FROM quarantine"
        ).fetchone()
    assert row is not None
    topic, stored_reason, payload, size, recent = row
    assert (topic, stored_reason, size, recent) == (bad.topic, reason.value, len(bad.payload), True)
    assert bytes(payload) == bad.payload[: worker.config.quarantine_payload_bytes]
    counters = worker.counters()
    assert (counters.stored, counters.quarantined) == (20, 1)
    assert worker.metrics.quarantined.labels(reason.value)._value.get() == 1
    assert worker.is_running()


def test_a_redelivered_message_is_dropped_and_counted_not_quarantined(
    worker: IngestWorker, ledger_url: str, mqtt_broker: MosquittoBroker
) -> None:
    first = [telemetry(A, seq) for seq in range(1, 11)]
    publish_all(mqtt_broker.host, mqtt_broker.port, first)
    wait_until(lambda: count(ledger_url, "telemetry") == 10, message="10 stored")

    # The same messages again (a device retry, a store-and-forward replay with hist set).
    replay = [telemetry(A, m.seq, ts=m.ts, hist=True) if m.seq % 2 else m for m in first]
    publish_all(mqtt_broker.host, mqtt_broker.port, replay)

    wait_until(lambda: worker.counters().duplicates == 10, message="10 duplicates")
    assert count(ledger_url, "telemetry") == 10
    assert count(ledger_url, "quarantine") == 0


def test_all_bad_inputs_mixed_into_a_stream_through_the_cli(
    ledger_url: str, mqtt_broker: MosquittoBroker, make_ingest: MakeIngest
) -> None:
    metrics_port = _free_port()
    ingest = make_ingest(
        ledger_url, mqtt_broker.url, "--client-id", "bad-mixed", "--group", "bad-mixed",
        "--metrics-port", str(metrics_port), "--batch-ms", "10",
    ).start()  # fmt: skip
    good = [telemetry(d, seq) for seq in range(1, 31) for d in DEVICES[:10]]
    stream: list[object] = []
    bad_iter = iter(BAD_INPUTS)
    for i, message in enumerate(good):
        stream.append(message)
        if i % 15 == 7:
            case = next(bad_iter, None)
            if case is not None:
                stream.append(case[1]())
    assert next(bad_iter, None) is None

    publish_all(mqtt_broker.host, mqtt_broker.port, stream)  # type: ignore[arg-type]

    wait_until(
        lambda: count(ledger_url, "quarantine") == len(BAD_INPUTS), message="all bad quarantined"
    )
    wait_until(lambda: count(ledger_url, "telemetry") == len(good), message="all good stored")
    with psycopg.connect(ledger_url) as conn:
        reasons = conn.execute("SELECT reason, count(*) FROM quarantine GROUP BY 1").fetchall()
    expected: dict[str, int] = {}
    for _case, _make, reason in BAD_INPUTS:
        expected[reason.value] = expected.get(reason.value, 0) + 1
    assert dict(reasons) == expected
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        exposition = r.read().decode()
    for reason_value, n in expected.items():
        line = f'aquafleet_ingest_messages_quarantined_total{{reason="{reason_value}"}} {n}.0'
        assert line in exposition
    assert ingest.running()
    assert ingest.terminate() == 0

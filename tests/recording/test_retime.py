"""`aquafleet replay --retime`: a recording days old replayed through ingest is stored, not
quarantined as clock_past, with its device times moved onto the replay's clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from ingest import IngestWorker
from simulators.recording import Frame, RecordingHeader, RecordingWriter
from simulators.retime import Retimer
from tests.fix_mqtt import MosquittoBroker
from tests.ingest.fleet import (
    as_raw,
    count,
    device_ids,
    now_ms,
    prepare_database,
    running_worker,
    telemetry,
    wait_until,
    worker_config,
)

DEVICE = device_ids(1, prefix="RT")[0]
DAY_MS = 86_400_000
READINGS = 20
INTERVAL_S = 60.0  # one reading a minute, as recorded
LAG_MS = 300  # each reading reached the recorder this long after it was made


@pytest.fixture
def ledger_url(database_url: str) -> str:
    prepare_database(database_url, [DEVICE])
    return database_url


@pytest.fixture
def worker(ledger_url: str, mqtt_broker: MosquittoBroker) -> Iterator[IngestWorker]:
    config = worker_config(mqtt_broker.host, mqtt_broker.port, "retime")
    with running_worker(ledger_url, config) as w:
        yield w


def _old_recording(path: Path, recorded_at_ms: int) -> None:
    """Readings of one machine recorded three days ago, one a store-and-forward replay 2 h old,
    and a message that was malformed already then."""
    created = datetime.fromtimestamp(recorded_at_ms / 1000, UTC).isoformat(timespec="seconds")
    start_ms = int(datetime.fromisoformat(created).timestamp() * 1000)
    with RecordingWriter(path, extra={"created": created}) as writer:
        for i in range(READINGS):
            offset_s = 1.0 + i * INTERVAL_S
            made_ms = start_ms + round(offset_s * 1000) - LAG_MS
            raw = as_raw(telemetry(DEVICE, i + 1, ts=made_ms))
            writer.write(Frame(offset_s, raw.topic, raw.payload))
        late = as_raw(telemetry(DEVICE, 100, ts=start_ms - 2 * 3_600_000, hist=True))
        writer.write(Frame(READINGS * INTERVAL_S, late.topic, late.payload))
        writer.write(Frame(READINGS * INTERVAL_S, late.topic, b'{"v":1,'))


def test_an_old_recording_replayed_as_recorded_is_refused_as_too_old(
    worker: IngestWorker, ledger_url: str, mqtt_broker: MosquittoBroker, tmp_path: Path, run_cli
) -> None:
    recording = tmp_path / "old.rec"
    _old_recording(recording, now_ms() - 3 * DAY_MS)

    plain = run_cli("replay", str(recording), "--as-fast-as-possible",
                    "--broker-url", mqtt_broker.url)  # fmt: skip

    assert plain.returncode == 0, plain.stderr
    wait_until(lambda: worker.counters().received == READINGS + 2, message="all received")
    assert count(ledger_url, "quarantine", "reason = 'clock_past'") == READINGS
    # a store-and-forward replay may be older than live data
    assert count(ledger_url, "telemetry", "historical") == 1


def test_an_old_recording_replayed_with_retime_is_stored_on_the_replays_clock(
    worker: IngestWorker, ledger_url: str, mqtt_broker: MosquittoBroker, tmp_path: Path, run_cli
) -> None:
    recording = tmp_path / "old.rec"
    _old_recording(recording, now_ms() - 3 * DAY_MS)

    # Re-timed at 600x: a minute apart as recorded, 0.1 s apart as published.
    started_ms = now_ms()
    retimed = run_cli("replay", str(recording), "--retime", "--speed", "600",
                      "--broker-url", mqtt_broker.url)  # fmt: skip
    assert retimed.returncode == 0, retimed.stderr
    finished_ms = now_ms()
    wait_until(lambda: count(ledger_url, "telemetry") == READINGS + 1, message="all stored")
    assert count(ledger_url, "quarantine") == 1  # the message malformed already when recorded

    with psycopg.connect(ledger_url) as conn:
        rows = conn.execute(
            "SELECT seq, (extract(epoch FROM time) * 1000)::bigint, historical FROM telemetry"
            " ORDER BY seq"
        ).fetchall()
    live = [(int(seq), int(ms)) for seq, ms, historical in rows if not historical]
    [(late_seq, late_ms)] = [(int(seq), int(ms)) for seq, ms, historical in rows if historical]
    assert [seq for seq, _ in live] == list(range(1, READINGS + 1))
    for _seq, ms in live:
        # each stamped about when it was published, still LAG_MS before it reached the broker
        assert started_ms - LAG_MS - 1000 <= ms <= finished_ms
    span_ms = live[-1][1] - live[0][1]
    recorded_span_ms = (READINGS - 1) * INTERVAL_S * 1000
    assert abs(span_ms - recorded_span_ms / 600) < 1500
    # the store-and-forward reading stays as far behind its arrival as it was: made 2 h before
    # the recording began, it arrived 20 min into it
    assert late_seq == 100
    behind_ms = 2 * 3_600_000 + READINGS * INTERVAL_S * 1000
    assert abs((finished_ms - late_ms) - behind_ms) < 60_000


@pytest.mark.parametrize(
    "payload",
    [b'{"v":1,', b"[1,2]", b'{"ts":"soon"}', b'{"ts":18446744073709551000}'],
    ids=["malformed", "not-an-object", "ts-not-an-integer", "shift-past-what-json-integers-hold"],
)
def test_what_cannot_be_retimed_goes_out_as_recorded(payload: bytes) -> None:
    header = RecordingHeader(version=1, created="2020-01-01T00:00:00+00:00")
    frame = Frame(1.0, "aquafleet/v1/RT-0001/telemetry", payload)
    assert Retimer(header).payload(frame, now_ms()) == payload

"""The simulator into the real broker and ingest into TimescaleDB: what ingest stores is what was
injected, and each misbehaviour lands where the protocol says (quarantine, gap, duplicate)."""

from __future__ import annotations

import itertools
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import psycopg
import pytest
from firmware_protocol import Birth, Telemetry

from aquafleet.db import Database, migrate
from aquafleet.ledger import LedgerRepository, read_ledger_csv
from ingest import IngestConfig, IngestWorker
from simulators import (
    MemorySink,
    Simulation,
    SimulationConfig,
    generate_ledger,
    machines_from_ledger,
    parse_scenario,
    write_ledger_csv,
)
from simulators.mqtt import BrokerAddress, MqttSink
from tests.fix_mqtt import MosquittoBroker
from tests.simulators.helpers import decoded, rejections

HOUR_MS = 3_600_000


def wait_until(check: Callable[[], bool], *, timeout: float = 60.0, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.1)


def scalar(url: str, sql: str, *params: object) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
def chain(
    database_url: str, mqtt_broker: MosquittoBroker, tmp_path: Path
) -> Iterator[tuple[str, IngestWorker, str]]:
    """A database holding a generated ledger (imported as `aquafleet devices import` does)."""
    prefix = f"K{uuid.uuid4().hex[:6].upper()}"
    ledger_path = tmp_path / "ledger.csv"
    write_ledger_csv(generate_ledger(10, seed=11, id_prefix=prefix), ledger_path)
    with Database(url=database_url) as database:
        migrate(database)
        with database.connection() as conn:
            LedgerRepository(conn).import_file(
                read_ledger_csv(ledger_path, default_timezone="Asia/Shanghai", today=date.today())
            )
    config = IngestConfig(
        host=mqtt_broker.host, port=mqtt_broker.port, client_id=prefix, group=prefix,
        batch_ms=20, reorder_window_s=0.5,
    )  # fmt: skip
    worker = IngestWorker(config, Database(url=database_url))
    worker.start()
    try:
        yield database_url, worker, prefix
    finally:
        worker.stop()


def test_simulated_fleet_lands_in_the_database_as_the_protocol_says(
    chain: tuple[str, IngestWorker, str], mqtt_broker: MosquittoBroker
) -> None:
    url, worker, prefix = chain
    machines = machines_from_ledger(generate_ledger(10, seed=11, id_prefix=prefix))
    ids = [m.device_id for m in machines]
    now = int(time.time() * 1000)
    start = now - now % 60_000 - HOUR_MS  # the last hour: ingest's clock checks accept it
    scenario = parse_scenario(
        {
            "faults": [
                {"fault": "membrane_failed", "devices": [ids[0]], "at": "+10m"},
                {"fault": "leak", "devices": [ids[1]], "at": "+10m"},
                {"fault": "telemetry_gap", "devices": [ids[2]], "at": "+20m", "duration": "3m"},
            ],
            "misbehaviours": [
                {"kind": "offline", "devices": [ids[3]], "at": "+15m", "duration": "10m"},
                {"kind": "duplicate", "devices": [ids[4]], "at": 0,
                 "params": {"probability": 1.0}},
                {"kind": "malformed", "devices": [ids[5]], "at": 0,
                 "params": {"probability": 0.1}},
                {"kind": "impersonate", "devices": [ids[6]], "at": 0,
                 "params": {"target": ids[7], "probability": 0.1}},
                {"kind": "clock_skew", "devices": [ids[8]], "at": "+50m"},
            ],
        }
    )  # fmt: skip
    config = SimulationConfig(
        machines=machines, start_ms=start, duration_ms=HOUR_MS, seed=4, scenario=scenario
    )
    memory = MemorySink()
    Simulation(config, memory).run()
    sink = MqttSink(BrokerAddress(mqtt_broker.host, mqtt_broker.port), mode="per-device")
    try:
        Simulation(config, sink).run()
    finally:
        sink.close()
    expected = len(memory.messages)
    wait_until(lambda: worker.counters().received >= expected, message=f"{expected} received")
    time.sleep(1.0)  # the last batch commits

    # what the codec accepts is stored once; what it refuses is quarantined with its reason
    refused = Counter((m.device_id, reason) for m, reason in rejections(memory.messages))
    quarantined: Counter[tuple[str, str]] = Counter()
    with psycopg.connect(url) as conn:
        for device_id, reason, n in conn.execute(
            "SELECT device_id, reason, count(*) FROM quarantine WHERE device_id LIKE %s"
            " GROUP BY 1, 2",
            (f"{prefix}%",),
        ):
            quarantined[(device_id, reason)] = n
    assert refused[(ids[5], "malformed_json")] > 0
    assert refused[(ids[6], "identity_mismatch")] > 0
    assert refused[(ids[8], "clock_future")] > 0
    # ingest judges the clock at its receive time, later than the simulated send: of the skewed
    # machine's messages, only those more than 5 minutes ahead of the wall clock are refused
    future = (ids[8], "clock_future")
    assert 0 < quarantined.pop(future) <= refused.pop(future)
    assert quarantined == refused

    # ingest keeps the readings of births as telemetry rows too
    telemetry = {
        (t.device_id, t.boot, t.seq)
        for _m, t in decoded(memory.messages)
        if isinstance(t, Telemetry | Birth) and t.device_id != ids[8]
    }
    with psycopg.connect(url) as conn:
        rows = set(
            conn.execute(
                "SELECT device_id, boot, seq FROM telemetry"
                " WHERE device_id LIKE %s AND device_id <> %s",
                (f"{prefix}%", ids[8]),
            ).fetchall()
        )
    assert rows == telemetry
    counters = worker.counters()
    assert counters.duplicates >= 55  # the duplicating machine's second copies
    # the machine that lost messages: a hole in its stored sequence within one boot, which
    # ingest's gap scan records (and asks a resend for) once the reorder window has passed
    with psycopg.connect(url) as conn:
        seqs = [
            int(str(r[0]))
            for r in conn.execute(
                "SELECT seq FROM message_keys WHERE device_id = %s ORDER BY seq", (ids[2],)
            )
        ]
    holes = [(a + 1, b - 1) for a, b in itertools.pairwise(seqs) if b - a > 1]
    assert [to - frm + 1 for frm, to in holes] == [3]  # three telemetry messages lost
    gaps_query = "SELECT from_seq, to_seq FROM sequence_gaps WHERE device_id = %s"
    wait_until(
        lambda: bool(scalar(url, f"SELECT count(*) FROM ({gaps_query}) g", ids[2])),
        timeout=30,
        message="the gap recorded by ingest",
    )
    with psycopg.connect(url) as conn:
        recorded = conn.execute(gaps_query, (ids[2],)).fetchall()
    assert [(int(str(f)), int(str(t))) for f, t in recorded] == holes

    # store-and-forward: the offline machine's readings arrive late, marked historical
    hist = scalar(url, "SELECT count(*) FROM telemetry WHERE device_id = %s AND historical", ids[3])
    assert hist == 10
    # the failed membrane and the leak show in the stored telemetry, the leak as an event too
    worst = scalar(
        url,
        "SELECT max(tds_out / tds_in) FROM telemetry WHERE device_id = %s",
        ids[0],
    )
    assert isinstance(worst, float)
    assert worst > 0.3
    wet = scalar(url, "SELECT count(*) FROM telemetry WHERE device_id = %s AND leak", ids[1])
    assert wet == 50  # every reading from +10m on
    raised = scalar(
        url, "SELECT count(*) FROM device_events WHERE device_id = %s AND code = 'leak'", ids[1]
    )
    assert raised == 1

"""A replay of a recording into an empty database stores the same rows as the original run.

Original run: fleet -> broker 1 -> ingest -> database A, with `Recorder` on broker 1. Replay:
recording -> broker 2 (fresh, so nothing retained from the first run helps) -> ingest ->
database B. Every table ingest writes is compared, all columns but the wall-clock ones (when a
row was received or updated), which no replay can reproduce.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from psycopg import sql

from aquafleet.config import Settings
from aquafleet.db import Database, migrate
from aquafleet.ledger import LedgerRepository
from aquafleet.ledger.csv_file import LedgerFile
from ingest.config import IngestConfig
from ingest.worker import IngestWorker
from simulators.demo import DEMO_SCENARIO
from simulators.ledger import generate_ledger, machines_from_ledger
from simulators.recording import Recorder, RecordingReader
from simulators.replay import Replayer
from simulators.scenario import load_scenario
from simulators.simulation import Simulation, SimulationConfig
from simulators.sinks import MemorySink
from tests.recording.traffic import Publish, device_ids, fleet_traffic, ledger

pytestmark = pytest.mark.slow

# Columns that hold the wall clock of the run (receipt, bookkeeping), not what devices sent.
WALL_CLOCK_COLUMNS = frozenset(
    {
        "received_at",
        "updated_at",
        "last_seen_at",
        "detected_at",
        "requested_at",
        "filled_at",
        "created_at",
        "sent_at",
        "scanned_to",  # the gap scan's progress, in receive time
    }
)
# Ledger tables are imported, not ingested; the migrations table is the schema's own.
NOT_INGESTED = frozenset({"schema_migrations", "sites", "devices"})
# Serial ids count insertions; they differ when batches interleave differently.
SERIAL_COLUMNS = frozenset({("quarantine", "id")})


@pytest.fixture
def second_database_url(pg_server) -> Iterator[str]:
    name = pg_server.create_database()
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop_database(name)


def prepare(url: str, fleet_ledger: LedgerFile) -> Database:
    database = Database(url=url)
    migrate(database)
    with database.connection() as conn:
        LedgerRepository(conn).import_file(fleet_ledger)
    return database


def start_ingest(broker_url: str, database: Database) -> IngestWorker:
    host, port = broker_url.removeprefix("mqtt://").split(":")
    config = IngestConfig(
        host=host,
        port=int(port),
        client_id=f"eq-{uuid.uuid4().hex[:8]}",
        group=f"eq{uuid.uuid4().hex[:8]}",
        batch_rows=200,
        batch_ms=20,
        max_inflight=1000,
    )
    worker = IngestWorker(config, database)
    worker.start()
    return worker


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def drained(worker: IngestWorker, count: int) -> Callable[[], bool]:
    def check() -> bool:
        worker.check()
        c = worker.counters()
        return c.received >= count and c.stored + c.duplicates + c.quarantined >= c.received

    return check


def publish_all(broker_url: str, messages: list[Publish]) -> None:
    host, port = broker_url.removeprefix("mqtt://").split(":")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(host, int(port))
    client.loop_start()
    try:
        assert connected.wait(10)
        infos = [client.publish(t, p, qos=q, retain=r) for t, p, q, r in messages]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def snapshot(url: str) -> dict[str, list[tuple[object, ...]]]:
    """Every ingested table's rows (wall-clock columns left out), sorted."""
    tables: dict[str, list[tuple[object, ...]]] = {}
    with psycopg.connect(url) as conn:
        names = [
            str(r[0])
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
        for table in names:
            if table in NOT_INGESTED:
                continue
            columns = [
                str(r[0])
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
                    (table,),
                )
                if str(r[0]) not in WALL_CLOCK_COLUMNS and (table, str(r[0])) not in SERIAL_COLUMNS
            ]
            query = sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns),
                sql.Identifier(table),
            )
            rows = conn.execute(query).fetchall()
            tables[table] = sorted(rows, key=lambda row: tuple("" if v is None else v for v in row))
    return tables


def deterministic_fleet() -> tuple[LedgerFile, list[Publish]]:
    ids = device_ids(24)
    return ledger(ids), fleet_traffic(ids, start_ms=int(time.time() * 1000) - 3_600_000)


def simulated_fleet() -> tuple[LedgerFile, list[Publish]]:
    """The simulator's own bytes: births, telemetry, events, presence and Wills, with faults."""
    fleet_ledger = generate_ledger(24, seed=5)
    now_ms = int(time.time() * 1000)
    config = SimulationConfig(
        machines=machines_from_ledger(fleet_ledger),
        start_ms=now_ms - 3 * 3_600_000,
        duration_ms=2 * 3_600_000,
        seed=5,
        scenario=load_scenario(DEMO_SCENARIO),
    )
    sink = MemorySink()
    Simulation(config, sink).run()
    return fleet_ledger, [(o.topic, o.payload, o.qos, o.retain) for o in sink]


@pytest.mark.parametrize("fleet", [deterministic_fleet, simulated_fleet])
def test_a_replay_into_an_empty_database_stores_the_same_rows(
    make_mqtt_broker, database_url, second_database_url, tmp_path: Path, fleet
):
    fleet_ledger, messages = fleet()
    recording = tmp_path / "fleet.rec.gz"

    # the original run, recorded
    broker_1 = make_mqtt_broker()
    database_a = prepare(database_url, fleet_ledger)
    settings_1 = Settings(broker_url=broker_1.url, state_dir=tmp_path / "state")
    worker = start_ingest(broker_1.url, database_a)
    try:
        with Recorder(settings_1, recording) as recorder:
            publish_all(broker_1.url, messages)
            wait_until(lambda: recorder.messages >= len(messages), "the recorder")
            wait_until(drained(worker, len(messages)), "ingest of the original run")
    finally:
        worker.stop()
    with RecordingReader(recording) as reader:
        assert sum(1 for _ in reader) == len(messages)

    # the replay, into an empty database through a fresh broker
    broker_2 = make_mqtt_broker()
    database_b = prepare(second_database_url, fleet_ledger)
    settings_2 = Settings(broker_url=broker_2.url, state_dir=tmp_path / "state")
    worker = start_ingest(broker_2.url, database_b)
    try:
        result = Replayer(settings_2, recording, speed=None).run()
        assert result.published == len(messages)
        wait_until(drained(worker, len(messages)), "ingest of the replay")
    finally:
        worker.stop()

    original, replayed = snapshot(database_url), snapshot(second_database_url)
    assert len(original["telemetry"]) >= 24 * (8 + 1)  # a birth carries a reading too
    assert any(original["device_events"])
    assert original.get("quarantine", []) == []
    assert original.keys() == replayed.keys()
    for table in original:
        assert replayed[table] == original[table], f"table {table} differs"

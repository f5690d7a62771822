"""Every fault the simulator injects, through the real broker and ingest, in the stored telemetry.

The scenario is the one of test_simulation's `every_fault` (same machines, same seed, same
times): each FaultCode on its own machine at 08:00 of a school day. The run is published per
device to Mosquitto, stored by an in-process ingest worker, and each fault's signature is then
looked for in what the database holds, not in the simulator's output.

The run starts on START_MS (a Monday in term time), so its readings are older than ingest's
default 24 h live window: the worker is given wider age windows, since the faults that need a
working school day (pump, membrane, pre-filter) could not show in a run ending now on a weekend.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from firmware_protocol import (
    METRIC_NAMES,
    FaultCode,
    Metrics,
    StageUsage,
    Telemetry,
)

from aquafleet.db import Database, migrate
from aquafleet.ledger import LedgerRepository, read_ledger_csv
from ingest import IngestConfig, IngestWorker
from simulators import MemorySink, Simulation, SimulationConfig, generate_ledger, write_ledger_csv
from simulators.mqtt import BrokerAddress, MqttSink
from tests.fix_mqtt import MosquittoBroker
from tests.fix_pg import PgServer
from tests.simulators.helpers import (
    HOUR_MS,
    START_MS,
    config,
    every_fault_scenario,
    fleet,
    rejections,
)
from tests.simulators.test_simulation import FAULT_AT, _check

pytestmark = pytest.mark.slow

DAY_MS = 24 * HOUR_MS
# Faults whose evidence is not in the readings but in what else ingest stores.
_NOT_IN_METRICS = (
    FaultCode.POWER_LOSS,
    FaultCode.OFFLINE,
    FaultCode.FLAPPING,
    FaultCode.CLOCK_DRIFT,
)


def _wait_until(check: Callable[[], bool], *, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.1)


@dataclass
class Stored:
    """What the database held after the run, read once and kept for every parametrised test."""

    chosen: dict[FaultCode, str]
    telemetry: dict[str, list[Telemetry]] = field(default_factory=dict)  # kind telemetry only
    births: dict[str, int] = field(default_factory=dict)
    keys: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # (boot, seq), any kind
    reboots: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)  # (boot, body)
    presence: dict[str, list[str]] = field(default_factory=dict)
    gaps: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    quarantined: dict[str, list[str]] = field(default_factory=dict)
    refused_in_memory: int = 0


_TELEMETRY_SQL = (
    "SELECT t.device_id, t.boot, t.seq, (extract(epoch FROM t.time) * 1000)::bigint,"
    " t.historical, t.stages, "
    + ", ".join(f"t.{name}" for name in METRIC_NAMES)
    + " FROM telemetry t JOIN message_keys k USING (device_id, boot, seq)"
    " WHERE k.kind = 'telemetry' ORDER BY t.device_id, t.boot, t.seq"
)


def _read(url: str, chosen: dict[FaultCode, str], refused: int) -> Stored:
    stored = Stored(chosen=chosen, refused_in_memory=refused)
    with psycopg.connect(url) as conn:
        for row in conn.execute(_TELEMETRY_SQL):
            device_id, boot, seq, ts, hist, stages, *metrics = row
            stored.telemetry.setdefault(device_id, []).append(
                Telemetry(
                    device_id=device_id,
                    boot=boot,
                    seq=seq,
                    ts=ts,
                    hist=hist,
                    metrics=Metrics(*metrics),
                    stages=tuple(StageUsage(**s) for s in stages or ()),
                )
            )
        for device_id, n in conn.execute(
            "SELECT device_id, count(*) FROM message_keys WHERE kind = 'birth' GROUP BY 1"
        ):
            stored.births[device_id] = n
        for device_id, boot, seq in conn.execute(
            "SELECT device_id, boot, seq FROM message_keys ORDER BY device_id, boot, seq"
        ):
            stored.keys.setdefault(device_id, []).append((boot, seq))
        for device_id, boot, body in conn.execute(
            "SELECT device_id, boot, body FROM device_events WHERE kind = 'reboot' ORDER BY time"
        ):
            stored.reboots.setdefault(device_id, []).append((boot, body))
        for device_id, state in conn.execute(
            "SELECT device_id, state FROM device_presence ORDER BY time, boot, conn"
        ):
            stored.presence.setdefault(device_id, []).append(state)
        for device_id, frm, to in conn.execute(
            "SELECT device_id, from_seq, to_seq FROM sequence_gaps ORDER BY from_seq"
        ):
            stored.gaps.setdefault(device_id, []).append((frm, to))
        for device_id, reason in conn.execute("SELECT device_id, reason FROM quarantine"):
            stored.quarantined.setdefault(device_id, []).append(reason)
    return stored


@pytest.fixture(scope="module")
def stored(
    pg_server: PgServer, mqtt_broker: MosquittoBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stored]:
    """The every-fault run through Mosquitto and ingest into a database of its own, done once
    for the module; each test reads what was stored."""
    name = pg_server.create_database()
    try:
        yield _run_chain(pg_server.url(name), mqtt_broker, tmp_path_factory.mktemp("ledger"))
    finally:
        pg_server.drop_database(name)


def _run_chain(database_url: str, mqtt_broker: MosquittoBroker, tmp_path: Path) -> Stored:
    machines = fleet(40)
    chosen, scenario = every_fault_scenario(machines)
    cfg: SimulationConfig = config(machines, hours=14, scenario=scenario)

    ledger_path = tmp_path / "ledger.csv"
    write_ledger_csv(
        generate_ledger(40, seed=1, vending_share=0.4, today=date(2025, 3, 1)), ledger_path
    )
    with Database(url=database_url) as database:
        migrate(database)
        with database.connection() as conn:
            LedgerRepository(conn).import_file(
                read_ledger_csv(
                    ledger_path, default_timezone="Asia/Shanghai", today=date(2025, 3, 1)
                )
            )
    prefix = f"F{uuid.uuid4().hex[:6].upper()}"
    ingest_config = IngestConfig(
        host=mqtt_broker.host, port=mqtt_broker.port, client_id=prefix, group=prefix,
        batch_ms=20, reorder_window_s=0.5,
        # the run lies on START_MS: widen the age windows so its readings are taken as live
        max_live_age_ms=int(time.time() * 1000) - START_MS + DAY_MS,
        max_hist_age_ms=int(time.time() * 1000) - START_MS + 8 * DAY_MS,
    )  # fmt: skip
    memory = MemorySink()
    Simulation(cfg, memory).run()
    refused = len(rejections(memory.messages))
    worker = IngestWorker(ingest_config, Database(url=database_url))
    worker.start()
    try:
        sink = MqttSink(BrokerAddress(mqtt_broker.host, mqtt_broker.port), mode="per-device")
        try:
            Simulation(cfg, sink).run()
        finally:
            sink.close()
        expected = len(memory.messages)
        _wait_until(
            lambda: worker.counters().received >= expected,
            timeout=40,
            message=f"{expected} messages received by ingest",
        )

        def settled() -> bool:
            c = worker.counters()
            return c.inflight == 0 and c.stored + c.duplicates + c.quarantined >= c.received

        _wait_until(settled, timeout=20, message="ingest to commit what it received")
        gap_device = chosen[FaultCode.TELEMETRY_GAP]

        def gap_recorded() -> bool:
            with psycopg.connect(database_url) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM sequence_gaps WHERE device_id = %s", (gap_device,)
                ).fetchone()
            return row is not None and row[0] > 0

        _wait_until(gap_recorded, timeout=20, message="the telemetry gap recorded by ingest")
    finally:
        worker.stop()
    return _read(database_url, chosen, refused)


def test_the_whole_run_is_stored(stored: Stored) -> None:
    # the scenario breaks no rule of the protocol: nothing refused, nothing quarantined
    assert stored.refused_in_memory == 0
    assert stored.quarantined == {}
    assert len(stored.telemetry) == 40


@pytest.mark.parametrize("code", list(FaultCode))
def test_each_fault_is_visible_in_the_stored_telemetry(code: FaultCode, stored: Stored) -> None:
    device = stored.chosen[code]
    rows = stored.telemetry[device]
    since = START_MS if code is FaultCode.TELEMETRY_GAP else FAULT_AT + 2 * 60_000
    ts = [t for t in rows if t.ts >= since]
    assert ts, f"no stored telemetry from {device} after the fault"
    if code not in _NOT_IN_METRICS:
        assert _check(code, ts, []), code
    if code is FaultCode.POWER_LOSS:
        # the brownout reboot is stored as an event, and the readings go on in the next boot
        reboots = stored.reboots.get(device, [])
        assert len(reboots) == 1
        assert reboots[0][1].get("reason") == "brownout"
        boots = sorted({t.boot for t in rows})
        assert boots == [boots[0], boots[0] + 1]
        assert any(t.boot == boots[1] and t.ts > FAULT_AT for t in rows)
        assert "lost" in stored.presence[device]
    elif code is FaultCode.OFFLINE:
        # the Will marks it lost; its store-and-forward readings arrive marked historical
        assert "lost" in stored.presence[device]
        hist = [t for t in rows if t.hist]
        assert hist
        assert all(FAULT_AT <= t.ts <= FAULT_AT + 30 * 60_000 for t in hist)
    elif code is FaultCode.FLAPPING:
        assert stored.births[device] >= 4
        assert stored.presence[device].count("online") >= 4
    elif code is FaultCode.TELEMETRY_GAP:
        # the lost messages are a hole in the stored sequence, which ingest's gap scan records
        keys = stored.keys[device]
        holes = [
            (a[1] + 1, b[1] - 1)
            for a, b in itertools.pairwise(keys)
            if a[0] == b[0] and b[1] - a[1] > 1
        ]
        assert holes
        assert stored.gaps[device] == holes
    elif code is FaultCode.CLOCK_DRIFT:
        # the device clock falls behind: within one boot, the stored reading after the drift
        # is dated minutes before the one it follows; ingest accepts it (no clock_past)
        steps = [b.ts - a.ts for a, b in itertools.pairwise(rows) if a.boot == b.boot]
        assert min(steps) == 60_000 - 10 * 60_000
        assert sum(s < 0 for s in steps) == 1
        assert device not in stored.quarantined
    # the machine's readings from before the fault carry no trace of it
    if code not in (FaultCode.TELEMETRY_GAP, FaultCode.FLAPPING):
        before = [t for t in rows if t.ts < FAULT_AT]
        assert before
        assert not any(t.hist for t in before)


def test_healthy_machines_show_no_fault_signature(stored: Stored) -> None:
    injected = set(stored.chosen.values())
    healthy = [d for d in stored.telemetry if d not in injected]
    assert healthy
    for device in healthy:
        rows = stored.telemetry[device]
        assert not any(t.metrics.leak for t in rows), device
        assert not any(t.hist for t in rows), device
        seqs = [t.seq for t in rows]
        assert len({t.boot for t in rows}) == 1
        assert seqs == sorted(seqs)
        assert device not in stored.gaps

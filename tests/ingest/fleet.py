"""Test helpers: a ledger of machines, protocol messages from them, publishing, waiting."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from firmware_protocol import (
    AckStatus,
    Birth,
    CartridgeKind,
    CartridgeStage,
    CommandAck,
    Config,
    Event,
    FaultRaised,
    MachineClass,
    Message,
    Metrics,
    PresenceState,
    StageUsage,
    Status,
    Telemetry,
    encode,
    topic_for,
)
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from aquafleet.config import Settings
from aquafleet.db import Database, migrate
from ingest import IngestConfig, IngestWorker


def now_ms() -> int:
    return int(time.time() * 1000)


def device_ids(n: int, prefix: str = "AQ-T") -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(n)]


def prepare_database(url: str, devices: Iterable[str]) -> None:
    """Migrate and enter ``devices`` into the ledger (one site)."""
    with Database.open(Settings(database_url=url)) as database:
        migrate(database)
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO sites (site_id, name, kind, zone, address, timezone) "
            "VALUES ('S1', 'Test campus', 'campus', 'north', '1 Test Road', 'Asia/Shanghai') "
            "ON CONFLICT DO NOTHING"
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO devices (device_id, class, model, hardware_lot, firmware, "
                "install_date, site_id) VALUES (%s, 'campus', 'RO-500', 'LOT1', '1.0.0', "
                "'2024-01-01', 'S1') ON CONFLICT DO NOTHING",
                [(d,) for d in devices],
            )


METRICS = Metrics(
    tds_in=310.0,
    tds_out=9.5,
    feed_temp=21.0,
    inlet_pressure=320.0,
    prefilter_dp=22.0,
    permeate_flow=0.3,
    dispense_flow=0.0,
    volume_total=1234.5,
    tank_level=80.0,
    pump_current=1.1,
    hot_temp=91.0,
    cold_temp=5.0,
    uv_intensity=96.0,
    uv_hours=1500.0,
    leak=False,
    door_open=False,
    mains_ok=True,
    pump_on=True,
    uv_on=True,
    rssi=-71,
    uptime=3600,
)


def telemetry(
    device_id: str,
    seq: int,
    *,
    boot: int = 1,
    ts: int | None = None,
    hist: bool = False,
    metrics: Metrics = METRICS,
) -> Telemetry:
    return Telemetry(
        device_id=device_id,
        boot=boot,
        seq=seq,
        ts=now_ms() if ts is None else ts,
        metrics=metrics,
        stages=(StageUsage(1, 120.5, 30.0), StageUsage(2, 120.5, 30.0)),
        hist=hist,
    )


def birth(
    device_id: str,
    *,
    boot: int = 1,
    conn: int = 1,
    seq: int = 0,
    fw: str = "2.3.1",
    config_version: int = 7,
    ts: int | None = None,
) -> Birth:
    return Birth(
        device_id=device_id,
        boot=boot,
        conn=conn,
        seq=seq,
        ts=now_ms() if ts is None else ts,
        fw=fw,
        model="RO-500",
        machine_class=MachineClass.CAMPUS,
        config=Config(version=config_version, telemetry_interval_s=60, hot_setpoint=92.0),
        stages=(
            CartridgeStage(
                slot=1,
                kind=CartridgeKind.PP,
                capacity_l=3000.0,
                capacity_days=180,
                litres_used=120.5,
                days_in_service=30.0,
            ),
        ),
        metrics=METRICS,
    )


def status(
    device_id: str, state: PresenceState, *, boot: int = 1, conn: int = 1, ts: int | None = None
) -> Status:
    return Status(
        device_id=device_id, boot=boot, conn=conn, ts=now_ms() if ts is None else ts, state=state
    )


def fault_event(device_id: str, seq: int, *, boot: int = 1) -> Event:
    from firmware_protocol import FaultCode

    return Event(
        device_id=device_id,
        boot=boot,
        seq=seq,
        ts=now_ms(),
        body=FaultRaised(code=FaultCode.LEAK, value=1.0),
    )


def ack(
    device_id: str,
    seq: int,
    cmd_id: str,
    *,
    boot: int = 1,
    status: AckStatus = AckStatus.SUCCEEDED,
) -> CommandAck:
    return CommandAck(
        device_id=device_id,
        boot=boot,
        seq=seq,
        ts=now_ms(),
        cmd_id=cmd_id,
        status=status,
    )


@dataclass(frozen=True)
class Raw:
    """A message as bytes on a topic, for inputs no model can express."""

    topic: str
    payload: bytes


def as_raw(message: Message | Raw) -> Raw:
    if isinstance(message, Raw):
        return message
    return Raw(topic_for(message), encode(message))


def publisher(
    host: str,
    port: int,
    *,
    client_id: str = "",
    username: str | None = None,
    password: str | None = None,
    protocol: MQTTProtocolVersion = mqtt.MQTTv5,
) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    if username is not None:
        client.username_pw_set(username, password)
    client.max_inflight_messages_set(500)
    client.max_queued_messages_set(0)
    client.connect(host, port)
    client.loop_start()
    return client


def publish_all(
    host: str,
    port: int,
    messages: Sequence[Message | Raw],
    *,
    qos: int = 1,
    retain: bool = False,
    pace_per_s: float | None = None,
    protocol: MQTTProtocolVersion = mqtt.MQTTv5,
) -> None:
    """Publish and wait until the broker acknowledged every message."""
    client = publisher(host, port, protocol=protocol)
    try:
        infos = []
        started = time.monotonic()
        for i, m in enumerate(messages):
            raw = as_raw(m)
            infos.append(client.publish(raw.topic, raw.payload, qos=qos, retain=retain))
            if pace_per_s:
                ahead = started + i / pace_per_s - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        for info in infos:
            info.wait_for_publish(60)
            assert info.is_published()
    finally:
        client.loop_stop()
        client.disconnect()


def wait_until(
    condition: Callable[[], bool],
    timeout: float = 30.0,
    interval: float = 0.1,
    message: str = "condition",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


def scalar(url: str, query: str, params: Sequence[object] = ()) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def count(url: str, table: str, where: str = "true") -> int:
    return int(str(scalar(url, f"SELECT count(*) FROM {table} WHERE {where}")))


def worker_config(host: str, port: int, prefix: str = "w", **options: Any) -> IngestConfig:
    """A worker's configuration with a client id and group of its own; short batches."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    options.setdefault("batch_ms", 20)
    return IngestConfig(host=host, port=port, client_id=name, group=name, **options)


@contextlib.contextmanager
def running_worker(database_url: str, config: IngestConfig) -> Iterator[IngestWorker]:
    """An `IngestWorker` in this process, started, and stopped (draining) at the end."""
    worker = IngestWorker(config, Database(url=database_url))
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()

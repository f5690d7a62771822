"""A small deterministic fleet's traffic, built from protocol models, and a ledger to match.

What the equivalence tests publish when they do not run the simulator: presence (retained),
births, telemetry of both machine classes, faults raised and cleared, and a clean goodbye.
"""

from __future__ import annotations

from datetime import date

from firmware_protocol import (
    Birth,
    CartridgeKind,
    CartridgeStage,
    Config,
    Event,
    FaultCleared,
    FaultCode,
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

from aquafleet.ledger import Device, DeviceClass, Site, SiteKind
from aquafleet.ledger.csv_file import LedgerFile

Publish = tuple[str, bytes, int, bool]  # topic, payload, qos, retain


def device_ids(count: int, prefix: str = "EQ") -> list[str]:
    return [f"{prefix}-{i:04d}" for i in range(count)]


def ledger(ids: list[str]) -> LedgerFile:
    campus = Site("EQ-CA", "Campus", SiteKind.CAMPUS, "north", "1 Road", "Asia/Shanghai")
    street = Site("EQ-VA", "Street", SiteKind.VENDING_AREA, "south", "2 Road", "Asia/Shanghai")
    devices = [
        Device(
            device_id=device_id,
            device_class=DeviceClass.VENDING if i % 3 == 0 else DeviceClass.CAMPUS,
            model="AQ-V800" if i % 3 == 0 else "AQ-C200",
            hardware_lot="LOT-2024-03",
            firmware="1.5.0",
            install_date=date(2024, 5, 1),
            site_id="EQ-VA" if i % 3 == 0 else "EQ-CA",
        )
        for i, device_id in enumerate(ids)
    ]
    return LedgerFile(sites=[campus, street], devices=devices)


def fleet_traffic(ids: list[str], *, start_ms: int, readings: int = 8) -> list[Publish]:
    """Every device's messages, interleaved across devices as a live fleet's would be."""
    per_device = [_device_messages(i, d, start_ms, readings) for i, d in enumerate(ids)]
    out: list[Publish] = []
    for step in range(max(len(m) for m in per_device)):
        for messages in per_device:
            if step < len(messages):
                out.append(messages[step])
    return out


def _publish(msg: Message, *, retain: bool = False) -> Publish:
    return topic_for(msg), encode(msg), 1, retain


def _device_messages(i: int, device_id: str, start_ms: int, readings: int) -> list[Publish]:
    vending = i % 3 == 0
    boot = 3 + i % 2
    seq = 0
    ts = start_ms + i * 17

    def metrics(k: int) -> Metrics:
        return Metrics(
            tds_in=300.0 + i + k,
            tds_out=8.0 + k * 0.25,
            inlet_pressure=320.0 - k,
            tank_level=60.0 + k,
            volume_total=1000.0 + 2.5 * k,
            hot_temp=None if vending else 90.5,
            uv_intensity=95.0,
            leak=False,
            pump_on=k % 2 == 0,
            sales_count=k if vending else None,
            sales_amount=k * 150 if vending else None,
            rssi=-70 - i % 20,
            uptime=60 * k,
        )

    messages: list[Publish] = [
        _publish(
            Status(device_id=device_id, boot=boot, conn=1, ts=ts, state=PresenceState.ONLINE),
            retain=True,
        ),
        _publish(
            Birth(
                device_id=device_id,
                boot=boot,
                conn=1,
                seq=seq,
                ts=ts,
                fw="1.5.0",
                model="AQ-V800" if vending else "AQ-C200",
                machine_class=MachineClass.VENDING if vending else MachineClass.CAMPUS,
                config=Config(version=2, telemetry_interval_s=60),
                stages=(
                    CartridgeStage(
                        slot=1,
                        kind=CartridgeKind.PP,
                        capacity_l=3000.0,
                        capacity_days=180,
                        litres_used=120.0 + i,
                        days_in_service=10.0,
                    ),
                ),
                metrics=metrics(0),
            )
        ),
    ]
    for k in range(1, readings + 1):
        seq += 1
        ts += 60_000
        messages.append(
            _publish(
                Telemetry(
                    device_id=device_id,
                    boot=boot,
                    seq=seq,
                    ts=ts,
                    metrics=metrics(k),
                    stages=(StageUsage(slot=1, litres_used=120.0 + i + k, days_in_service=10.0),),
                )
            )
        )
        if k == readings // 2 and i % 4 == 1:
            seq += 1
            fault = FaultRaised(code=FaultCode.UV_LAMP_FAILURE, value=31.5)
            messages.append(
                _publish(Event(device_id=device_id, boot=boot, seq=seq, ts=ts + 1, body=fault))
            )
        if k == readings - 1 and i % 4 == 1:
            seq += 1
            cleared = FaultCleared(code=FaultCode.UV_LAMP_FAILURE, value=97.0)
            messages.append(
                _publish(Event(device_id=device_id, boot=boot, seq=seq, ts=ts + 1, body=cleared))
            )
    if i % 5 == 0:
        messages.append(
            _publish(
                Status(
                    device_id=device_id,
                    boot=boot,
                    conn=1,
                    ts=ts + 1000,
                    state=PresenceState.OFFLINE,
                ),
                retain=True,
            )
        )
    return messages

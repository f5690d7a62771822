"""Small fleets for the simulator's tests, run into memory and decoded with the codec."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any

from firmware_protocol import FaultCode, MachineClass, Message, Rejected, decode

from simulators import (
    MachineSpec,
    MemorySink,
    Outgoing,
    Simulation,
    SimulationConfig,
    generate_ledger,
    machines_from_ledger,
    parse_scenario,
)

# A Monday in term time, 00:00 in Asia/Shanghai: the night and the school day both follow.
START_MS = int(datetime(2025, 3, 2, 16, 0, tzinfo=UTC).timestamp() * 1000)
HOUR_MS = 3_600_000


def fleet(n: int, *, seed: int = 1, vending_share: float = 0.4) -> tuple[MachineSpec, ...]:
    return machines_from_ledger(
        generate_ledger(n, seed=seed, vending_share=vending_share, today=date(2025, 3, 1))
    )


def of_class(machines: Iterable[MachineSpec], cls: MachineClass) -> list[str]:
    return [m.device_id for m in machines if m.machine_class is cls]


def config(
    machines: tuple[MachineSpec, ...],
    *,
    hours: float,
    scenario: dict[str, Any] | None = None,
    seed: int = 3,
    start_ms: int = START_MS,
    **kw: Any,
) -> SimulationConfig:
    return SimulationConfig(
        machines=machines,
        start_ms=start_ms,
        duration_ms=int(hours * HOUR_MS),
        seed=seed,
        scenario=parse_scenario(scenario or {}),
        **kw,
    )


def run(cfg: SimulationConfig) -> tuple[Simulation, MemorySink]:
    sink = MemorySink()
    sim = Simulation(cfg, sink)
    sim.run()
    return sim, sink


def decoded(messages: Iterable[Outgoing]) -> list[tuple[Outgoing, Message]]:
    """Every message the codec accepts, judged at its simulated send time."""
    out = []
    for m in messages:
        try:
            out.append((m, decode(m.topic, m.payload, received_at_ms=m.sim_ms)))
        except Rejected:
            continue
    return out


def rejections(messages: Iterable[Outgoing]) -> list[tuple[Outgoing, str]]:
    out = []
    for m in messages:
        try:
            decode(m.topic, m.payload, received_at_ms=m.sim_ms)
        except Rejected as exc:
            out.append((m, exc.reason.value))
    return out


def every_fault_scenario(
    machines: Iterable[MachineSpec],
) -> tuple[dict[FaultCode, str], dict[str, Any]]:
    """Every fault of the table on a machine of its own, 8 h in; with the machine of each."""
    machines = list(machines)
    campus = of_class(machines, MachineClass.CAMPUS)
    vending = of_class(machines, MachineClass.VENDING)
    chosen: dict[FaultCode, str] = {}
    faults: list[dict[str, Any]] = []
    for code in FaultCode:
        pool = vending if code is FaultCode.PAYMENT_FAULT else campus
        device = pool.pop(0)
        chosen[code] = device
        item: dict[str, Any] = {"fault": code.value, "devices": [device], "at": "+8h"}
        if code is FaultCode.PREFILTER_CLOGGED:
            item["params"] = {"ramp": "2h"}
        if code in (FaultCode.POWER_LOSS, FaultCode.OFFLINE, FaultCode.TELEMETRY_GAP):
            item["duration"] = "30m"
        faults.append(item)
    return chosen, {"faults": faults}

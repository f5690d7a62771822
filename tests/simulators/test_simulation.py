"""The simulation into memory: determinism, the protocol, faults, misbehaviours, repairs."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from firmware_protocol import (
    AckStatus,
    Birth,
    Command,
    CommandAck,
    Event,
    FaultCode,
    FaultRaised,
    MachineClass,
    Message,
    PresenceState,
    Rebirth,
    Reboot,
    RebootReason,
    Resend,
    ResetCartridge,
    Status,
    Telemetry,
    TimeSync,
    encode,
    topic_for,
)

import simulators
from aquafleet.ledger.csv_file import read_ledger_csv
from simulators import GroundTruth, MemorySink, Outgoing, RepairAction, Simulation
from simulators.ledger import (
    gateway_assignment,
    generate_ledger,
    ledger_csv_text,
    machines_from_ledger,
    write_ledger_csv,
)
from tests.simulators.helpers import (
    HOUR_MS,
    START_MS,
    config,
    decoded,
    every_fault_scenario,
    fleet,
    of_class,
    rejections,
    run,
)


def test_public_api_is_what_init_exports() -> None:
    assert sorted(simulators.__all__) == simulators.__all__
    for name in simulators.__all__:
        assert hasattr(simulators, name)


def test_same_seed_and_scenario_give_the_same_bytes() -> None:
    machines = fleet(30)
    scenario = {
        "faults": [{"fault": "pump_failure", "share": 0.1, "at": "+1h"}],
        "misbehaviours": [{"kind": "duplicate", "count": 2, "at": 0}],
    }
    _, a = run(config(machines, hours=3, scenario=scenario))
    _, b = run(config(machines, hours=3, scenario=scenario))
    _, c = run(config(machines, hours=3, scenario=scenario, seed=4))
    assert len(a.messages) > 30 * 180
    assert a.stream_bytes() == b.stream_bytes()
    assert a.stream_bytes() != c.stream_bytes()


def test_healthy_fleet_speaks_the_protocol() -> None:
    machines = fleet(40)
    sim, sink = run(config(machines, hours=26))
    assert rejections(sink.messages) == []
    per_device: dict[str, list[Message]] = defaultdict(list)
    for _m, msg in decoded(sink.messages):
        per_device[msg.device_id].append(msg)
    for device_id, msgs in per_device.items():
        assert isinstance(msgs[0], Status)
        assert msgs[0].state is PresenceState.ONLINE
        assert isinstance(msgs[1], Birth)
        assert isinstance(msgs[-1], Status)
        assert msgs[-1].state is PresenceState.OFFLINE
        seqs = [m.seq for m in msgs if hasattr(m, "seq")]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), device_id  # no gap, no repeat
        stamps = [m.ts for m in msgs if isinstance(m, Telemetry)]
        assert stamps == sorted(stamps)
        assert len(stamps) == 26 * 60
    # nothing injected and nothing worn out in a day
    assert len(sim.truth) == 0
    retained = [t for t in sink.retained if t.endswith("/status")]
    assert len(retained) == 40


def test_telemetry_fast_path_matches_the_codec() -> None:
    machines = fleet(20)
    _, sink = run(config(machines, hours=2))
    seen = 0
    for m, msg in decoded(sink.messages):
        if isinstance(msg, Telemetry):
            assert encode(msg) == m.payload
            assert topic_for(msg) == m.topic
            seen += 1
    assert seen == 20 * 120


_DECODED: dict[int, list[tuple[Outgoing, Message]]] = {}


def _decoded(sink: MemorySink) -> list[tuple[Outgoing, Message]]:
    # the module's shared run is decoded once, not once per parametrised test
    key = id(sink)
    if key not in _DECODED or len(_DECODED[key]) > len(sink.messages):
        _DECODED[key] = decoded(sink.messages)
    return _DECODED[key]


def _telemetry(sink: MemorySink, device_id: str, after_ms: int) -> list[Telemetry]:
    return [
        msg
        for _m, msg in _decoded(sink)
        if isinstance(msg, Telemetry) and msg.device_id == device_id and msg.ts >= after_ms
    ]


def _messages(sink: MemorySink, device_id: str) -> list[Message]:
    return [msg for _m, msg in _decoded(sink) if msg.device_id == device_id]


FAULT_AT = START_MS + 8 * HOUR_MS  # 08:00 local, a school day


def _rejection(t: Telemetry) -> float:
    m = t.metrics
    assert m.tds_in is not None
    assert m.tds_out is not None
    return 1 - m.tds_out / m.tds_in


def _check(code: FaultCode, ts: list[Telemetry], msgs: list[Message]) -> bool:
    ms = [t.metrics for t in ts]
    if code is FaultCode.PREFILTER_CLOGGED:
        dps = [m.prefilter_dp for m in ms if m.prefilter_dp is not None]
        return dps[-1] >= 1.9 * dps[0]
    if code is FaultCode.MEMBRANE_DEGRADED:
        return any(t.metrics.pump_on and 0.8 <= _rejection(t) < 0.9 for t in ts)
    if code is FaultCode.MEMBRANE_FAILED:
        return any(t.metrics.pump_on and _rejection(t) < 0.8 for t in ts)
    if code is FaultCode.CARTRIDGE_EXHAUSTED:
        return 0.9 * 3000 <= ts[-1].stages[0].litres_used < 3000
    if code is FaultCode.CARTRIDGE_OVERDUE:
        return ts[-1].stages[0].litres_used > 3000
    if code is FaultCode.UV_LAMP_FAILURE:
        return all(m.uv_on and (m.uv_intensity or 100) < 50 for m in ms)
    if code is FaultCode.UV_LAMP_EXPIRED:
        return all((m.uv_hours or 0) >= 9000 for m in ms)
    if code is FaultCode.LEAK:
        return all(m.leak for m in ms)
    if code is FaultCode.PUMP_FAILURE:
        return any(m.pump_on and (m.pump_current or 0) < 0.1 for m in ms)
    if code is FaultCode.NO_INLET_WATER:
        return all((m.inlet_pressure or 999) < 100 for m in ms)
    if code is FaultCode.VALVE_STUCK_OPEN:
        return any(m.pump_on and (m.tank_level or 0) >= 99.9 for m in ms)
    if code is FaultCode.TANK_EMPTY:
        return any((m.tank_level or 100) < 10 for m in ms)
    if code is FaultCode.HEATER_FAILURE:
        return any(m.heater_on and (m.hot_temp or 99) < 92 - 15 for m in ms)
    if code is FaultCode.HOT_OVERTEMP:
        return any((m.hot_temp or 0) > 100 for m in ms)
    if code is FaultCode.COMPRESSOR_FAILURE:
        return any(m.compressor_on and (m.cold_temp or 0) > 12 for m in ms)
    if code is FaultCode.PAYMENT_FAULT:
        return all(m.payment_ok is False and m.payment_error for m in ms)
    if code is FaultCode.DOOR_OPEN:
        return all(m.door_open for m in ms)
    if code is FaultCode.POWER_LOSS:
        reboots = [m for m in msgs if isinstance(m, Event) and isinstance(m.body, Reboot)]
        births = [m for m in msgs if isinstance(m, Birth)]
        return (
            len(reboots) == 1
            and reboots[0].body.reason is RebootReason.BROWNOUT  # type: ignore[union-attr]
            and births[-1].boot == births[0].boot + 1
            and any(isinstance(m, Status) and m.state is PresenceState.LOST for m in msgs)
        )
    if code is FaultCode.SENSOR_FAULT:
        return len({m.tds_out for m in ms}) == 1 and len(ms) > 60
    if code is FaultCode.CLOCK_DRIFT:
        return True  # checked on the raw stream below
    if code is FaultCode.OFFLINE:
        lost = any(isinstance(m, Status) and m.state is PresenceState.LOST for m in msgs)
        return lost and any(t.hist for t in ts)
    if code is FaultCode.FLAPPING:
        return sum(isinstance(m, Birth) for m in msgs) >= 4
    if code is FaultCode.TELEMETRY_GAP:
        seqs = [t.seq for t in ts]
        return any(b - a > 1 for a, b in itertools.pairwise(seqs))
    raise AssertionError(code)


@pytest.fixture(scope="module")
def every_fault() -> tuple[dict[FaultCode, str], MemorySink, GroundTruth, list[Outgoing]]:
    machines = fleet(40)
    chosen, scenario = every_fault_scenario(machines)
    sim, sink = run(config(machines, hours=14, scenario=scenario))
    return chosen, sink, sim.truth, sink.messages


@pytest.mark.parametrize("code", list(FaultCode))
def test_each_fault_is_visible_and_in_the_ground_truth(
    code: FaultCode, every_fault: tuple[dict[FaultCode, str], MemorySink, GroundTruth, Any]
) -> None:
    chosen, sink, truth, _ = every_fault
    device = chosen[code]
    since = START_MS if code is FaultCode.TELEMETRY_GAP else FAULT_AT + 2 * 60_000
    ts = _telemetry(sink, device, since)
    assert ts, f"no telemetry from {device} after the fault"
    assert _check(code, ts, _messages(sink, device)), code
    records = [r for r in truth if r.device_id == device and r.cause == "injected"]
    assert [(r.code, r.start_ms) for r in records] == [(code, FAULT_AT)]


def test_clock_drift_shifts_device_time(every_fault: Any) -> None:
    chosen, sink, _truth, _ = every_fault
    device = chosen[FaultCode.CLOCK_DRIFT]
    offsets = {
        msg.ts - m.sim_ms
        for m, msg in decoded(sink.messages)
        if isinstance(msg, Telemetry) and msg.device_id == device and m.sim_ms > FAULT_AT
    }
    assert offsets == {-10 * 60_000}


def test_device_raises_its_own_faults_as_events(every_fault: Any) -> None:
    chosen, sink, _truth, _ = every_fault
    raised = {
        (msg.device_id, msg.body.code)
        for _m, msg in decoded(sink.messages)
        if isinstance(msg, Event) and isinstance(msg.body, FaultRaised)
    }
    device_raised = (
        FaultCode.UV_LAMP_FAILURE, FaultCode.LEAK, FaultCode.PUMP_FAILURE,
        FaultCode.NO_INLET_WATER, FaultCode.HEATER_FAILURE, FaultCode.HOT_OVERTEMP,
        FaultCode.PAYMENT_FAULT, FaultCode.DOOR_OPEN, FaultCode.CARTRIDGE_OVERDUE,
    )  # fmt: skip
    for code in device_raised:
        assert (chosen[code], code) in raised, code
    # cloud-side faults are for the rules to find, not the device
    assert (chosen[FaultCode.MEMBRANE_FAILED], FaultCode.MEMBRANE_FAILED) not in raised


def test_consequences_are_in_the_ground_truth(every_fault: Any) -> None:
    chosen, _sink, truth, _ = every_fault
    injected = set(chosen.values())
    caused = set()
    for r in truth:
        assert r.device_id in injected
        if r.cause != "injected":
            caused.add((r.device_id, r.code, r.cause))
    # an empty tank behind the failed pump and the dry inlet; a clogged pre-filter in the
    # overdue PP cartridge: real effects of the injected faults, so in the ground truth too
    assert (chosen[FaultCode.CARTRIDGE_OVERDUE], FaultCode.PREFILTER_CLOGGED, "wear") in caused
    assert {code for _d, code, _c in caused} <= {FaultCode.TANK_EMPTY, FaultCode.PREFILTER_CLOGGED}


def test_misbehaviours_break_the_contract_as_asked() -> None:
    machines = fleet(12)
    ids = [m.device_id for m in machines]
    scenario = {
        "misbehaviours": [
            {"kind": "malformed", "devices": [ids[0]], "at": 0, "params": {"probability": 1.0}},
            {"kind": "malformed", "devices": [ids[1]], "at": 0,
             "params": {"probability": 1.0, "mode": "too_large"}},
            {"kind": "impersonate", "devices": [ids[2]], "at": 0,
             "params": {"target": ids[3], "probability": 1.0}},
            {"kind": "clock_skew", "devices": [ids[4]], "at": 0},
            {"kind": "duplicate", "devices": [ids[5]], "at": 0, "params": {"probability": 1.0}},
            {"kind": "out_of_order", "devices": [ids[6]], "at": 0,
             "params": {"probability": 1.0}},
        ]
    }  # fmt: skip
    _, sink = run(config(machines, hours=1, scenario=scenario))
    reasons = Counter((m.device_id, r) for m, r in rejections(sink.messages))
    assert reasons[(ids[0], "malformed_json")] >= 59
    assert reasons[(ids[1], "too_large")] >= 59
    assert reasons[(ids[2], "identity_mismatch")] >= 59
    assert reasons[(ids[4], "clock_future")] >= 59
    assert set(d for d, _r in reasons) == {ids[0], ids[1], ids[2], ids[4]}
    dup = [msg.seq for _m, msg in decoded(sink.messages)
           if isinstance(msg, Telemetry) and msg.device_id == ids[5]]  # fmt: skip
    assert len(dup) == 2 * len(set(dup))
    ooo = [msg.seq for _m, msg in decoded(sink.messages)
           if isinstance(msg, Telemetry) and msg.device_id == ids[6]]  # fmt: skip
    assert ooo != sorted(ooo)
    assert sorted(ooo) == list(range(ooo[0] - 1, ooo[0] - 1 + len(ooo)))


def test_batch_defect_fails_one_lot_far_more() -> None:
    machines = fleet(200, seed=2)
    lot = machines[0].hardware_lot
    scenario = {
        "batch_defects": [
            {"lot": lot, "fault": "pump_failure", "base_rate_per_year": 2.0, "multiplier": 10}
        ]
    }
    sim = Simulation(config(machines, hours=24 * 10, scenario=scenario, interval_s=3600),
                     MemorySink())  # fmt: skip
    sim.run()
    causes = Counter(r.cause for r in sim.truth if r.code is FaultCode.PUMP_FAILURE)
    in_lot = sum(m.hardware_lot == lot for m in machines)
    rate_lot = causes["batch_defect"] / in_lot
    rate_rest = causes["random"] / (len(machines) - in_lot)
    assert causes["batch_defect"] > 5
    assert rate_lot > 3 * rate_rest


def test_repair_clears_a_fault_and_it_recurs() -> None:
    machines = fleet(6)
    device = of_class(machines, MachineClass.CAMPUS)[0]
    scenario = {
        "faults": [{"fault": "membrane_failed", "devices": [device], "at": "+1h",
                    "recur_after": "2h"}],
        "repairs": [{"device": device, "fault": "membrane_failed", "at": "+2h"}],
    }  # fmt: skip
    start = START_MS + 8 * HOUR_MS  # daytime: the pump runs
    sim, sink = run(config(machines, hours=6, scenario=scenario, start_ms=start))
    records = [(r.cause, r.start_ms - start, r.end_ms) for r in sim.truth.sorted()]
    assert records == [
        ("injected", HOUR_MS, start + 2 * HOUR_MS),
        ("recurrence", 4 * HOUR_MS, None),
    ]
    ts = _telemetry(sink, device, start)
    healthy = [_rejection(t) for t in ts if 2.2 * HOUR_MS < t.ts - start < 3.9 * HOUR_MS
               and t.metrics.pump_on]  # fmt: skip
    failed = [_rejection(t) for t in ts if t.ts - start > 4.1 * HOUR_MS]
    assert min(healthy) > 0.9
    assert max(failed) < 0.8


def test_repair_from_the_api_replaces_a_cartridge() -> None:
    machines = fleet(4)
    device = machines[0].device_id
    scenario = {"faults": [{"fault": "cartridge_overdue", "devices": [device], "at": "+10m"}]}
    sink = MemorySink()
    sim = Simulation(config(machines, hours=2, scenario=scenario), sink)
    for actions in sim.ticks():
        sink.send(actions)
        if sim.now_ms == START_MS + HOUR_MS:
            sim.repair(RepairAction(device_id=device, at=None, code=FaultCode.CARTRIDGE_OVERDUE))
    records = sim.truth.sorted()
    assert [(r.name, r.cause, r.end_ms) for r in records] == [
        ("cartridge_overdue", "injected", START_MS + HOUR_MS),
        ("prefilter_clogged", "wear", START_MS + HOUR_MS),  # an overdue PP cartridge clogs
    ]
    last = _telemetry(sink, device, START_MS)[-1]
    assert last.stages[0].litres_used < 5


def _command(device_id: str, cmd_id: str, body: Any, ts: int = START_MS) -> tuple[str, bytes]:
    command = Command(device_id=device_id, id=cmd_id, ts=ts, expires_at=ts + HOUR_MS * 100,
                      body=body)  # fmt: skip
    return topic_for(command), encode(command)


def test_commands_are_run_and_acknowledged() -> None:
    machines = fleet(4)
    a, b = machines[0].device_id, machines[1].device_id
    scenario = {
        "faults": [
            {"fault": "telemetry_gap", "devices": [a], "at": "+10m", "duration": "3m",
             "params": {"recoverable": True}},
            {"fault": "clock_drift", "devices": [b], "at": "+5m"},
        ]
    }  # fmt: skip
    sink = MemorySink()
    sim = Simulation(config(machines, hours=1, scenario=scenario), sink)
    for actions in sim.ticks():
        sink.send(actions)
        if sim.now_ms == START_MS + 20 * 60_000:
            boot = int(sim.boot[0])
            tel = [msg for _m, msg in decoded(sink.messages)
                   if isinstance(msg, Telemetry) and msg.device_id == a]  # fmt: skip
            seqs = [t.seq for t in tel]
            hole = next(x + 1 for x, y in itertools.pairwise(seqs) if y - x > 1)
            sink.inject_command(*_command(a, "r1", Resend(boot=boot, from_seq=hole,
                                                          to_seq=hole + 2)))  # fmt: skip
            sink.inject_command(*_command(a, "b1", Rebirth()))
            sink.inject_command(*_command(b, "t1", TimeSync()))
            sink.inject_command(*_command(a, "c1", ResetCartridge(slot=2)))
            sink.inject_command(*_command(a, "c2", ResetCartridge(slot=7)))
    acks = {msg.cmd_id: msg for _m, msg in decoded(sink.messages) if isinstance(msg, CommandAck)}
    assert acks["r1"].status is AckStatus.SUCCEEDED
    assert acks["b1"].status is AckStatus.SUCCEEDED
    assert acks["t1"].status is AckStatus.SUCCEEDED
    assert acks["c1"].status is AckStatus.SUCCEEDED
    assert acks["c2"].status is AckStatus.REJECTED
    hist = [msg for _m, msg in decoded(sink.messages) if isinstance(msg, Telemetry) and msg.hist]
    assert len(hist) == 3
    assert all(t.device_id == a for t in hist)
    drift = [r for r in sim.truth.sorted() if r.name == "clock_drift"]
    assert drift[0].end_ms == START_MS + 20 * 60_000
    births = [m for m in _messages(sink, a) if isinstance(m, Birth)]
    assert len(births) == 2


def test_generated_ledger_is_accepted_by_the_ledger_reader(tmp_path: Path) -> None:
    ledger = generate_ledger(300, seed=9, today=date(2025, 3, 1))
    path = tmp_path / "ledger.csv"
    write_ledger_csv(ledger, path)
    again = read_ledger_csv(path, default_timezone="Asia/Shanghai", today=date(2025, 3, 1))
    assert len(again.devices) == 300
    classes = Counter(d.device_class.value for d in again.devices)
    assert classes["campus"] > 100
    assert classes["vending"] > 60
    assert len({d.hardware_lot for d in again.devices}) == 4
    assert all(d.part_suppliers for d in again.devices)
    assert generate_ledger(300, seed=9, today=date(2025, 3, 1)) == ledger


def test_generated_gateways_each_serve_consecutive_sites(tmp_path: Path) -> None:
    day = date(2025, 3, 1)
    plain = generate_ledger(300, seed=9, today=day)
    ledger = generate_ledger(300, seed=9, today=day, gateways=7)
    # the gateways are added to the ledger generated without them, which stays as it was
    assert ledger.sites == plain.sites
    assert [replace(d, gateway_id=None) for d in ledger.devices] == plain.devices
    assert all(d.gateway_id is None for d in plain.devices)
    assert generate_ledger(300, seed=9, today=day, gateways=7) == ledger
    served = Counter(str(d.gateway_id) for d in ledger.devices)
    assert sorted(served) == [f"SIM-GW{k:02d}" for k in range(1, 8)]
    assert max(served.values()) - min(served.values()) <= 1
    # walking the sites in order meets each gateway in one run: its sites are consecutive
    rank = {site.site_id: k for k, site in enumerate(ledger.sites)}
    in_site_order = sorted(ledger.devices, key=lambda d: rank[d.site_id])
    runs = [g for g, _ in itertools.groupby(str(d.gateway_id) for d in in_site_order)]
    assert runs == sorted(served)

    path = tmp_path / "ledger.csv"
    write_ledger_csv(ledger, path)
    again = read_ledger_csv(path, default_timezone="Asia/Shanghai", today=day)
    assert {d.device_id: d.gateway_id for d in again.devices} == {
        d.device_id: d.gateway_id for d in ledger.devices
    }
    machines = machines_from_ledger(again)
    assert gateway_assignment(machines) == {d.device_id: str(d.gateway_id) for d in ledger.devices}
    # without gateways the file differs only by the empty gateway_id column
    plain_rows = [line.split(",") for line in ledger_csv_text(plain).splitlines()]
    column = plain_rows[0].index("gateway_id")
    assert {row[column] for row in plain_rows[1:]} == {""}
    assert gateway_assignment(machines_from_ledger(plain)) == {}
    with pytest.raises(ValueError, match="gateways"):
        generate_ledger(3, gateways=4)


def test_ground_truth_file_is_json_lines(tmp_path: Path) -> None:
    machines = fleet(5)
    scenario = {"faults": [{"fault": "leak", "count": 2, "at": "+5m", "duration": "10m"}]}
    path = tmp_path / "truth.jsonl"
    simulators.run_simulation(config(machines, hours=1, scenario=scenario), MemorySink(),
                              ground_truth=path)  # fmt: skip
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [(x["code"], x["end_ms"] - x["start_ms"]) for x in lines] == [("leak", 600_000)] * 2
    assert np.all(np.diff([x["start_ms"] for x in lines]) >= 0)

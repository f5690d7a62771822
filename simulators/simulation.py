"""The simulation: machines' firmware around the fleet's physics, one telemetry interval a tick.

What each simulated machine does, as real firmware under ``firmware-protocol/`` would:

* connects with a Will (retained ``status`` ``lost``), publishes retained ``status`` ``online``
  and a ``birth`` carrying its boot and connection counters, configuration, cartridges, state and
  active faults;
* numbers every data message (birth, telemetry, event, ack) with ``seq``, per boot;
* publishes ``telemetry`` every interval at its own phase within the interval, ``event`` when
  its own detection raises or clears a fault, on sales, on door and cartridge changes, reboots;
* while its network is down keeps measuring and buffers, then replays the buffer with ``hist``
  after the reconnect's birth (store-and-forward); after a power loss it reboots (``boot`` + 1,
  ``seq`` from 0) and reports a ``reboot`` event with reason ``brownout``;
* answers the downlink commands (rebirth, resend, set_config, reset_cartridge, time_sync) with an
  ``ack``.

Faults and misbehaviours come from the scenario's timeline; each occurrence is written to the
ground truth with its start and end.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson
from firmware_protocol import (
    FAULT_TABLE,
    AckError,
    AckStatus,
    Birth,
    CartridgeReplaced,
    CartridgeStage,
    Command,
    CommandAck,
    Config,
    DoorClosed,
    DoorOpened,
    Event,
    EventBody,
    FaultCleared,
    FaultCode,
    FaultRaised,
    MachineClass,
    Metrics,
    Payment,
    PaymentMethod,
    PaymentResult,
    PresenceState,
    Rebirth,
    Reboot,
    RebootReason,
    Rejected,
    Resend,
    ResetCartridge,
    SetConfig,
    Status,
    TimeSync,
    decode,
    encode,
    to_wire,
    topic_of,
)
from firmware_protocol import MessageKind as Kind

from simulators import wear
from simulators.fleet import FAULT_CODES, FAULT_INDEX, Fleet
from simulators.injection import Planned, Timeline, plan, repair_codes
from simulators.ledger import MachineSpec
from simulators.scenario import Misbehaviour, RepairAction, Scenario
from simulators.sinks import Action, Connect, Disconnect, Outgoing, Sink
from simulators.truth import GroundTruth, TruthRecord
from simulators.wire import PURIFIER_METRICS, VENDING_METRICS, with_hist

__all__ = ["RunStats", "Simulation", "SimulationConfig"]

_CURRENCY: Final = "CNY"
_MAX_BUFFER: Final = 10_000  # store-and-forward messages a device keeps while offline
_FAULT_VALUE_METRIC: Final[Mapping[FaultCode, str]] = {
    FaultCode.UV_LAMP_FAILURE: "uv_intensity",
    FaultCode.UV_LAMP_EXPIRED: "uv_hours",
    FaultCode.PUMP_FAILURE: "pump_current",
    FaultCode.NO_INLET_WATER: "inlet_pressure",
    FaultCode.HEATER_FAILURE: "hot_temp",
    FaultCode.HOT_OVERTEMP: "hot_temp",
    FaultCode.COMPRESSOR_FAILURE: "cold_temp",
    FaultCode.PAYMENT_FAULT: "payment_error",
    FaultCode.SENSOR_FAULT: "tds_out",
}
# Faults handled by the firmware model rather than the physics.
_CONNECTIVITY: Final = frozenset(
    {FaultCode.OFFLINE, FaultCode.FLAPPING, FaultCode.CLOCK_DRIFT, FaultCode.TELEMETRY_GAP}
)
_WEAR_CODES: Final = (
    FaultCode.PREFILTER_CLOGGED,
    FaultCode.MEMBRANE_DEGRADED,
    FaultCode.MEMBRANE_FAILED,
    FaultCode.CARTRIDGE_EXHAUSTED,
    FaultCode.CARTRIDGE_OVERDUE,
    FaultCode.UV_LAMP_EXPIRED,
    FaultCode.TANK_EMPTY,
)
_BOOL_METRICS: Final = frozenset(
    {
        "leak",
        "door_open",
        "mains_ok",
        "heater_on",
        "compressor_on",
        "pump_on",
        "uv_on",
        "payment_ok",
    }
)
_INT_METRICS: Final = frozenset({"payment_error", "sales_count", "sales_amount", "rssi", "uptime"})


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulationConfig:
    """Everything a run depends on; the same config gives the same bytes."""

    machines: tuple[MachineSpec, ...]
    start_ms: int
    duration_ms: int | None = None
    seed: int = 0
    interval_s: int = 60
    scenario: Scenario = field(default_factory=Scenario)
    #: Data messages each device keeps for ``resend``; None: 256 up to 2 000 machines, else 0.
    resend_depth: int | None = None
    #: Validate codec-built messages against the schemas; None: up to 5 000 machines.
    validate: bool | None = None
    #: Added to every machine's first boot counter: a fleet run again after an earlier run has
    #: powered up again, so its messages must not reuse the (device, boot, seq) keys of the last.
    boot_offset: int = 0

    @property
    def end_ms(self) -> int | None:
        return None if self.duration_ms is None else self.start_ms + self.duration_ms


@dataclass(slots=True)
class RunStats:
    ticks: int = 0
    messages: int = 0
    payload_bytes: int = 0
    machine_minutes: float = 0.0
    faults_started: int = 0
    commands: int = 0
    online: int = 0


@dataclass(slots=True)
class _SendFlags:
    """Per-device misbehaviours that change what is put on the wire."""

    duplicate: float = 0.0
    out_of_order: float = 0.0
    malformed: tuple[str, float] | None = None
    impersonate: tuple[str, str, float] | None = None
    gap: tuple[float, bool] | None = None
    held: Outgoing | None = None

    def any(self) -> bool:
        return bool(
            self.duplicate or self.out_of_order or self.malformed or self.impersonate or self.gap
            or self.held
        )  # fmt: skip


class Simulation:
    """A running simulated fleet. Drive it with `run`, or `begin` / `tick` / `finish`.

    ``sink`` receives the actions; ``truth`` collects the ground truth (one is made if not
    given). Repairs can be queued any time with `repair`, and commands arrive through the sink.
    """

    def __init__(
        self, config: SimulationConfig, sink: Sink, *, truth: GroundTruth | None = None
    ) -> None:
        self.config = config
        self.sink = sink
        self.truth = truth if truth is not None else GroundTruth()
        self.stats = RunStats()
        machines = config.machines
        n = len(machines)
        self.n = n
        self.interval_ms = config.interval_s * 1000
        self.fleet = Fleet(
            machines, seed=config.seed, start_ms=config.start_ms, interval_s=config.interval_s
        )
        self.rng = np.random.default_rng([config.seed, 0xE261])
        self.ids = [m.device_id for m in machines]
        self.index = {d: i for i, d in enumerate(self.ids)}
        self._topics = {
            kind: [topic_of(d, kind) for d in self.ids]
            for kind in (Kind.TELEMETRY, Kind.EVENT, Kind.BIRTH, Kind.STATUS, Kind.ACK)
        }
        self.validate = config.validate if config.validate is not None else n <= 5000
        depth = config.resend_depth
        self.resend_depth = depth if depth is not None else (256 if n <= 2000 else 0)
        frng = np.random.default_rng([config.seed, 0xB007])
        self.boot = frng.integers(1, 50, n).astype(np.int64) + config.boot_offset
        self.conn = self.boot * 2 + frng.integers(0, 5, n)
        self.seq = np.zeros(n, dtype=np.int64)
        self.connected = np.zeros(n, dtype=bool)
        self.network_down = np.zeros(n, dtype=bool)
        self.skew_ms = np.zeros(n, dtype=np.int64)
        self.flap_rate = np.zeros(n)
        self.report_every = np.ones(n, dtype=np.int64)
        self.config_version = np.ones(n, dtype=np.int64)
        self.door_alarm_s = np.full(n, 60, dtype=np.int64)
        self.flags: dict[int, _SendFlags] = {}
        self.buffers: dict[int, list[dict[str, Any]]] = {}
        self.rings: dict[int, deque[dict[str, Any]]] = {}
        self.pending_commands: dict[int, list[Command]] = {}
        self._active: dict[tuple[int, str], Planned] = {}
        self._tank_low_since = np.full(n, -1, dtype=np.int64)
        self._wear_prev = np.zeros((n, len(_WEAR_CODES)), dtype=bool)
        self.timeline = Timeline()
        self.tick_no = 0
        self.now_ms = config.start_ms
        end = config.end_ms
        horizon = end if end is not None else config.start_ms + (365 * 86_400_000)
        plan(
            config.scenario,
            machines,
            seed=config.seed,
            start_ms=config.start_ms,
            horizon_ms=horizon,
            timeline=self.timeline,
            device_index=self.index,
        )
        self._pre: list[Action] = []
        self._events: dict[int, list[tuple[int, EventBody, str | None]]] = {}
        self._lock = threading.Lock()
        self._queued_repairs: list[RepairAction] = []
        self._started = False

    # ------------------------------------------------------------------ public face

    @property
    def done(self) -> bool:
        end = self.config.end_ms
        return end is not None and self.now_ms >= end

    @property
    def online(self) -> int:
        return int(np.count_nonzero(self.connected))

    def repair(self, action: RepairAction) -> None:
        """Queue a repair; it happens at ``action.at`` or, without one, at the next tick."""
        with self._lock:
            self._queued_repairs.append(action)

    def begin(self) -> list[Action]:
        """Connect every machine: Will, retained status online, birth."""
        self.fleet.readings()
        out: list[Action] = []
        for i in np.argsort(self.fleet.phase_ms, kind="stable").tolist():
            out.extend(self._connect(i, self.now_ms + int(self.fleet.phase_ms[i])))
        self._started = True
        self._count(out)
        return out

    def tick(self) -> list[Action]:
        """Advance one telemetry interval and return what the machines sent in it."""
        t0 = self.now_ms
        t1 = t0 + self.interval_ms
        self._pre = []
        self._events = {}
        with self._lock:
            queued, self._queued_repairs = self._queued_repairs, []
        for repair in queued:
            self.timeline.add(
                repair.at.resolve(self.config.start_ms) if repair.at else t0, "repair", repair
            )
        # Due at or before this tick's start: the readings of the tick (stamped t0 + phase) then
        # show it, and none stamped before its time does.
        for when, what, item in self.timeline.due(t0):
            at = max(when, t0)
            if what == "start":
                self._start(item, at)
            elif what == "end":
                self._end(item, at, repaired=False)
            else:
                self._repair(item, at)
        self._handle_commands(t0)
        self._flap(t0)
        outcome = self.fleet.step(t1)
        readings = self.fleet.readings()
        self._device_events(t1, readings)
        self._sales_events(outcome)
        self._watch_wear(t1, readings)
        data = self._data_messages(t0, readings)
        self.now_ms = t1
        self.tick_no += 1
        actions = self._pre + data
        self.stats.ticks += 1
        self.stats.machine_minutes += self.n * self.interval_ms / 60_000
        self.stats.online = self.online
        self._count(actions)
        return actions

    def finish(self, *, graceful: bool = True) -> list[Action]:
        """End of the run: every connected machine says offline and disconnects cleanly."""
        out: list[Action] = []
        for i in np.nonzero(self.connected)[0].tolist():
            ts = self._device_ms(i, self.now_ms)
            if graceful:
                out.append(self._status(i, PresenceState.OFFLINE, ts, self.now_ms))
            out.append(Disconnect(self.ids[i], send_will=not graceful, sim_ms=self.now_ms))
            self.connected[i] = False
        self._count(out)
        return out

    def ticks(self) -> Iterator[list[Action]]:
        """``begin()``, then one list of actions per tick until the duration is over."""
        if not self._started:
            yield self.begin()
        while not self.done:
            yield self.tick()

    def run(
        self,
        *,
        speed: float | None = None,
        stop: threading.Event | None = None,
        on_tick: Callable[[Simulation], None] | None = None,
    ) -> RunStats:
        """Run to the end of the duration (or until ``stop`` is set) and send to the sink.

        ``speed`` None: as fast as possible (simulated timestamps); K: simulated time runs K times
        faster than the wall clock, each message sent when its simulated time comes.
        """
        stop = stop or threading.Event()
        wall0 = time.monotonic()
        sim0 = self.now_ms

        def send_paced(actions: Sequence[Action]) -> None:
            if speed is None:
                self.sink.send(actions)
                return
            chunk: list[Action] = []
            chunk_due = -1.0
            for action in actions:
                due = wall0 + (action.sim_ms - sim0) / 1000.0 / speed
                if chunk and due - chunk_due > 0.05:  # batch sends within 50 ms of each other
                    self._wait_until(chunk_due, stop)
                    self.sink.send(chunk)
                    chunk = []
                if not chunk:
                    chunk_due = due
                chunk.append(action)
            if chunk:
                self._wait_until(chunk_due, stop)
                self.sink.send(chunk)

        try:
            if not self._started:
                send_paced(self.begin())
            while not self.done and not stop.is_set():
                send_paced(self.tick())
                if on_tick is not None:
                    on_tick(self)
        finally:
            self.sink.send(self.finish())
        return self.stats

    @staticmethod
    def _wait_until(wall: float, stop: threading.Event) -> None:
        delay = wall - time.monotonic()
        if delay > 0:
            stop.wait(delay)

    # ------------------------------------------------------------------ helpers

    def _count(self, actions: Sequence[Action]) -> None:
        for a in actions:
            if isinstance(a, Outgoing):
                self.stats.messages += 1
                self.stats.payload_bytes += len(a.payload)

    def _device_ms(self, i: int, sim_ms: int) -> int:
        return sim_ms + int(self.skew_ms[i])

    def _next_seq(self, i: int) -> int:
        s = int(self.seq[i])
        self.seq[i] = s + 1
        return s

    def _encode(self, message: Any, sim_ms: int, *, retain: bool = False) -> Outgoing:
        payload = encode(message, validate=self.validate)
        return Outgoing(message_topic(message), payload, message.device_id, sim_ms, 1, retain)

    def _status(self, i: int, state: PresenceState, ts: int, sim_ms: int) -> Outgoing:
        message = Status(
            device_id=self.ids[i],
            boot=int(self.boot[i]),
            conn=int(self.conn[i]),
            ts=ts,
            state=state,
        )
        return self._encode(message, sim_ms, retain=True)

    def _birth(self, i: int, sim_ms: int) -> Outgoing:
        m = self.config.machines[i]
        f = self.fleet
        vending = m.machine_class is MachineClass.VENDING
        ts = self._device_ms(i, sim_ms)
        days = np.maximum((sim_ms - f.installed_ms[i]) / 86_400_000, 0.0)  # this machine only
        stages = tuple(
            CartridgeStage(
                slot=slot,
                kind=kind,
                capacity_l=float(f.capacity_l[i, k]),
                capacity_days=int(f.capacity_days[i, k]),
                litres_used=round(float(f.stage_l[i, k]), 1),
                days_in_service=round(float(days[k]), 2),
                installed_at=int(f.installed_ms[i, k]),
            )
            for k, (slot, kind, _l, _d) in enumerate(wear.STAGES)
        )
        config = Config(
            version=int(self.config_version[i]),
            telemetry_interval_s=int(self.report_every[i]) * self.config.interval_s,
            hot_setpoint=None if vending else float(f.hot_setpoint[i]),
            cold_setpoint=None if vending else float(f.cold_setpoint[i]),
            uv_lamp_life_h=int(f.uv_life[i]),
            door_alarm_s=int(self.door_alarm_s[i]),
            price_per_litre=int(f.price[i]) if vending else None,
            currency=_CURRENCY if vending else None,
        )
        raised = tuple(FAULT_CODES[k] for k in np.nonzero(f.device_raised[i])[0].tolist())
        birth = Birth(
            device_id=m.device_id,
            boot=int(self.boot[i]),
            conn=int(self.conn[i]),
            seq=self._next_seq(i),
            ts=ts,
            fw=m.firmware,
            model=m.model,
            machine_class=m.machine_class,
            config=config,
            stages=stages,
            metrics=self._metrics(i),
            faults=raised,
            hw=m.hardware_lot,
            serial=f"SN-{m.device_id}",
        )
        return self._encode(birth, sim_ms)

    def _metrics(self, i: int) -> Metrics:
        r = self.fleet.readings_cache
        names = VENDING_METRICS if self.fleet.vending[i] else PURIFIER_METRICS
        values: dict[str, Any] = {}
        for name in names:
            x = r[name][i]
            if name in _BOOL_METRICS:
                values[name] = bool(x)
            elif name in _INT_METRICS:
                values[name] = int(x)
            else:
                values[name] = float(x)
        return Metrics(**values)

    def _connect(self, i: int, sim_ms: int) -> list[Action]:
        """Bring the connection up: Will, status online, birth, then any buffered data."""
        self.conn[i] += 1
        ts = self._device_ms(i, sim_ms)
        will = Status(
            device_id=self.ids[i],
            boot=int(self.boot[i]),
            conn=int(self.conn[i]),
            ts=ts,
            state=PresenceState.LOST,
        )
        out: list[Action] = [
            Connect(self.ids[i], self._encode(will, sim_ms, retain=True), sim_ms),
            self._status(i, PresenceState.ONLINE, ts, sim_ms),
            self._birth(i, sim_ms),
        ]
        self.connected[i] = True
        for wire in self.buffers.pop(i, []):
            out.append(self._wire_out(i, with_hist(wire), sim_ms))
        return out

    def _drop(self, i: int, sim_ms: int) -> list[Action]:
        """The connection is lost without a goodbye: the broker publishes the Will."""
        if not self.connected[i]:
            return []
        self.connected[i] = False
        return [Disconnect(self.ids[i], send_will=True, sim_ms=sim_ms)]

    def _wire_out(self, i: int, wire: dict[str, Any], sim_ms: int) -> Outgoing:
        kind = Kind.TELEMETRY if "metrics" in wire else Kind.EVENT if "event" in wire else Kind.ACK
        return Outgoing(self._topics[kind][i], orjson.dumps(wire), self.ids[i], sim_ms)

    def _queue_event(self, i: int, body: EventBody, sim_ms: int, detail: str | None = None) -> None:
        self._events.setdefault(i, []).append((sim_ms, body, detail))

    # ------------------------------------------------------------------ timeline

    def _start(self, planned: Planned, at: int) -> None:
        inj = planned.injection
        i = planned.device
        key = (i, inj.name)
        if key in self._active:
            return
        self._active[key] = planned
        self.stats.faults_started += 1
        self.truth.start(
            TruthRecord(
                device_id=self.ids[i],
                name=inj.name,
                code=inj.code,
                kind="misbehaviour" if inj.misbehaviour is not None else "fault",
                cause=planned.cause,
                source=inj.key,
                start_ms=at,
                params=dict(inj.params),
            )
        )
        self._apply(i, inj.name, inj.code, inj.misbehaviour, inj.params, at, on=True)
        if inj.duration_ms is not None:
            self.timeline.add(at + inj.duration_ms, "end", planned)

    def _end(self, planned: Planned, at: int, *, repaired: bool) -> None:
        inj = planned.injection
        i = planned.device
        if self._active.get((i, inj.name)) is not planned:
            return  # already ended (repaired before its duration was over)
        del self._active[(i, inj.name)]
        self._apply(i, inj.name, inj.code, inj.misbehaviour, inj.params, at, on=False)
        self.truth.end(self.ids[i], inj.name, at)
        if repaired and inj.recur_after_ms is not None:
            again = Planned(inj, i, "recurrence")
            self.timeline.add(at + inj.recur_after_ms, "start", again)

    def _apply(
        self,
        i: int,
        name: str,
        code: FaultCode | None,
        misbehaviour: Misbehaviour | None,
        params: Mapping[str, Any],
        at: int,
        *,
        on: bool,
    ) -> None:
        f = self.flags.setdefault(i, _SendFlags())
        if code is FaultCode.OFFLINE:
            if on:
                self.network_down[i] = True
                self._pre.extend(self._drop(i, at))
            else:
                self.network_down[i] = False
                if self.fleet.powered[i]:
                    self._pre.extend(self._connect(i, at))
        elif code is FaultCode.FLAPPING:
            self.flap_rate[i] = float(params["reconnects_per_hour"]) if on else 0.0
        elif code is FaultCode.CLOCK_DRIFT:
            self.skew_ms[i] = int(params["skew"]) if on else 0
        elif code is FaultCode.TELEMETRY_GAP:
            f.gap = (float(params["drop"]), bool(params["recoverable"])) if on else None
        elif code is FaultCode.POWER_LOSS:
            if on:
                self.fleet.start_fault(i, code, params, at)
                self._pre.extend(self._drop(i, at))
            else:
                prev_uptime = int(self.fleet.uptime_s[i])
                self.fleet.end_fault(i, code, at)
                self.boot[i] += 1
                self.seq[i] = 0
                self.rings.pop(i, None)
                self.buffers.pop(i, None)
                if not self.network_down[i]:
                    self._pre.extend(self._connect(i, at))
                reboot = Reboot(reason=RebootReason.BROWNOUT, prev_uptime=prev_uptime)
                self._queue_event(i, reboot, at)
        elif misbehaviour is Misbehaviour.DUPLICATE:
            f.duplicate = float(params["probability"]) if on else 0.0
        elif misbehaviour is Misbehaviour.OUT_OF_ORDER:
            f.out_of_order = float(params["probability"]) if on else 0.0
        elif misbehaviour is Misbehaviour.MALFORMED:
            f.malformed = (str(params["mode"]), float(params["probability"])) if on else None
        elif misbehaviour is Misbehaviour.IMPERSONATE:
            target = str(params["target"])
            f.impersonate = (
                (target, str(params["mode"]), float(params["probability"])) if on else None
            )
        elif code is not None:
            if on:
                self.fleet.start_fault(i, code, params, at)
            else:
                before = self.fleet.installed_ms[i].copy()
                self.fleet.end_fault(i, code, at)
                self._report_replacements(i, before, at, source="panel")
            if code is FaultCode.DOOR_OPEN:
                body = DoorOpened(maintenance=False) if on else DoorClosed(maintenance=False)
                self._queue_event(i, body, at)

    def _report_replacements(self, i: int, before: npt.NDArray[Any], at: int, source: str) -> None:
        f = self.fleet
        for k in np.nonzero(f.installed_ms[i] != before)[0].tolist():
            slot, kind, _l, _d = wear.STAGES[k]
            body = CartridgeReplaced(
                slot=slot,
                kind=kind,
                capacity_l=float(f.capacity_l[i, k]),
                capacity_days=int(f.capacity_days[i, k]),
                source=source,
            )
            self._queue_event(i, body, at)
            self._close_wear(i, at)

    def _close_wear(self, i: int, at: int) -> None:
        """After a part is replaced, wear faults that no longer hold end."""
        f = self.fleet
        life = f.life_left(at)[i].min()
        rej = float(f.rejection()[i])
        used_pp = f.stage_l[i, wear.SLOT_PP] / f.capacity_l[i, wear.SLOT_PP]
        clog = float(wear.prefilter_clog(np.array([used_pp]))[0])
        still = {
            FaultCode.PREFILTER_CLOGGED.value: clog >= 1.0 / 1.2 or 1 / (1 + 0.5 * clog) < 0.7,
            FaultCode.CARTRIDGE_EXHAUSTED.value: 0.0 < life <= 0.10,
            FaultCode.CARTRIDGE_OVERDUE.value: life <= 0.0,
            FaultCode.MEMBRANE_DEGRADED.value: rej < 0.90,
            FaultCode.MEMBRANE_FAILED.value: rej < 0.80,
        }
        for name, holds in still.items():
            if not holds and (i, name) not in self._active:
                self.truth.end(self.ids[i], name, at)

    def _repair(self, repair: RepairAction, at: int) -> None:
        i = self.index.get(repair.device_id)
        if i is None:
            return
        self._queue_event(i, DoorOpened(maintenance=True), at)
        self.fleet.maintenance[i] = True
        names = repair_codes(repair, self.truth.open_names(self.ids[i]))
        for name in names:
            planned = self._active.get((i, name))
            if planned is not None:
                self._end(planned, at, repaired=True)
            else:
                self._fix_wear(i, name, at)
        if repair.slot is not None:
            before = self.fleet.installed_ms[i].copy()
            self.fleet.replace_cartridge(i, repair.slot - 1, at)
            self._report_replacements(i, before, at, source="panel")
        self.fleet.maintenance[i] = False
        self._queue_event(i, DoorClosed(maintenance=True), at)

    def _fix_wear(self, i: int, name: str, at: int) -> None:
        """A technician fixes what wore out: new cartridges, a new lamp."""
        f = self.fleet
        before = f.installed_ms[i].copy()
        if name == FaultCode.PREFILTER_CLOGGED.value:
            f.replace_cartridge(i, wear.SLOT_PP, at)
        elif name in (FaultCode.MEMBRANE_DEGRADED.value, FaultCode.MEMBRANE_FAILED.value):
            f.replace_cartridge(i, wear.SLOT_RO, at)
        elif name in (FaultCode.CARTRIDGE_EXHAUSTED.value, FaultCode.CARTRIDGE_OVERDUE.value):
            for k in np.nonzero(f.life_left(at)[i] <= 0.10)[0].tolist():
                f.replace_cartridge(i, k, at)
        elif name == FaultCode.UV_LAMP_EXPIRED.value:
            f.uv_hours[i] = 0.0
        self._report_replacements(i, before, at, source="panel")
        self.truth.end(self.ids[i], name, at)

    # ------------------------------------------------------------------ commands

    def _handle_commands(self, t0: int) -> None:
        for topic, payload in self.sink.commands():
            self.stats.commands += 1
            try:
                command = decode(topic, payload, received_at_ms=t0)
            except Rejected:
                self._reject_unreadable(topic, payload, t0)
                continue
            if not isinstance(command, Command):
                continue
            i = self.index.get(command.device_id)
            if i is not None:
                self.pending_commands.setdefault(i, []).append(command)
        for i in list(self.pending_commands):
            if not self.connected[i]:
                continue  # the broker keeps QoS 1 messages for an absent persistent session
            for command in self.pending_commands.pop(i):
                self._run_command(i, command, t0)

    def _reject_unreadable(self, topic: str, payload: bytes, t0: int) -> None:
        parts = topic.split("/")
        i = self.index.get(parts[2]) if len(parts) == 4 else None
        try:
            cmd_id = orjson.loads(payload).get("id")
        except (orjson.JSONDecodeError, AttributeError):
            return
        if i is None or not isinstance(cmd_id, str) or not self.connected[i]:
            return
        self._ack(i, cmd_id, AckStatus.REJECTED, t0, AckError.BAD_ARGS, "unreadable command")

    def _ack(
        self,
        i: int,
        cmd_id: str,
        status: AckStatus,
        sim_ms: int,
        error: AckError | None = None,
        detail: str | None = None,
    ) -> None:
        ack = CommandAck(
            device_id=self.ids[i],
            boot=int(self.boot[i]),
            seq=self._next_seq(i),
            ts=self._device_ms(i, sim_ms),
            cmd_id=cmd_id,
            status=status,
            error=error,
            detail=detail,
        )
        self._pre.append(self._encode(ack, sim_ms))

    def _run_command(self, i: int, command: Command, t0: int) -> None:
        now = self._device_ms(i, t0)
        body = command.body
        if command.expired(now):
            self._ack(i, command.id, AckStatus.EXPIRED, t0)
            return
        if isinstance(body, Rebirth):
            self._pre.append(self._birth(i, t0))
            self._ack(i, command.id, AckStatus.SUCCEEDED, t0)
        elif isinstance(body, Resend):
            self._resend(i, command.id, body, t0)
        elif isinstance(body, TimeSync):
            self.skew_ms[i] = 0
            planned = self._active.get((i, FaultCode.CLOCK_DRIFT.value)) or self._active.get(
                (i, Misbehaviour.CLOCK_SKEW.value)
            )
            if planned is not None:
                self._end(planned, t0, repaired=True)
            self._ack(i, command.id, AckStatus.SUCCEEDED, t0)
        elif isinstance(body, SetConfig):
            self._set_config(i, command.id, body, t0)
        elif isinstance(body, ResetCartridge):
            self._reset_cartridge(i, command.id, body, t0)

    def _resend(self, i: int, cmd_id: str, body: Resend, t0: int) -> None:
        ring = self.rings.get(i, deque())
        wanted = [
            w for w in ring if w["boot"] == body.boot and body.from_seq <= w["seq"] <= body.to_seq
        ]
        if not wanted:
            self._ack(i, cmd_id, AckStatus.FAILED, t0, AckError.NOT_AVAILABLE, "not in buffer")
            return
        for wire in wanted:
            self._pre.append(self._wire_out(i, with_hist(wire), t0))
        total = body.to_seq - body.from_seq + 1
        self._ack(i, cmd_id, AckStatus.SUCCEEDED, t0, detail=f"{len(wanted)} of {total} resent")

    def _set_config(self, i: int, cmd_id: str, body: SetConfig, t0: int) -> None:
        c = body.config
        if c.version <= int(self.config_version[i]):
            self._ack(i, cmd_id, AckStatus.REJECTED, t0, AckError.BAD_ARGS, "version not newer")
            return
        if c.telemetry_interval_s is not None:
            self.report_every[i] = max(1, round(c.telemetry_interval_s / self.config.interval_s))
        f = self.fleet
        if c.hot_setpoint is not None:
            f.hot_setpoint[i] = c.hot_setpoint
        if c.cold_setpoint is not None:
            f.cold_setpoint[i] = c.cold_setpoint
        if c.uv_lamp_life_h is not None:
            f.uv_life[i] = c.uv_lamp_life_h
        if c.door_alarm_s is not None:
            self.door_alarm_s[i] = c.door_alarm_s
        if c.price_per_litre is not None:
            f.price[i] = c.price_per_litre
        self.config_version[i] = c.version
        self._ack(i, cmd_id, AckStatus.SUCCEEDED, t0)

    def _reset_cartridge(self, i: int, cmd_id: str, body: ResetCartridge, t0: int) -> None:
        if not 1 <= body.slot <= len(wear.STAGES):
            self._ack(i, cmd_id, AckStatus.REJECTED, t0, AckError.BAD_ARGS, "no such slot")
            return
        k = body.slot - 1
        before = self.fleet.installed_ms[i].copy()
        self.fleet.replace_cartridge(i, k, t0, body.capacity_l, body.capacity_days)
        for name in self._slot_faults(k):
            planned = self._active.get((i, name))
            if planned is not None:
                self._end(planned, t0, repaired=True)
        self._report_replacements(i, before, t0, source="command")
        self._ack(i, cmd_id, AckStatus.SUCCEEDED, t0)

    @staticmethod
    def _slot_faults(k: int) -> list[str]:
        names = [FaultCode.CARTRIDGE_EXHAUSTED.value, FaultCode.CARTRIDGE_OVERDUE.value]
        if k == wear.SLOT_PP:
            names.append(FaultCode.PREFILTER_CLOGGED.value)
        if k == wear.SLOT_RO:
            names += [FaultCode.MEMBRANE_DEGRADED.value, FaultCode.MEMBRANE_FAILED.value]
        return names

    # ------------------------------------------------------------------ per tick

    def _flap(self, t0: int) -> None:
        flapping = np.nonzero(self.flap_rate > 0)[0]
        if flapping.size == 0:
            return
        lam = self.flap_rate[flapping] * self.interval_ms / 3_600_000
        counts = self.rng.poisson(lam)
        for i, k in zip(flapping.tolist(), counts.tolist(), strict=True):
            for r in range(k):
                if not self.connected[i] or self.network_down[i]:
                    break
                at = t0 + (r * self.interval_ms) // max(k, 1)
                self._pre.extend(self._drop(i, at))
                self._pre.extend(self._connect(i, at))

    def _device_events(self, t1: int, r: Mapping[str, npt.NDArray[Any]]) -> None:
        machines, faults, sign = self.fleet.device_fault_conditions(t1)
        for i, k, s in zip(machines.tolist(), faults.tolist(), sign.tolist(), strict=True):
            code = FAULT_CODES[k]
            metric = _FAULT_VALUE_METRIC.get(code)
            value = None if metric is None else float(r[metric][i])
            body: EventBody = (
                FaultRaised(code=code, value=value)
                if s > 0
                else FaultCleared(code=code, value=value)
            )
            at = t1 - self.interval_ms + int(self.fleet.phase_ms[i])
            self._queue_event(i, body, at)

    def _sales_events(self, outcome: Any) -> None:
        f = self.fleet
        for i, volume, method, ok in zip(
            outcome.sale_machine, outcome.sale_volume, outcome.sale_method, outcome.sale_ok,
            strict=True,
        ):  # fmt: skip
            error = (
                int(f.p_payment_error[i])
                if f.active[i, FAULT_INDEX[FaultCode.PAYMENT_FAULT]]
                else 0
            )
            if ok:
                result, amount, code = PaymentResult.OK, round(volume * int(f.price[i])), None
            elif error:
                result, amount, code = PaymentResult.ERROR, 0, error
            else:
                result, amount, code = PaymentResult.DECLINED, 0, None  # sold out
            body = Payment(
                method=PaymentMethod(method),
                amount=amount,
                currency=_CURRENCY,
                result=result,
                volume_l=volume if ok else None,
                error_code=code,
            )
            at = self.now_ms + int(f.phase_ms[i])
            self._queue_event(i, body, at)

    def _watch_wear(self, t1: int, r: Mapping[str, npt.NDArray[Any]]) -> None:
        """Ground truth of what the model wore out (or caused) without an injection."""
        f = self.fleet
        a = f.active
        used = f.stage_l / f.capacity_l
        clog = f._clog(used)
        dp_true = wear.prefilter_dp(f.dp0, clog)
        rej = f.rejection()
        life = f.life_left(t1).min(axis=1)
        low = r["tank_level"] < 10.0
        self._tank_low_since = np.where(
            low, np.where(self._tank_low_since < 0, t1, self._tank_low_since), -1
        )
        cond = np.zeros((self.n, len(_WEAR_CODES)), dtype=bool)
        cond[:, 0] = ((dp_true >= 2.0 * f.dp0) | (wear.prefilter_flow_factor(clog) < 0.7)) & ~a[
            :, FAULT_INDEX[FaultCode.PREFILTER_CLOGGED]
        ]
        membrane = (
            a[:, FAULT_INDEX[FaultCode.MEMBRANE_DEGRADED]]
            | a[:, FAULT_INDEX[FaultCode.MEMBRANE_FAILED]]
        )
        cond[:, 1] = (rej < 0.90) & (rej >= 0.80) & ~membrane
        cond[:, 2] = (rej < 0.80) & ~membrane
        cartridge = (
            a[:, FAULT_INDEX[FaultCode.CARTRIDGE_EXHAUSTED]]
            | a[:, FAULT_INDEX[FaultCode.CARTRIDGE_OVERDUE]]
        )
        cond[:, 3] = (life <= 0.10) & (life > 0.0) & ~cartridge
        cond[:, 4] = (life <= 0.0) & ~cartridge
        cond[:, 5] = (f.uv_hours >= f.uv_life) & ~a[:, FAULT_INDEX[FaultCode.UV_LAMP_EXPIRED]]
        cond[:, 6] = (
            (self._tank_low_since >= 0)
            & (t1 - self._tank_low_since >= 30 * 60_000)
            & ~a[:, FAULT_INDEX[FaultCode.TANK_EMPTY]]
        )
        changed = np.nonzero(cond != self._wear_prev)
        for i, k in zip(changed[0].tolist(), changed[1].tolist(), strict=True):
            code = _WEAR_CODES[k]
            if cond[i, k]:
                cause = "consequence" if code is FaultCode.TANK_EMPTY else "wear"
                start = int(self._tank_low_since[i]) if code is FaultCode.TANK_EMPTY else t1
                if (i, code.value) not in self._active:
                    self.truth.start(
                        TruthRecord(self.ids[i], code.value, code, "fault", cause, "model", start)
                    )
            elif (i, code.value) not in self._active:
                self.truth.end(self.ids[i], code.value, t1)
        self._wear_prev = cond

    def _data_messages(self, t0: int, r: Mapping[str, npt.NDArray[Any]]) -> list[Action]:
        """Events then telemetry of every reporting machine, in the order of their phases."""
        f = self.fleet
        reporting = f.powered & ((self.tick_no % self.report_every) == 0)
        has_events = np.zeros(self.n, dtype=bool)
        if self._events:
            has_events[list(self._events)] = True
        order = np.argsort(f.phase_ms, kind="stable")
        emit = order[(reporting | has_events)[order] & f.powered[order]]
        if emit.size == 0:
            return []
        sim_ms = (t0 + f.phase_ms[emit]).tolist()
        ts = (t0 + f.phase_ms[emit] + self.skew_ms[emit]).tolist()
        cols = {name: r[name][emit].tolist() for name in r}
        days = f.days_in_service(t0 + self.interval_ms)[emit]
        litres = np.round(f.stage_l[emit], 1).tolist()
        days_l = np.round(days, 2).tolist()
        vending = f.vending[emit].tolist()
        rep = reporting[emit].tolist()
        boots = self.boot[emit].tolist()
        seqs = self.seq[emit].tolist()
        special = [i in self.flags and self.flags[i].any() for i in emit.tolist()]
        down = (self.network_down[emit] | ~self.connected[emit]).tolist()
        # Row tuples are built in C by zip; dict(zip(...)) per message is the cheapest dict.
        v_rows = list(zip(*(cols[name] for name in VENDING_METRICS), strict=True))
        p_rows = list(zip(*(cols[name] for name in PURIFIER_METRICS), strict=True))
        tel_topics = self._topics[Kind.TELEMETRY]
        ids = self.ids
        slots = [s[0] for s in wear.STAGES]
        out: list[Action] = []
        for j, i in enumerate(emit.tolist()):
            seq = seqs[j]
            wires: list[dict[str, Any]] = []
            for at, body, detail in self._events.get(i, ()):
                event = Event(
                    device_id=ids[i],
                    boot=boots[j],
                    seq=seq,
                    ts=at + int(self.skew_ms[i]),
                    body=body,
                    detail=detail,
                )
                if self.validate:
                    encode(event)
                wires.append(to_wire(event))
                seq += 1
            if rep[j]:
                if vending[j]:
                    metrics = dict(zip(VENDING_METRICS, v_rows[j], strict=True))
                else:
                    metrics = dict(zip(PURIFIER_METRICS, p_rows[j], strict=True))
                lj, dj = litres[j], days_l[j]
                wire = {
                    "v": 1,
                    "device_id": ids[i],
                    "boot": boots[j],
                    "seq": seq,
                    "ts": ts[j],
                    "metrics": metrics,
                    "stages": [
                        {"slot": s, "litres_used": lj[k], "days_in_service": dj[k]}
                        for k, s in enumerate(slots)
                    ],
                }
                wires.append(wire)
                seq += 1
            seqs[j] = seq
            if not special[j] and not down[j] and not self.resend_depth:
                for wire in wires:
                    topic = tel_topics[i] if "metrics" in wire else self._topics[Kind.EVENT][i]
                    out.append(Outgoing(topic, orjson.dumps(wire), ids[i], sim_ms[j]))
            else:
                for wire in wires:
                    out.extend(self._send_data(i, wire, sim_ms[j], down[j]))
        self.seq[emit] = seqs
        return out

    def _send_data(self, i: int, wire: dict[str, Any], sim_ms: int, down: bool) -> list[Action]:
        """The slow path: resend buffer, outages, gaps and misbehaviours."""
        flags = self.flags.get(i)
        if flags is not None and flags.gap is not None and self.rng.random() < flags.gap[0]:
            if flags.gap[1] and self.resend_depth:
                self._remember(i, wire)
            return []  # consumed a seq, never sent: a gap ingest can see
        if self.resend_depth:
            self._remember(i, wire)
        if down:
            buffer = self.buffers.setdefault(i, [])
            if len(buffer) < _MAX_BUFFER:
                buffer.append(wire)
            return []
        message = self._wire_out(i, wire, sim_ms)
        if flags is None:
            return [message]
        return self._misbehave(i, flags, wire, message)

    def _remember(self, i: int, wire: dict[str, Any]) -> None:
        ring = self.rings.get(i)
        if ring is None:
            ring = self.rings[i] = deque(maxlen=self.resend_depth)
        ring.append(wire)

    def _misbehave(
        self, i: int, flags: _SendFlags, wire: dict[str, Any], message: Outgoing
    ) -> list[Action]:
        rng = self.rng
        out: list[Action] = []
        if flags.malformed is not None and rng.random() < flags.malformed[1]:
            message = _malformed(message, wire, flags.malformed[0])
        if flags.impersonate is not None and rng.random() < flags.impersonate[2]:
            target, mode, _p = flags.impersonate
            forged = dict(wire, device_id=target)
            topic = message.topic
            if mode == "topic":
                topic = topic.replace(f"/{self.ids[i]}/", f"/{target}/")
            message = Outgoing(topic, orjson.dumps(forged), self.ids[i], message.sim_ms)
        if flags.out_of_order and flags.held is None and rng.random() < flags.out_of_order:
            flags.held = message  # goes out after the next message
            return out
        out.append(message)
        if flags.held is not None:
            out.append(flags.held)
            flags.held = None
        if flags.duplicate and rng.random() < flags.duplicate:
            out.append(message)
        return out


def message_topic(message: Any) -> str:
    return topic_of(message.device_id, message.kind)


def _malformed(message: Outgoing, wire: dict[str, Any], mode: str) -> Outgoing:
    payload: bytes
    if mode == "not_json":
        payload = b"{not json" + message.payload[:20]
    elif mode == "truncated":
        payload = message.payload[: len(message.payload) // 2]
    elif mode == "bad_utf8":
        payload = b'{"v":1,"device_id":"\xff\xfe"}'
    elif mode == "schema":
        payload = orjson.dumps(dict(wire, boot=-1))
    elif mode == "non_finite":
        payload = message.payload.replace(b'"tds_in":', b'"tds_in":NaN,"x":', 1)
        if payload == message.payload:
            payload = message.payload[:-1] + b',"x":Infinity}'
    else:  # too_large
        payload = orjson.dumps(dict(wire, padding="x" * (17 * 1024)))
    return Outgoing(message.topic, payload, message.device_id, message.sim_ms)


def fault_classes(code: FaultCode) -> frozenset[MachineClass]:
    return FAULT_TABLE[code].classes

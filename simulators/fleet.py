"""The fleet as a physical model: one row per machine in numpy arrays, stepped together.

Nothing here loops over machines: every step is a handful of array operations over
``[machine]`` or ``[machine, stage]`` arrays, so 100 000 machines step in milliseconds. Sparse
facts (a fault's parameters, a sale's volume) are written with fancy indexing.

Per step (at most a minute of simulated time):

1. demand: litres drawn, from the class's hourly profile and the day (`demand`);
2. the tank: the pump runs from 70 % down until full, producing permeate at a rate set by the
   pre-filter's clogging, the membrane's wear and the feed temperature; dispensing stops near
   empty; a leak loses water;
3. wear: every stage counts the litres it treated (`wear`);
4. hot and cold tanks: thermostats with hysteresis, heat loss to the room, cooling by draws;
5. UV lamp hours.

`readings()` then turns the state into what the sensors report, with sensor noise, TDS creep
after idle, and the effects of injected faults. `device_fault_conditions()` is the firmware's own
detection (what it raises as ``fault_raised`` events).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
from firmware_protocol import FaultCode, MachineClass

from simulators import demand, wear
from simulators.ledger import MachineSpec

__all__ = ["FAULT_CODES", "FAULT_INDEX", "Fleet", "StepOutcome"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

FAULT_CODES: Final = tuple(FaultCode)
FAULT_INDEX: Final = {code: i for i, code in enumerate(FAULT_CODES)}
_F = FAULT_INDEX

_MAX_STEP_S: Final = 60
_AMBIENT_C: Final = 24.0
_CUP_L: Final = 0.35  # a campus draw: a cup or a small bottle
_JUGS_L: Final = np.array([5.0, 10.0, 18.9])  # vending: what customers fill
_JUG_P: Final = np.array([0.4, 0.35, 0.25])
_PAYMENT_METHODS: Final = ("qr", "card", "coin", "note")
_PAYMENT_P: Final = np.array([0.6, 0.15, 0.15, 0.1])
_LOW_TANK: Final = 0.70  # pump starts below this fill
_RESERVE: Final = 0.03  # the outlet sits above the bottom: this share cannot be drawn
_IDLE_CREEP_S: Final = 1800.0  # idle longer than this shows TDS creep at restart
_SENSOR_HIGH: Final = {  # out-of-range readings a broken sensor produces, within the schema
    "tds_in": 99_000.0, "tds_out": 99_000.0, "feed_temp": 149.0, "inlet_pressure": 4_900.0,
    "prefilter_dp": 4_900.0, "permeate_flow": 99.0, "dispense_flow": 99.0, "tank_level": 100.0,
    "pump_current": 99.0, "hot_temp": 149.0, "cold_temp": -39.0, "uv_intensity": 199.0,
    "uv_hours": 999_000.0, "rssi": 0.0,
}  # fmt: skip

#: Firmware detection: how long a condition must hold before the device raises it (s).
DEVICE_HOLD_S: Final[Mapping[FaultCode, float]] = {
    FaultCode.UV_LAMP_FAILURE: 10,
    FaultCode.UV_LAMP_EXPIRED: 0,
    FaultCode.LEAK: 0,
    FaultCode.PUMP_FAILURE: 5,
    FaultCode.NO_INLET_WATER: 30,
    FaultCode.HEATER_FAILURE: 1800,
    FaultCode.HOT_OVERTEMP: 0,
    FaultCode.COMPRESSOR_FAILURE: 3600,
    FaultCode.PAYMENT_FAULT: 0,
    FaultCode.DOOR_OPEN: 60,
    FaultCode.CARTRIDGE_EXHAUSTED: 0,
    FaultCode.CARTRIDGE_OVERDUE: 0,
    FaultCode.SENSOR_FAULT: 0,
}


class StepOutcome:
    """What happened in one step that becomes events: the sales of vending machines."""

    __slots__ = ("sale_machine", "sale_method", "sale_ok", "sale_volume")

    def __init__(self) -> None:
        self.sale_machine: list[int] = []
        self.sale_volume: list[float] = []
        self.sale_method: list[str] = []
        self.sale_ok: list[bool] = []


class Fleet:
    """State of every machine; `step` advances physics, `readings` samples the sensors."""

    def __init__(
        self, machines: Sequence[MachineSpec], *, seed: int, start_ms: int, interval_s: int
    ) -> None:
        n = len(machines)
        self.n = n
        self.machines = tuple(machines)
        self.seed = seed
        self.interval_s = interval_s
        self.now_ms = start_ms
        rng = np.random.default_rng([seed, 0xF1EE7])
        self.rng = np.random.default_rng([seed, 0x57E9])  # the step's randomness, in step order

        self.vending: BoolArray = np.array(
            [m.machine_class is MachineClass.VENDING for m in machines], dtype=bool
        )
        self.purifier: BoolArray = ~self.vending
        zones = sorted({m.timezone for m in machines})
        self._zones = [ZoneInfo(z) for z in zones]
        self.zone_idx: IntArray = np.array([zones.index(m.timezone) for m in machines])
        sites = sorted({m.site_id for m in machines})
        self.site_idx: IntArray = np.array([sites.index(m.site_id) for m in machines])
        self.n_sites = len(sites)
        lots = sorted({m.hardware_lot for m in machines})
        self.lots = lots
        self.lot_idx: IntArray = np.array([lots.index(m.hardware_lot) for m in machines])

        # Constants of each machine and its water.
        site_tds = rng.uniform(80.0, 600.0, self.n_sites)
        site_pressure = rng.uniform(220.0, 420.0, self.n_sites)
        self.site_temp_offset = rng.normal(0.0, 2.0, self.n_sites)
        self.tds0 = site_tds[self.site_idx] * rng.uniform(0.95, 1.05, n)
        self.inlet0 = site_pressure[self.site_idx] + rng.normal(0.0, 8.0, n)
        self.dp0 = rng.uniform(12.0, 22.0, n)
        self.flow0 = np.where(self.vending, rng.uniform(0.40, 0.50, n), rng.uniform(0.28, 0.40, n))
        self.rej0 = rng.uniform(0.965, 0.985, n)
        self.pump_nominal = rng.uniform(0.9, 1.3, n)
        self.tank_cap = np.where(self.vending, 150.0, 20.0)
        self.daily_l = np.where(
            self.vending, rng.uniform(60.0, 140.0, n), rng.uniform(25.0, 45.0, n)
        )
        self.dispense_rate = np.where(self.vending, 2.5, 1.5)  # L/min at the tap
        self.price = np.where(self.vending, rng.integers(30, 61, n), 0).astype(np.int64)
        self.rssi0 = rng.uniform(-95.0, -55.0, n)
        self.phase_ms: IntArray = rng.integers(0, interval_s * 1000, n).astype(np.int64)
        self.uv_life = np.full(n, float(wear.UV_LAMP_LIFE_H))
        self.hot_setpoint = np.full(n, 92.0)
        self.cold_setpoint = np.full(n, 6.0)
        self.capacity_l = np.tile(np.array([s[2] for s in wear.STAGES]), (n, 1))
        self.capacity_days = np.tile(np.array([float(s[3]) for s in wear.STAGES]), (n, 1))

        # State. A fresh run starts from a healthy, part-worn fleet: no stage past 60 % of its life
        # (the membrane 50 %), so nothing wears out in the first weeks unless a scenario says so.
        frac = rng.uniform(0.0, 0.6, (n, len(wear.STAGES)))
        frac[:, wear.SLOT_RO] *= 0.5 / 0.6
        self.stage_l = frac * self.capacity_l
        days = np.minimum(
            frac * self.capacity_l / (self.daily_l[:, None] * 0.8), frac * self.capacity_days
        )
        self.installed_ms = start_ms - (days * 86_400_000).astype(np.int64)
        install_age_days = np.array(
            [
                max(1.0, (start_ms / 86_400_000) - _epoch_day(m.install_date.toordinal()))
                for m in machines
            ]
        )
        self.volume_total = install_age_days * self.daily_l * 0.8
        self.uv_hours = rng.uniform(0.0, 0.6, n) * self.uv_life
        self.tank_l = self.tank_cap * rng.uniform(0.75, 1.0, n)
        self.pump_call = np.zeros(n, dtype=bool)
        self.producing = np.zeros(n, dtype=bool)
        self.just_started = np.zeros(n, dtype=bool)
        self.idle_s = rng.uniform(0.0, 3600.0, n)
        self.idle_before_start = np.zeros(n)
        self.hot_t = np.where(self.purifier, rng.uniform(88.0, 92.0, n), np.nan)
        self.cold_t = np.where(self.purifier, rng.uniform(5.0, 8.0, n), np.nan)
        self.heater_on = np.zeros(n, dtype=bool)
        self.compressor_on = np.zeros(n, dtype=bool)
        self.dp_hold = self.dp0 * (1.0 + 1.2 * wear.prefilter_clog(frac[:, wear.SLOT_PP]))
        self.dispensed_last = np.zeros(n)
        self.flow_now = self.flow0.copy()
        self.sales_count = np.zeros(n, dtype=np.int64)
        self.sales_amount = np.zeros(n, dtype=np.int64)
        self.uptime_s = rng.integers(600, 30 * 86_400, n).astype(np.int64)
        self.powered = np.ones(n, dtype=bool)
        self.door_open = np.zeros(n, dtype=bool)
        self.maintenance = np.zeros(n, dtype=bool)

        # Injected faults: which are active and their parameters (sparse, written on activation).
        self.active = np.zeros((n, len(FAULT_CODES)), dtype=bool)
        self.fault_since_ms = np.zeros((n, len(FAULT_CODES)), dtype=np.int64)
        self.p_ramp_ms = np.ones(n)
        self.p_clog_factor = np.ones(n)
        self.p_rejection = np.ones(n)
        self.p_uv_intensity = np.zeros(n)
        self.p_leak = np.zeros(n)
        self.p_pump_stalled = np.zeros(n, dtype=bool)
        self.p_inlet = np.zeros(n)
        self.p_payment_error = np.zeros(n, dtype=np.int64)
        self.sensor_metric: dict[int, tuple[str, str, float | None]] = {}

        # Firmware detection state.
        self.cond_since_ms = np.zeros((n, len(FAULT_CODES)), dtype=np.int64)
        self.cond_prev = np.zeros((n, len(FAULT_CODES)), dtype=bool)
        self.device_raised = np.zeros((n, len(FAULT_CODES)), dtype=bool)

        self._weather_day = -1
        self._air_temp = np.zeros(self.n_sites)
        self._vending_factor = np.ones(self.n_sites)
        self.readings_cache: dict[str, npt.NDArray[Any]] = {}

    # ------------------------------------------------------------------ time

    def _local(self, now_ms: int) -> tuple[IntArray, IntArray, FloatArray, int]:
        """Per machine: local hour, minute, campus day factor; and the day of year (UTC)."""
        moment = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
        hours = np.empty(len(self._zones), dtype=np.int64)
        minutes = np.empty(len(self._zones), dtype=np.int64)
        day_factor = np.empty(len(self._zones))
        for k, zone in enumerate(self._zones):
            local = moment.astimezone(zone)
            hours[k], minutes[k] = local.hour, local.minute
            day_factor[k] = demand.campus_day_factor(local.date())
        doy = moment.timetuple().tm_yday
        day_number = now_ms // 86_400_000
        if day_number != self._weather_day:
            self._weather_day = int(day_number)
            self._air_temp, self._vending_factor = demand.weather(
                self.seed, int(day_number), self.n_sites, doy
            )
        return hours[self.zone_idx], minutes[self.zone_idx], day_factor[self.zone_idx], doy

    # ------------------------------------------------------------------ physics

    def step(self, to_ms: int) -> StepOutcome:
        """Advance the physics from `now_ms` to ``to_ms``, in steps of at most a minute."""
        outcome = StepOutcome()
        while self.now_ms < to_ms:
            dt_ms = min(_MAX_STEP_S * 1000, to_ms - self.now_ms)
            self._substep(dt_ms / 1000.0, outcome)
            self.now_ms += dt_ms
        return outcome

    def _substep(self, dt: float, outcome: StepOutcome) -> None:
        n, rng, a = self.n, self.rng, self.active
        hour, minute, day_factor, _doy = self._local(self.now_ms)
        powered = self.powered

        # 1. demand (litres per hour)
        minute_factor = np.where((hour >= 8) & (hour < 17), np.where(minute >= 50, 3.0, 0.6), 1.0)
        campus_rate = self.daily_l * demand.CAMPUS_HOURLY[hour] * minute_factor * day_factor
        vending_rate = (
            self.daily_l * demand.VENDING_HOURLY[hour] * self._vending_factor[self.site_idx]
        )
        rate = np.where(self.vending, vending_rate, campus_rate)
        lockout = (
            ~powered
            | a[:, _F[FaultCode.UV_LAMP_FAILURE]]
            | (self.vending & a[:, _F[FaultCode.LEAK]])
        )
        expected_l = np.where(lockout, 0.0, rate * dt / 3600.0)
        unit = np.where(self.vending, float(_JUGS_L @ _JUG_P), _CUP_L)
        draws = rng.poisson(expected_l / unit)
        pay_fault = self.vending & a[:, _F[FaultCode.PAYMENT_FAULT]]
        campus_l = draws * _CUP_L * rng.uniform(0.8, 1.2, n)
        sale_machine, sale_volume = self._draw_sales(draws)
        vending_l = np.zeros(n)
        np.add.at(vending_l, sale_machine, sale_volume)
        wanted = np.where(self.vending, np.where(pay_fault, 0.0, vending_l), campus_l)
        surge = np.where(
            a[:, _F[FaultCode.TANK_EMPTY]] & powered, 1.5 * self.flow0 * dt / 60.0, 0.0
        )
        available = np.maximum(self.tank_l - _RESERVE * self.tank_cap, 0.0)
        dispensed = np.minimum(wanted + surge, available)
        served = np.where(wanted + surge > 0, dispensed / np.maximum(wanted + surge, 1e-9), 0.0)
        self._record_sales(sale_machine, sale_volume, served, pay_fault, outcome)

        # 2. production
        fill = self.tank_l / self.tank_cap
        self.pump_call = (self.pump_call | (fill < _LOW_TANK)) & (fill < 0.999)
        self.pump_call |= a[:, _F[FaultCode.VALVE_STUCK_OPEN]]
        no_inlet = a[:, _F[FaultCode.NO_INLET_WATER]]
        self.pump_call &= powered & ~no_inlet  # low-pressure cut-out
        pump_works = ~a[:, _F[FaultCode.PUMP_FAILURE]]
        producing = self.pump_call & pump_works
        used = self.stage_l / self.capacity_l
        clog = self._clog(used)
        feed_temp = self._feed_temp()
        # Permeate flux rises with temperature; damped so the seasons alone never read as clogging.
        temp_factor = np.clip(1.0 + 0.015 * (feed_temp - 25.0), 0.7, 1.2)
        flow = (
            self.flow0
            * wear.prefilter_flow_factor(clog)
            * wear.membrane_flux_factor(used[:, wear.SLOT_RO])
            * temp_factor
        )
        produced = np.where(producing, flow * dt / 60.0, 0.0)
        leak_l = np.where(a[:, _F[FaultCode.LEAK]], self.p_leak * dt / 60.0, 0.0)
        self.tank_l = np.clip(self.tank_l + produced - dispensed - leak_l, 0.0, self.tank_cap)
        self.just_started = producing & ~self.producing
        self.idle_before_start = np.where(self.just_started, self.idle_s, self.idle_before_start)
        self.idle_s = np.where(producing, 0.0, self.idle_s + dt)
        self.producing = producing
        self.flow_now = flow

        # 3. wear, counters
        self.stage_l += produced[:, None]
        self.volume_total += dispensed
        self.dispensed_last = dispensed

        # 4. hot and cold tanks (purifiers only; NaN elsewhere)
        minutes = dt / 60.0
        hot_draw = 0.3 * dispensed
        mix_hot = np.minimum(hot_draw / 3.0, 1.0)
        self.heater_on = (self.heater_on | (self.hot_t < self.hot_setpoint - 4.0)) & (
            self.hot_t < self.hot_setpoint
        )
        overtemp = a[:, _F[FaultCode.HOT_OVERTEMP]]
        heater_dead = a[:, _F[FaultCode.HEATER_FAILURE]]
        self.heater_on = (self.heater_on | overtemp | heater_dead) & powered & self.purifier
        heating = np.where(self.heater_on & ~heater_dead, 2.0 * minutes, 0.0)
        hot = self.hot_t + heating - 0.004 * (self.hot_t - _AMBIENT_C) * minutes
        hot = hot + (feed_temp - hot) * mix_hot
        self.hot_t = np.where(
            overtemp, np.minimum(hot, 103.0), np.minimum(hot, self.hot_setpoint + 1.0)
        )
        cold_draw = 0.3 * dispensed
        mix_cold = np.minimum(cold_draw / 4.0, 1.0)
        self.compressor_on = (self.compressor_on | (self.cold_t > self.cold_setpoint + 3.0)) & (
            self.cold_t > self.cold_setpoint
        )
        compressor_dead = a[:, _F[FaultCode.COMPRESSOR_FAILURE]]
        self.compressor_on = (self.compressor_on | compressor_dead) & powered & self.purifier
        cooling = np.where(self.compressor_on & ~compressor_dead, 0.6 * minutes, 0.0)
        cold = self.cold_t - cooling + 0.01 * (_AMBIENT_C - self.cold_t) * minutes
        self.cold_t = np.maximum(cold + (feed_temp - cold) * mix_cold, 1.0)

        # 5. lamp and clocks
        self.uv_hours += np.where(powered, dt / 3600.0, 0.0)
        self.uptime_s += np.where(powered, int(dt), 0)

    def _clog(self, used: FloatArray) -> FloatArray:
        clog = wear.prefilter_clog(used[:, wear.SLOT_PP])
        clogging = self.active[:, _F[FaultCode.PREFILTER_CLOGGED]]
        if clogging.any():
            since = self.fault_since_ms[:, _F[FaultCode.PREFILTER_CLOGGED]]
            ramp = np.clip((self.now_ms - since) / self.p_ramp_ms, 0.0, 1.0)
            extra = ramp * (self.p_clog_factor - 1.0) / 1.2
            clog = np.where(clogging, clog + extra, clog)
        return clog

    def _feed_temp(self) -> FloatArray:
        day_of_year = datetime.fromtimestamp(self.now_ms / 1000, tz=UTC).timetuple().tm_yday
        season = 17.0 + 8.0 * math.sin(2 * math.pi * (day_of_year - 110) / 365.0)
        return season + self.site_temp_offset[self.site_idx]

    def _draw_sales(self, draws: IntArray) -> tuple[IntArray, FloatArray]:
        """One entry per vending sale: the machine and the volume the customer asked for."""
        sellers = np.nonzero(self.vending & (draws > 0))[0]
        counts = draws[sellers]
        machines = np.repeat(sellers, counts).astype(np.int64)
        volumes = self.rng.choice(_JUGS_L, size=machines.size, p=_JUG_P)
        return machines, volumes

    def _record_sales(
        self,
        machines: IntArray,
        volumes: FloatArray,
        served: FloatArray,
        pay_fault: BoolArray,
        outcome: StepOutcome,
    ) -> None:
        total = machines.size
        if total == 0:
            return
        methods = self.rng.choice(len(_PAYMENT_METHODS), size=total, p=_PAYMENT_P)
        ok = ~pay_fault[machines] & (self.rng.random(total) < served[machines])
        amounts = np.round(volumes * self.price[machines]).astype(np.int64)
        np.add.at(self.sales_count, machines[ok], 1)
        np.add.at(self.sales_amount, machines[ok], amounts[ok])
        outcome.sale_machine.extend(machines.tolist())
        outcome.sale_volume.extend(volumes.tolist())
        outcome.sale_method.extend(_PAYMENT_METHODS[m] for m in methods.tolist())
        outcome.sale_ok.extend(ok.tolist())

    # ------------------------------------------------------------------ sensors

    def rejection(self) -> FloatArray:
        used_ro = self.stage_l[:, wear.SLOT_RO] / self.capacity_l[:, wear.SLOT_RO]
        rej = wear.rejection(self.rej0, used_ro)
        membrane = (
            self.active[:, _F[FaultCode.MEMBRANE_DEGRADED]]
            | self.active[:, _F[FaultCode.MEMBRANE_FAILED]]
        )
        return np.where(membrane, np.minimum(rej, self.p_rejection), rej)

    def life_left(self, now_ms: int) -> FloatArray:
        """[machine, stage]: the smaller of litres and days left, as a share of the rating."""
        days = (now_ms - self.installed_ms) / 86_400_000
        left: FloatArray = np.minimum(
            1.0 - self.stage_l / self.capacity_l, 1.0 - days / self.capacity_days
        )
        return left

    def days_in_service(self, now_ms: int) -> FloatArray:
        out: FloatArray = np.maximum((now_ms - self.installed_ms) / 86_400_000, 0.0)
        return out

    def readings(self) -> dict[str, npt.NDArray[Any]]:
        """Every metric of every machine now, as the sensors report it (noise included).

        Purifier-only and vending-only metrics are NaN (floats) or masked by the caller.
        """
        n, rng, a = self.n, self.rng, self.active
        noise = rng.standard_normal((n, 8))
        tds_in = self.tds0 * (1.0 + 0.01 * noise[:, 0])
        fresh = tds_in * (1.0 - self.rejection())
        creep_s = np.where(self.just_started, self.idle_before_start, self.idle_s)
        creeping = (~self.producing | self.just_started) & (creep_s > _IDLE_CREEP_S)
        creep = 1.0 + 0.6 * np.minimum(creep_s / 21_600.0, 1.0)
        tds_out = np.where(creeping, fresh * creep, fresh) * (1.0 + 0.02 * noise[:, 1])
        used = self.stage_l / self.capacity_l
        clog = self._clog(used)
        dp_now = wear.prefilter_dp(self.dp0, clog) + 0.5 * noise[:, 2]
        self.dp_hold = np.where(self.producing, dp_now, self.dp_hold)  # measured only with flow
        no_inlet = a[:, _F[FaultCode.NO_INLET_WATER]]
        inlet = np.where(
            no_inlet,
            self.p_inlet + 3.0 * np.abs(noise[:, 3]),
            self.inlet0 - np.where(self.producing, 15.0, 0.0) + 4.0 * noise[:, 3],
        )
        permeate = np.where(self.producing, self.flow_now * (1.0 + 0.01 * noise[:, 4]), 0.0)
        duty = self.dispensed_last / (self.dispense_rate * _MAX_STEP_S / 60.0)
        u = rng.random(n)
        dispense = np.where(u < duty, self.dispense_rate * (0.9 + 0.2 * u), 0.0)
        pump_on = self.pump_call
        pump_failed = a[:, _F[FaultCode.PUMP_FAILURE]]
        current = np.where(
            pump_on, self.pump_nominal * (1.0 + 0.12 * clog + 0.02 * noise[:, 5]), 0.0
        )
        current = np.where(
            pump_on & pump_failed,
            np.where(self.p_pump_stalled, 1.8 * self.pump_nominal, 0.02),
            current,
        )
        uv = wear.uv_output(self.uv_hours, self.uv_life) + 0.5 * noise[:, 6]
        uv = np.where(
            a[:, _F[FaultCode.UV_LAMP_FAILURE]], self.p_uv_intensity + np.abs(noise[:, 6]), uv
        )
        rssi = np.clip(np.round(self.rssi0 + 2.0 * noise[:, 7]), -110, -40).astype(np.int64)
        payment_error = np.where(a[:, _F[FaultCode.PAYMENT_FAULT]], self.p_payment_error, 0)
        r: dict[str, npt.NDArray[Any]] = {
            "tds_in": np.round(tds_in, 1),
            "tds_out": np.round(np.maximum(tds_out, 0.1), 1),
            "feed_temp": np.round(self._feed_temp() + 0.2 * noise[:, 7], 1),
            "inlet_pressure": np.round(np.maximum(inlet, 0.0), 1),
            "prefilter_dp": np.round(self.dp_hold, 1),
            "permeate_flow": np.round(permeate, 3),
            "dispense_flow": np.round(dispense, 2),
            "volume_total": np.round(self.volume_total, 2),
            "tank_level": np.round(np.clip(100.0 * self.tank_l / self.tank_cap, 0.0, 100.0), 1),
            "pump_current": np.round(np.maximum(current, 0.0), 3),
            "hot_temp": np.round(self.hot_t + 0.2 * noise[:, 0], 1),
            "cold_temp": np.round(self.cold_t + 0.2 * noise[:, 1], 1),
            "uv_intensity": np.round(np.clip(uv, 0.0, 199.0), 1),
            "uv_hours": np.round(self.uv_hours, 2),
            "leak": a[:, _F[FaultCode.LEAK]].copy(),
            "door_open": self.door_open | a[:, _F[FaultCode.DOOR_OPEN]],
            "mains_ok": self.powered.copy(),
            "heater_on": self.heater_on.copy(),
            "compressor_on": self.compressor_on.copy(),
            "pump_on": pump_on.copy(),
            "uv_on": self.powered.copy(),
            "payment_ok": payment_error == 0,
            "payment_error": payment_error.astype(np.int64),
            "sales_count": self.sales_count.copy(),
            "sales_amount": self.sales_amount.copy(),
            "rssi": rssi,
            "uptime": self.uptime_s.copy(),
        }
        self._apply_sensor_faults(r)
        self.readings_cache = r
        return r

    def _apply_sensor_faults(self, r: dict[str, npt.NDArray[Any]]) -> None:
        for i, (metric, mode, stuck) in self.sensor_metric.items():
            if mode == "stuck":
                if stuck is None:
                    stuck = float(r[metric][i])
                    self.sensor_metric[i] = (metric, mode, stuck)
                r[metric][i] = stuck
            elif mode == "out_of_range":
                r[metric][i] = _SENSOR_HIGH.get(metric, 0.0)
            else:  # inverted: the TDS probes swapped, out reads above in
                r["tds_out"][i] = round(float(r["tds_in"][i]) * 1.05, 1)

    # ------------------------------------------------------------------ firmware detection

    def device_fault_conditions(self, now_ms: int) -> tuple[IntArray, IntArray, IntArray]:
        """Faults the firmware raises or clears now: (machine, fault index, +1 raise / -1 clear).

        Uses the last `readings()`. A condition must hold for `DEVICE_HOLD_S` before it is raised.
        """
        r = self.readings_cache
        n = self.n
        cond = np.zeros((n, len(FAULT_CODES)), dtype=bool)
        life = self.life_left(now_ms).min(axis=1)
        cond[:, _F[FaultCode.UV_LAMP_FAILURE]] = r["uv_on"] & (r["uv_intensity"] < 50.0)
        cond[:, _F[FaultCode.UV_LAMP_EXPIRED]] = self.uv_hours >= self.uv_life
        cond[:, _F[FaultCode.LEAK]] = r["leak"]
        nominal = self.pump_nominal
        cond[:, _F[FaultCode.PUMP_FAILURE]] = r["pump_on"] & (
            (r["pump_current"] < 0.1) | (r["pump_current"] > 1.5 * nominal)
        )
        cond[:, _F[FaultCode.NO_INLET_WATER]] = r["inlet_pressure"] < 100.0
        cond[:, _F[FaultCode.HEATER_FAILURE]] = (
            self.purifier & r["heater_on"] & (r["hot_temp"] < self.hot_setpoint - 15.0)
        )
        cond[:, _F[FaultCode.HOT_OVERTEMP]] = self.purifier & (r["hot_temp"] > 100.0)
        cond[:, _F[FaultCode.COMPRESSOR_FAILURE]] = (
            self.purifier & r["compressor_on"] & (r["cold_temp"] > 12.0)
        )
        cond[:, _F[FaultCode.PAYMENT_FAULT]] = self.vending & (r["payment_error"] != 0)
        cond[:, _F[FaultCode.DOOR_OPEN]] = r["door_open"] & ~self.maintenance
        cond[:, _F[FaultCode.CARTRIDGE_EXHAUSTED]] = (life <= 0.10) & (life > 0.0)
        cond[:, _F[FaultCode.CARTRIDGE_OVERDUE]] = life <= 0.0
        cond[:, _F[FaultCode.SENSOR_FAULT]] = r["tds_out"] > r["tds_in"]
        for i, (_metric, mode, _stuck) in self.sensor_metric.items():
            if mode == "out_of_range":
                cond[i, _F[FaultCode.SENSOR_FAULT]] = True
        cond &= self.powered[:, None]
        started = cond & ~self.cond_prev
        self.cond_since_ms = np.where(started, now_ms, self.cond_since_ms)
        self.cond_prev = cond
        hold_ms = np.zeros(len(FAULT_CODES))
        for code, hold in DEVICE_HOLD_S.items():
            hold_ms[_F[code]] = hold * 1000.0
        due = cond & ((now_ms - self.cond_since_ms) >= hold_ms[None, :])
        raise_now = due & ~self.device_raised
        clear_now = ~cond & self.device_raised & self.powered[:, None]
        self.device_raised = (self.device_raised | raise_now) & ~clear_now
        ri, rf = np.nonzero(raise_now)
        ci, cf = np.nonzero(clear_now)
        machines = np.concatenate([ri, ci])
        faults = np.concatenate([rf, cf])
        sign = np.concatenate([np.ones(ri.size, np.int64), -np.ones(ci.size, np.int64)])
        order = np.lexsort((faults, machines))
        return machines[order], faults[order], sign[order]

    # ------------------------------------------------------------------ interventions

    def start_fault(self, i: int, code: FaultCode, params: Mapping[str, Any], now_ms: int) -> None:
        k = _F[code]
        self.active[i, k] = True
        self.fault_since_ms[i, k] = now_ms
        if code is FaultCode.PREFILTER_CLOGGED:
            self.p_ramp_ms[i] = max(float(params["ramp"]), 1.0)
            self.p_clog_factor[i] = float(params["factor"])
        elif code in (FaultCode.MEMBRANE_DEGRADED, FaultCode.MEMBRANE_FAILED):
            self.p_rejection[i] = float(params["rejection"])
        elif code is FaultCode.CARTRIDGE_EXHAUSTED:
            self._wear_to(i, int(params["slot"]) - 1, 0.93, now_ms)
        elif code is FaultCode.CARTRIDGE_OVERDUE:
            self._wear_to(i, int(params["slot"]) - 1, 1.02, now_ms)
        elif code is FaultCode.UV_LAMP_FAILURE:
            self.p_uv_intensity[i] = float(params["intensity"])
        elif code is FaultCode.UV_LAMP_EXPIRED:
            self.uv_hours[i] = self.uv_life[i] + 1.0
        elif code is FaultCode.LEAK:
            self.p_leak[i] = float(params["loss_l_per_min"])
        elif code is FaultCode.PUMP_FAILURE:
            self.p_pump_stalled[i] = params["mode"] == "stalled"
        elif code is FaultCode.NO_INLET_WATER:
            self.p_inlet[i] = float(params["pressure"])
        elif code is FaultCode.PAYMENT_FAULT:
            self.p_payment_error[i] = int(params["error_code"])
        elif code is FaultCode.SENSOR_FAULT:
            self.sensor_metric[i] = (str(params["metric"]), str(params["mode"]), None)
        elif code is FaultCode.POWER_LOSS:
            self.powered[i] = False

    def end_fault(self, i: int, code: FaultCode, now_ms: int) -> None:
        """The fault's cause is gone (repaired, or its duration over)."""
        k = _F[code]
        self.active[i, k] = False
        if code is FaultCode.SENSOR_FAULT:
            self.sensor_metric.pop(i, None)
        elif code is FaultCode.POWER_LOSS:
            self.powered[i] = True
            self.uptime_s[i] = 0
        elif code in (FaultCode.CARTRIDGE_EXHAUSTED, FaultCode.CARTRIDGE_OVERDUE):
            for slot in np.nonzero(self.life_left(now_ms)[i] <= 0.10)[0].tolist():
                self.replace_cartridge(i, slot, now_ms)
        elif code is FaultCode.UV_LAMP_EXPIRED:
            self.uv_hours[i] = 0.0
        elif code is FaultCode.PREFILTER_CLOGGED:
            self.replace_cartridge(i, wear.SLOT_PP, now_ms)

    def replace_cartridge(
        self, i: int, slot: int, now_ms: int, capacity_l: float | None = None,
        capacity_days: int | None = None,
    ) -> None:  # fmt: skip
        self.stage_l[i, slot] = 0.0
        self.installed_ms[i, slot] = now_ms
        if capacity_l is not None:
            self.capacity_l[i, slot] = capacity_l
        if capacity_days is not None:
            self.capacity_days[i, slot] = float(capacity_days)
        if slot == wear.SLOT_PP:
            self.dp_hold[i] = self.dp0[i]

    def _wear_to(self, i: int, slot: int, share: float, now_ms: int) -> None:
        self.stage_l[i, slot] = share * self.capacity_l[i, slot]
        days = min(
            share * self.capacity_l[i, slot] / self.daily_l[i], 0.5 * self.capacity_days[i, slot]
        )
        self.installed_ms[i, slot] = now_ms - int(days * 86_400_000)


def _epoch_day(ordinal: int) -> float:
    # date.toordinal() of 1970-01-01 is 719163
    return float(ordinal - 719_163)

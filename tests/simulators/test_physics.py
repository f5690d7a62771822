"""The fleet's physics: demand by class and hour, wear, TDS creep, thermostats."""

from __future__ import annotations

import numpy as np
from firmware_protocol import FaultCode

from simulators import wear
from simulators.fleet import FAULT_INDEX, Fleet
from tests.simulators.helpers import HOUR_MS, START_MS, fleet


def _fleet(n: int = 200, seed: int = 1) -> Fleet:
    return Fleet(fleet(n, seed=seed), seed=seed, start_ms=START_MS, interval_s=60)


def test_campus_demand_is_zero_at_night_and_peaks_at_breaks() -> None:
    f = _fleet()
    night = np.zeros(f.n)
    for minute in range(1, 5 * 60):  # 00:00 to 05:00 local
        f.step(START_MS + minute * 60_000)
        night += f.dispensed_last
    assert night[f.purifier].sum() == 0.0
    breaks = lessons = 0.0
    for minute in range(5 * 60, 17 * 60):
        f.step(START_MS + minute * 60_000)
        local_minute = minute % 60
        if 9 <= minute // 60 < 16:
            if local_minute >= 50:
                breaks += f.dispensed_last[f.purifier].sum()
            else:
                lessons += f.dispensed_last[f.purifier].sum()
    # ten break minutes an hour draw far more than fifty lesson minutes' worth per minute
    assert breaks / 10 > 3 * (lessons / 50)


def test_vending_sells_by_day_and_counts_sales() -> None:
    f = _fleet()
    f.step(START_MS + 16 * HOUR_MS)  # to 16:00 local
    vending = f.vending
    assert f.sales_count[vending].sum() > 0
    assert f.sales_count[~vending].sum() == 0
    assert (f.sales_amount[vending] >= f.sales_count[vending] * 5 * 30).all()


def test_prefilter_wear_raises_dp_and_lowers_flow() -> None:
    used = np.array([0.0, 0.5, 1.0, 1.3])
    clog = wear.prefilter_clog(used)
    dp = wear.prefilter_dp(np.full(4, 15.0), clog)
    flow = wear.prefilter_flow_factor(clog)
    assert np.all(np.diff(dp) > 0)
    assert np.all(np.diff(flow) < 0)
    assert dp[2] >= 2 * 15.0 * 0.99  # about twice the new value at the end of life
    assert flow[3] < 0.7


def test_membrane_wear_raises_tds_out() -> None:
    f = _fleet(50)
    f.step(START_MS + 60_000)
    before = f.readings()["tds_out"] / f.readings()["tds_in"]
    f.stage_l[:, wear.SLOT_RO] = f.capacity_l[:, wear.SLOT_RO] * 1.1
    f.step(START_MS + 120_000)
    r = f.readings()
    after = r["tds_out"] / r["tds_in"]
    assert np.median(after) > 1.5 * np.median(before)
    assert (1 - after).min() < 0.92


def test_tds_creeps_after_idle() -> None:
    f = _fleet(50)
    f.step(START_MS + 60_000)
    f.idle_s[:] = 6 * 3600.0
    f.producing[:] = False
    idle = f.readings()["tds_out"]
    f.producing[:] = True
    f.just_started[:] = False
    fresh = f.readings()["tds_out"]
    assert np.median(idle / fresh) > 1.3


def test_heater_failure_cools_the_hot_tank_with_the_heater_on() -> None:
    f = _fleet(50)
    i = int(np.nonzero(f.purifier)[0][0])
    f.start_fault(i, FaultCode.HEATER_FAILURE, {}, START_MS)
    f.step(START_MS + 2 * HOUR_MS)
    r = f.readings()
    assert r["heater_on"][i]
    assert r["hot_temp"][i] < 92 - 15
    healthy = f.purifier.copy()
    healthy[i] = False
    assert r["hot_temp"][healthy].min() > 80


def test_lamp_hours_and_uptime_advance_only_with_power() -> None:
    f = _fleet(10)
    f.powered[0] = False
    hours, uptime = f.uv_hours.copy(), f.uptime_s.copy()
    f.step(START_MS + HOUR_MS)
    assert f.uv_hours[0] == hours[0]
    assert f.uptime_s[0] == uptime[0]
    assert np.allclose(f.uv_hours[1:] - hours[1:], 1.0)
    assert not f.active[:, FAULT_INDEX[FaultCode.LEAK]].any()

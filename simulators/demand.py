"""How much water people draw, by machine class, local hour, day and weather.

Campus purifiers follow the timetable: peaks at class breaks (the last ten minutes of each hour
between 8:00 and 17:00) and at meals, nothing at night, little at weekends and in holidays.
Vending machines stand outdoors: daytime demand, higher on hot days, lower when it rains.
Rates are litres per hour per machine; the fleet draws Poisson arrivals from them.
"""

from __future__ import annotations

from datetime import date
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "CAMPUS_HOURLY",
    "VENDING_HOURLY",
    "campus_day_factor",
    "campus_minute_factor",
    "weather",
]

FloatArray = npt.NDArray[np.float64]


def _normalised(weights: list[float]) -> FloatArray:
    w = np.asarray(weights, dtype=np.float64)
    share: FloatArray = w / w.sum()  # share of a day's litres drawn in each local hour
    return share


# Index = local hour. Zero from midnight to 6: dormitories and teaching buildings are closed.
CAMPUS_HOURLY: Final = _normalised(
    [
        0,
        0,
        0,
        0,
        0,
        0,
        0.2,
        1.2,
        0.8,
        1.0,
        1.5,
        1.8,
        2.0,
        0.8,
        1.0,
        1.4,
        1.2,
        1.6,
        1.0,
        0.7,
        0.6,
        0.4,
        0.1,
        0.02,
    ]
)
# Outdoor vending: a little trade at night, most in the afternoon and early evening.
VENDING_HOURLY: Final = _normalised(
    [
        0.01,
        0.01,
        0.01,
        0.01,
        0.01,
        0.05,
        0.3,
        0.8,
        1.0,
        1.1,
        1.2,
        1.3,
        1.2,
        1.1,
        1.1,
        1.2,
        1.4,
        1.6,
        1.6,
        1.3,
        0.9,
        0.5,
        0.2,
        0.05,
    ]
)

# Holidays of a typical school year (month, first day, last day inclusive).
_CAMPUS_HOLIDAYS: Final = (
    (1, 20, 31),
    (2, 1, 20),  # winter break
    (5, 1, 5),  # Labour Day
    (7, 10, 31),
    (8, 1, 31),  # summer break
    (10, 1, 7),  # National Day
)
_WEEKEND_FACTOR: Final = 0.3  # boarders still drink at weekends
_HOLIDAY_FACTOR: Final = 0.05


def campus_day_factor(day: date) -> float:
    """Demand of a campus day relative to a school day."""
    for month, first, last in _CAMPUS_HOLIDAYS:
        if day.month == month and first <= day.day <= last:
            return _HOLIDAY_FACTOR
    return _WEEKEND_FACTOR if day.weekday() >= 5 else 1.0


def campus_minute_factor(hour: int, minute: int) -> float:
    """Breaks: the last ten minutes of a teaching hour draw three times the average.

    The weights average to 1 over the hour (10/60 * 3 + 50/60 * 0.6), so the hourly totals hold.
    """
    if 8 <= hour < 17:
        return 3.0 if minute >= 50 else 0.6
    return 1.0


def weather(
    seed: int, day_number: int, sites: int, day_of_year: int
) -> tuple[FloatArray, FloatArray]:
    """Per-site air temperature (degC) and vending demand factor for one day.

    Seeded by (seed, day), so a day's weather is the same whatever the run's start.
    """
    rng = np.random.default_rng([seed, 0x3EA7, day_number])
    season = 16.0 + 11.0 * np.sin(2 * np.pi * (day_of_year - 110) / 365.0)
    temp = season + rng.normal(0.0, 3.0, sites)
    rain = rng.random(sites) < 0.25
    factor = np.clip(1.0 + 0.04 * (temp - 20.0), 0.3, 2.0) * np.where(rain, 0.5, 1.0)
    return temp, factor

"""Reading times and durations written by people: ``90s``, ``4h``, ``1d12h``, ``+6h``, ISO 8601.

Scenario and repairs files, and the CLI, say "when" either as an absolute time or as an offset
from the simulation's start; `When` keeps that distinction until the start is known.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

__all__ = ["When", "format_ms", "parse_duration_ms", "parse_when", "to_epoch_ms"]

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration_ms(value: object) -> int:
    """A duration in ms from ``"90s"``, ``"1h30m"``, ``"2d"`` or a number of seconds.

    Raises ValueError with a short reason.
    """
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int | float):
        if value < 0 or value != value:  # NaN check without math
            raise ValueError("not a duration (must be >= 0)")
        return round(float(value) * 1000)
    if not isinstance(value, str):
        raise ValueError("not a duration")
    text = value.strip().replace(" ", "")
    if not text:
        raise ValueError("not a duration (empty)")
    pos = 0
    total = 0.0
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None:
            raise ValueError(f"not a duration ({value!r}; use e.g. 90s, 10m, 4h, 2d)")
        total += float(match.group(1)) * _UNIT_MS[match.group(2)]
        pos = match.end()
    return round(total)


@dataclass(frozen=True, slots=True)
class When:
    """A point in simulated time: absolute (``epoch_ms``) or an offset from the start."""

    epoch_ms: int | None = None
    offset_ms: int | None = None

    def resolve(self, start_ms: int) -> int:
        if self.epoch_ms is not None:
            return self.epoch_ms
        return start_ms + (self.offset_ms or 0)


def to_epoch_ms(moment: datetime, zone: ZoneInfo) -> int:
    """Naive datetimes are read in ``zone`` (the company time zone)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return round(moment.timestamp() * 1000)


def parse_when(value: object, zone: ZoneInfo) -> When:
    """``+6h`` or ``6h`` (after the start), a number of seconds after the start, or a time."""
    if isinstance(value, datetime):
        return When(epoch_ms=to_epoch_ms(value, zone))
    if isinstance(value, date):
        return When(epoch_ms=to_epoch_ms(datetime.combine(value, time()), zone))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return When(offset_ms=parse_duration_ms(value))
    if not isinstance(value, str):
        raise ValueError("not a time")
    text = value.strip()
    try:
        return When(offset_ms=parse_duration_ms(text.removeprefix("+")))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"not a time ({value!r}; use an ISO 8601 time or an offset such as +6h)"
        ) from None
    return When(epoch_ms=to_epoch_ms(moment, zone))


def format_ms(epoch_ms: int) -> str:
    """ISO 8601 in UTC with milliseconds, the form ground truth and logs use."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

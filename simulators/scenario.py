"""Scenario files: which faults and misbehaviours to inject, on which machines, and when.

A scenario is YAML, TOML or JSON. It is parsed once into frozen, typed objects; any problem stops
the load with a `ScenarioError` naming the key path (``faults[2].at: not a time``). Example::

    seed: 7
    duration: 2d
    telemetry_interval: 60s
    fleet: {machines: 200, vending_share: 0.4}
    faults:
      - fault: membrane_failed
        devices: [SIM-000003]
        at: +6h                      # or an ISO 8601 time
        duration: 4h                 # omitted: until repaired
        recur_after: 1d              # comes back this long after each repair
      - fault: pump_failure
        share: 0.01                  # or count: N; filters: class, lot, site
        at: +1d
        params: {mode: stalled}
    batch_defects:
      - {lot: LOT-2024-07, fault: pump_failure, base_rate_per_year: 0.05, multiplier: 10}
    misbehaviours:
      - {kind: duplicate, count: 2, at: +1h, duration: 2h, params: {probability: 0.5}}
    repairs:
      - {at: +1d2h, device: SIM-000003, fault: membrane_failed}
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from zoneinfo import ZoneInfo

import yaml
from firmware_protocol import METRIC_NAMES, FaultCode, MachineClass, is_valid_device_id

from simulators.errors import ScenarioError
from simulators.timespec import When, parse_duration_ms, parse_when

__all__ = [
    "BatchDefect",
    "Injection",
    "Misbehaviour",
    "RepairAction",
    "Scenario",
    "Selector",
    "load_scenario",
    "parse_repair",
    "parse_scenario",
]


class Misbehaviour(StrEnum):
    """Ways a device breaks the protocol's expectations rather than the water treatment."""

    OFFLINE = "offline"  # network down; store-and-forward on return
    FLAPPING = "flapping"  # reconnects many times an hour
    CLOCK_SKEW = "clock_skew"  # device clock off by params.skew
    DUPLICATE = "duplicate"  # sends some messages twice
    OUT_OF_ORDER = "out_of_order"  # sends some messages after the next one
    MALFORMED = "malformed"  # sends some payloads that break the contract
    IMPERSONATE = "impersonate"  # publishes as another device


#: Misbehaviours that are also rows of the fault table; their ground truth carries that code.
MISBEHAVIOUR_CODES: Final[Mapping[Misbehaviour, FaultCode]] = MappingProxyType(
    {
        Misbehaviour.OFFLINE: FaultCode.OFFLINE,
        Misbehaviour.FLAPPING: FaultCode.FLAPPING,
        Misbehaviour.CLOCK_SKEW: FaultCode.CLOCK_DRIFT,
    }
)

MALFORMED_MODES: Final = ("not_json", "truncated", "bad_utf8", "schema", "non_finite", "too_large")


# --------------------------------------------------------------------------- parameter checks

_Check = Callable[[Any], Any]


def _duration(value: Any) -> int:
    return parse_duration_ms(value)


def _signed_duration(value: Any) -> int:
    if isinstance(value, str) and value.strip().startswith("-"):
        return -parse_duration_ms(value.strip()[1:])
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        return -parse_duration_ms(-value)
    return parse_duration_ms(value)


def _number(lo: float, hi: float) -> _Check:
    def check(value: Any) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError("not a number")
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g} (got {value})")
        return float(value)

    return check


def _integer(lo: int, hi: int) -> _Check:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("not a whole number")
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi} (got {value})")
        return value

    return check


def _choice(*options: str) -> _Check:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"must be one of: {', '.join(options)} (got {value!r})")
        return str(value)

    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _device_id(value: Any) -> str:
    if not isinstance(value, str) or not is_valid_device_id(value):
        raise ValueError(f"not a device id ({value!r})")
    return value


_SENSOR_METRICS = tuple(
    n for n in METRIC_NAMES if n not in {"volume_total", "sales_count", "sales_amount", "uptime"}
)

# name -> {param: (check, default)}; the defaults are the physical effect of a typical case.
_FAULT_PARAMS: Final[Mapping[FaultCode, Mapping[str, tuple[_Check, Any]]]] = {
    FaultCode.PREFILTER_CLOGGED: {
        "ramp": (_duration, 2 * 86_400_000),  # dp climbs to `factor` x baseline over this time
        "factor": (_number(1.2, 10.0), 2.6),
    },
    FaultCode.MEMBRANE_DEGRADED: {"rejection": (_number(0.5, 0.95), 0.85)},
    FaultCode.MEMBRANE_FAILED: {"rejection": (_number(0.0, 0.85), 0.6)},
    FaultCode.CARTRIDGE_EXHAUSTED: {"slot": (_integer(1, 4), 1)},
    FaultCode.CARTRIDGE_OVERDUE: {"slot": (_integer(1, 4), 1)},
    FaultCode.UV_LAMP_FAILURE: {"intensity": (_number(0.0, 49.0), 30.0)},
    FaultCode.UV_LAMP_EXPIRED: {},
    FaultCode.LEAK: {"loss_l_per_min": (_number(0.06, 5.0), 0.2)},
    FaultCode.PUMP_FAILURE: {"mode": (_choice("open", "stalled"), "open")},
    FaultCode.NO_INLET_WATER: {"pressure": (_number(0.0, 95.0), 40.0)},
    FaultCode.VALVE_STUCK_OPEN: {},
    FaultCode.TANK_EMPTY: {},
    FaultCode.HEATER_FAILURE: {},
    FaultCode.HOT_OVERTEMP: {},
    FaultCode.COMPRESSOR_FAILURE: {},
    FaultCode.PAYMENT_FAULT: {"error_code": (_integer(1, 65535), 4)},
    FaultCode.DOOR_OPEN: {},
    FaultCode.POWER_LOSS: {},
    FaultCode.SENSOR_FAULT: {
        "metric": (_choice(*_SENSOR_METRICS), "tds_out"),
        "mode": (_choice("stuck", "out_of_range", "inverted"), "stuck"),
    },
    FaultCode.CLOCK_DRIFT: {"skew": (_signed_duration, -10 * 60_000)},
    FaultCode.OFFLINE: {},
    FaultCode.FLAPPING: {"reconnects_per_hour": (_number(1.0, 600.0), 12.0)},
    FaultCode.TELEMETRY_GAP: {
        "drop": (_number(0.0, 1.0), 1.0),
        "recoverable": (_boolean, False),
    },
}

_MISBEHAVIOUR_PARAMS: Final[Mapping[Misbehaviour, Mapping[str, tuple[_Check, Any]]]] = {
    Misbehaviour.OFFLINE: _FAULT_PARAMS[FaultCode.OFFLINE],
    Misbehaviour.FLAPPING: _FAULT_PARAMS[FaultCode.FLAPPING],
    Misbehaviour.CLOCK_SKEW: {"skew": (_signed_duration, 10 * 60_000)},
    Misbehaviour.DUPLICATE: {"probability": (_number(0.0, 1.0), 0.3)},
    Misbehaviour.OUT_OF_ORDER: {"probability": (_number(0.0, 1.0), 0.3)},
    Misbehaviour.MALFORMED: {
        "mode": (_choice(*MALFORMED_MODES), "not_json"),
        "probability": (_number(0.0, 1.0), 0.2),
    },
    Misbehaviour.IMPERSONATE: {
        "target": (_device_id, None),
        "mode": (_choice("payload", "topic"), "payload"),
        "probability": (_number(0.0, 1.0), 0.2),
    },
}


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True, slots=True)
class Selector:
    """Which machines: listed ids, or a share / count drawn from those matching the filters."""

    devices: tuple[str, ...] = ()
    share: float | None = None
    count: int | None = None
    machine_class: MachineClass | None = None
    lot: str | None = None
    site: str | None = None


@dataclass(frozen=True, slots=True)
class Injection:
    """One fault or misbehaviour to inject; ``key`` is where it was written (``faults[2]``)."""

    key: str
    name: str  # a FaultCode or Misbehaviour value
    code: FaultCode | None  # the fault-table row, None for pure protocol misbehaviours
    misbehaviour: Misbehaviour | None
    select: Selector
    at: When
    duration_ms: int | None
    recur_after_ms: int | None
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class BatchDefect:
    """A hardware lot whose parts fail at ``multiplier`` times the base rate of the fleet."""

    key: str
    lot: str
    code: FaultCode
    base_rate_per_year: float
    multiplier: float


@dataclass(frozen=True, slots=True)
class RepairAction:
    """A technician's visit: clear a fault (or all), and/or replace a cartridge."""

    device_id: str
    at: When | None  # None: as soon as the simulator reads it
    code: FaultCode | None = None
    all_faults: bool = False
    slot: int | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    seed: int | None = None
    start: When | None = None
    duration_ms: int | None = None
    telemetry_interval_s: int | None = None
    machines: int | None = None
    vending_share: float | None = None
    faults: tuple[Injection, ...] = ()
    batch_defects: tuple[BatchDefect, ...] = ()
    misbehaviours: tuple[Injection, ...] = ()
    repairs: tuple[RepairAction, ...] = ()

    @property
    def injections(self) -> tuple[Injection, ...]:
        return self.faults + self.misbehaviours


# --------------------------------------------------------------------------- parsing


class _Reader:
    """Walks the parsed document, knowing the key path for error messages."""

    def __init__(self, source: str, zone: ZoneInfo) -> None:
        self.source = source
        self.zone = zone

    def fail(self, key: str, message: str) -> ScenarioError:
        return ScenarioError(self.source, key, message)

    def mapping(self, value: Any, key: str, allowed: Sequence[str]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(key, f"must be a mapping (got {type(value).__name__})")
        for name in value:
            if name not in allowed:
                where = f"{key}.{name}" if key else str(name)
                raise self.fail(where, f"unknown key (expected one of: {', '.join(allowed)})")
        return value

    def sequence(self, value: Any, key: str) -> Sequence[Any]:
        if not isinstance(value, list | tuple):
            raise self.fail(key, f"must be a list (got {type(value).__name__})")
        return value

    def check(self, check: _Check, value: Any, key: str) -> Any:
        try:
            return check(value)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None

    def when(self, value: Any, key: str) -> When:
        try:
            return parse_when(value, self.zone)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None

    def selector(self, item: Mapping[str, Any], key: str) -> Selector:
        devices: tuple[str, ...] = ()
        if "devices" in item:
            raw = self.sequence(item["devices"], f"{key}.devices")
            devices = tuple(
                self.check(_device_id, d, f"{key}.devices[{i}]") for i, d in enumerate(raw)
            )
            if not devices:
                raise self.fail(f"{key}.devices", "is empty")
        share = (
            self.check(_number(0.0, 1.0), item["share"], f"{key}.share")
            if "share" in item
            else None
        )
        count = (
            self.check(_integer(1, 10_000_000), item["count"], f"{key}.count")
            if "count" in item
            else None
        )
        chosen = [k for k in ("devices", "share", "count") if k in item]
        if len(chosen) != 1:
            raise self.fail(key, "needs exactly one of devices, share or count")
        machine_class = None
        if "class" in item:
            text = self.check(_choice("campus", "vending"), item["class"], f"{key}.class")
            machine_class = MachineClass(text)
        lot = self.check(_text, item["lot"], f"{key}.lot") if "lot" in item else None
        site = self.check(_text, item["site"], f"{key}.site") if "site" in item else None
        return Selector(devices, share, count, machine_class, lot, site)

    def params(
        self, raw: Any, key: str, spec: Mapping[str, tuple[_Check, Any]]
    ) -> Mapping[str, Any]:
        given = self.mapping(raw if raw is not None else {}, key, tuple(spec))
        out: dict[str, Any] = {}
        for name, (check, default) in spec.items():
            if name in given:
                out[name] = self.check(check, given[name], f"{key}.{name}")
            elif default is None:
                raise self.fail(f"{key}.{name}", "is required")
            else:
                out[name] = default
        return MappingProxyType(out)


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value.strip()


_INJECTION_KEYS = (
    "devices",
    "share",
    "count",
    "class",
    "lot",
    "site",
    "at",
    "duration",
    "recur_after",
    "params",
)


def _injection(r: _Reader, item: Any, key: str, *, misbehaviour: bool) -> Injection:
    head = "kind" if misbehaviour else "fault"
    m = r.mapping(item, key, (head, *_INJECTION_KEYS))
    if head not in m:
        raise r.fail(f"{key}.{head}", "is required")
    name = m[head]
    code: FaultCode | None
    kind: Misbehaviour | None
    spec: Mapping[str, tuple[_Check, Any]]
    if misbehaviour:
        options = [k.value for k in Misbehaviour]
        kind = Misbehaviour(r.check(_choice(*options), name, f"{key}.kind"))
        code = MISBEHAVIOUR_CODES.get(kind)
        spec = _MISBEHAVIOUR_PARAMS[kind]
    else:
        options = [c.value for c in FaultCode]
        code = FaultCode(r.check(_choice(*options), name, f"{key}.fault"))
        kind = None
        spec = _FAULT_PARAMS[code]
    if "at" not in m:
        raise r.fail(f"{key}.at", "is required")
    duration = r.check(_duration, m["duration"], f"{key}.duration") if "duration" in m else None
    if duration is not None and duration <= 0:
        raise r.fail(f"{key}.duration", "must be longer than 0")
    recur = (
        r.check(_duration, m["recur_after"], f"{key}.recur_after") if "recur_after" in m else None
    )
    return Injection(
        key=key,
        name=str(name),
        code=code,
        misbehaviour=kind,
        select=r.selector(m, key),
        at=r.when(m["at"], f"{key}.at"),
        duration_ms=duration,
        recur_after_ms=recur,
        params=r.params(m.get("params"), f"{key}.params", spec),
    )


def _batch_defect(r: _Reader, item: Any, key: str) -> BatchDefect:
    m = r.mapping(item, key, ("lot", "fault", "base_rate_per_year", "multiplier"))
    for required in ("lot", "fault", "base_rate_per_year"):
        if required not in m:
            raise r.fail(f"{key}.{required}", "is required")
    options = [c.value for c in FaultCode]
    return BatchDefect(
        key=key,
        lot=r.check(_text, m["lot"], f"{key}.lot"),
        code=FaultCode(r.check(_choice(*options), m["fault"], f"{key}.fault")),
        base_rate_per_year=r.check(
            _number(0.0, 1000.0), m["base_rate_per_year"], f"{key}.base_rate_per_year"
        ),
        multiplier=r.check(_number(0.0, 10_000.0), m.get("multiplier", 10.0), f"{key}.multiplier"),
    )


def _repair(r: _Reader, item: Any, key: str) -> RepairAction:
    m = r.mapping(item, key, ("at", "device", "device_id", "fault", "cartridge", "slot"))
    device = m.get("device", m.get("device_id"))
    if device is None:
        raise r.fail(f"{key}.device", "is required")
    device_id = r.check(_device_id, device, f"{key}.device")
    code = None
    all_faults = False
    if "fault" in m:
        if m["fault"] == "all":
            all_faults = True
        else:
            options = [c.value for c in FaultCode]
            code = FaultCode(r.check(_choice("all", *options), m["fault"], f"{key}.fault"))
    slot_key = "cartridge" if "cartridge" in m else "slot"
    slot = r.check(_integer(1, 4), m[slot_key], f"{key}.{slot_key}") if slot_key in m else None
    if code is None and not all_faults and slot is None:
        raise r.fail(key, "needs a fault to clear or a cartridge slot to replace")
    at = r.when(m["at"], f"{key}.at") if "at" in m else None
    return RepairAction(device_id=device_id, at=at, code=code, all_faults=all_faults, slot=slot)


_TOP_KEYS = (
    "seed",
    "start",
    "duration",
    "telemetry_interval",
    "fleet",
    "faults",
    "batch_defects",
    "misbehaviours",
    "repairs",
)


def parse_scenario(
    document: Any, *, source: str = "<scenario>", timezone: str = "Asia/Shanghai"
) -> Scenario:
    """Validate an already parsed document (a mapping) into a `Scenario`."""
    r = _Reader(source, ZoneInfo(timezone))
    if document is None:
        return Scenario()
    top = r.mapping(document, "", _TOP_KEYS)
    seed = r.check(_integer(0, 2**63 - 1), top["seed"], "seed") if "seed" in top else None
    start = r.when(top["start"], "start") if "start" in top else None
    if start is not None and start.epoch_ms is None:
        raise r.fail("start", "must be an absolute time, not an offset")
    duration = r.check(_duration, top["duration"], "duration") if "duration" in top else None
    if duration is not None and duration <= 0:
        raise r.fail("duration", "must be longer than 0")
    interval = None
    if "telemetry_interval" in top:
        interval_ms = r.check(_duration, top["telemetry_interval"], "telemetry_interval")
        if interval_ms % 1000 or not 5_000 <= interval_ms <= 3_600_000:
            raise r.fail("telemetry_interval", "must be whole seconds between 5s and 1h")
        interval = interval_ms // 1000
    machines = vending_share = None
    if "fleet" in top:
        fleet = r.mapping(top["fleet"], "fleet", ("machines", "vending_share"))
        if "machines" in fleet:
            machines = r.check(_integer(1, 10_000_000), fleet["machines"], "fleet.machines")
        if "vending_share" in fleet:
            vending_share = r.check(
                _number(0.0, 1.0), fleet["vending_share"], "fleet.vending_share"
            )
    faults = tuple(
        _injection(r, item, f"faults[{i}]", misbehaviour=False)
        for i, item in enumerate(r.sequence(top.get("faults", []), "faults"))
    )
    misbehaviours = tuple(
        _injection(r, item, f"misbehaviours[{i}]", misbehaviour=True)
        for i, item in enumerate(r.sequence(top.get("misbehaviours", []), "misbehaviours"))
    )
    defects = tuple(
        _batch_defect(r, item, f"batch_defects[{i}]")
        for i, item in enumerate(r.sequence(top.get("batch_defects", []), "batch_defects"))
    )
    repairs = tuple(
        _repair(r, item, f"repairs[{i}]")
        for i, item in enumerate(r.sequence(top.get("repairs", []), "repairs"))
    )
    return Scenario(
        seed=seed,
        start=start,
        duration_ms=duration,
        telemetry_interval_s=interval,
        machines=machines,
        vending_share=vending_share,
        faults=faults,
        batch_defects=defects,
        misbehaviours=misbehaviours,
        repairs=repairs,
    )


def parse_repair(document: Any, *, source: str, timezone: str = "Asia/Shanghai") -> RepairAction:
    """One repair action (a line of a repairs file)."""
    return _repair(_Reader(source, ZoneInfo(timezone)), document, "")


def read_document(path: Path) -> Any:
    """Parse a YAML, TOML or JSON file by its suffix; syntax errors become ScenarioError."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(source, "", f"cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ScenarioError(source, "", f"not UTF-8 text (byte {exc.start})") from exc
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            return tomllib.loads(text)
        if suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(source, "", f"not valid TOML: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ScenarioError(source, "", f"not valid JSON: {exc}") from exc
    except yaml.YAMLError as exc:
        detail = str(exc).replace("\n", " ")
        raise ScenarioError(source, "", f"not valid YAML: {detail}") from exc


def load_scenario(path: Path, *, timezone: str = "Asia/Shanghai") -> Scenario:
    """Read a scenario file (``.yaml``/``.yml``, ``.toml`` or ``.json``)."""
    return parse_scenario(read_document(path), source=str(path), timezone=timezone)

"""The fault code table, as data for the rule engine and the simulators.

SPEC.md renders the same table; a test keeps the two and the schema's
``faultCode`` enum identical.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

__all__ = ["FAULT_TABLE", "FaultCode", "FaultSource", "FaultSpec", "MachineClass", "Severity"]


class MachineClass(StrEnum):
    CAMPUS = "campus"
    VENDING = "vending"


class Severity(StrEnum):
    """Ordered from least to most urgent; compare with ``rank``."""

    INFO = "info"
    WARNING = "warning"
    MAJOR = "major"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.MAJOR: 2, Severity.CRITICAL: 3}


class FaultSource(StrEnum):
    """Who raises the fault: the device's firmware, the cloud's rules, or either."""

    DEVICE = "device"
    CLOUD = "cloud"
    BOTH = "both"


class FaultCode(StrEnum):
    PREFILTER_CLOGGED = "prefilter_clogged"
    MEMBRANE_DEGRADED = "membrane_degraded"
    MEMBRANE_FAILED = "membrane_failed"
    CARTRIDGE_EXHAUSTED = "cartridge_exhausted"
    CARTRIDGE_OVERDUE = "cartridge_overdue"
    UV_LAMP_FAILURE = "uv_lamp_failure"
    UV_LAMP_EXPIRED = "uv_lamp_expired"
    LEAK = "leak"
    PUMP_FAILURE = "pump_failure"
    NO_INLET_WATER = "no_inlet_water"
    VALVE_STUCK_OPEN = "valve_stuck_open"
    TANK_EMPTY = "tank_empty"
    HEATER_FAILURE = "heater_failure"
    HOT_OVERTEMP = "hot_overtemp"
    COMPRESSOR_FAILURE = "compressor_failure"
    PAYMENT_FAULT = "payment_fault"
    DOOR_OPEN = "door_open"
    POWER_LOSS = "power_loss"
    SENSOR_FAULT = "sensor_fault"
    CLOCK_DRIFT = "clock_drift"
    OFFLINE = "offline"
    FLAPPING = "flapping"
    TELEMETRY_GAP = "telemetry_gap"


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultSpec:
    """One row of the fault table.

    ``confirmed_by`` names the telemetry metrics (or message facts, prefixed
    ``msg.``) that show the fault; ``condition`` is the *default* rule, the
    thresholds being configuration of the rule engine.
    """

    code: FaultCode
    meaning: str
    severity: Severity
    classes: frozenset[MachineClass]
    confirmed_by: tuple[str, ...]
    condition: str
    source: FaultSource


_BOTH = frozenset(MachineClass)
_CAMPUS_ONLY = frozenset({MachineClass.CAMPUS})
_VENDING = frozenset({MachineClass.VENDING})


def _row(
    code: FaultCode,
    meaning: str,
    severity: Severity,
    classes: frozenset[MachineClass],
    confirmed_by: tuple[str, ...],
    condition: str,
    source: FaultSource,
) -> tuple[FaultCode, FaultSpec]:
    spec = FaultSpec(
        code=code,
        meaning=meaning,
        severity=severity,
        classes=classes,
        confirmed_by=confirmed_by,
        condition=condition,
        source=source,
    )
    return code, spec


FAULT_TABLE: Mapping[FaultCode, FaultSpec] = MappingProxyType(
    dict(
        [
            _row(
                FaultCode.PREFILTER_CLOGGED,
                "pre-filters clogging",
                Severity.WARNING,
                _BOTH,
                ("prefilter_dp", "permeate_flow"),
                "prefilter_dp >= 2x baseline or permeate_flow < 70 % of baseline for 24 h",
                FaultSource.CLOUD,
            ),
            _row(
                FaultCode.MEMBRANE_DEGRADED,
                "RO membrane rejection falling",
                Severity.MAJOR,
                _BOTH,
                ("tds_in", "tds_out"),
                "rejection < 90 % over 1 h of production, first 60 s after idle ignored",
                FaultSource.CLOUD,
            ),
            _row(
                FaultCode.MEMBRANE_FAILED,
                "RO membrane failed",
                Severity.CRITICAL,
                _BOTH,
                ("tds_in", "tds_out"),
                "rejection < 80 % over 1 h of production",
                FaultSource.CLOUD,
            ),
            _row(
                FaultCode.CARTRIDGE_EXHAUSTED,
                "a cartridge is near the end of its life",
                Severity.WARNING,
                _BOTH,
                ("stages.litres_used", "stages.days_in_service"),
                "remaining life <= 10 % of litres or days",
                FaultSource.BOTH,
            ),
            _row(
                FaultCode.CARTRIDGE_OVERDUE,
                "a cartridge is past its life",
                Severity.MAJOR,
                _BOTH,
                ("stages.litres_used", "stages.days_in_service"),
                "remaining life <= 0",
                FaultSource.BOTH,
            ),
            _row(
                FaultCode.UV_LAMP_FAILURE,
                "UV lamp on but weak or dark; dispensing locked",
                Severity.CRITICAL,
                _BOTH,
                ("uv_on", "uv_intensity"),
                "uv_on and uv_intensity < 50 % for 10 s",
                FaultSource.DEVICE,
            ),
            _row(
                FaultCode.UV_LAMP_EXPIRED,
                "UV lamp past its rated hours",
                Severity.WARNING,
                _BOTH,
                ("uv_hours",),
                "uv_hours >= config.uv_lamp_life_h",
                FaultSource.BOTH,
            ),
            _row(
                FaultCode.LEAK,
                "water leaking",
                Severity.CRITICAL,
                _BOTH,
                ("leak", "permeate_flow", "dispense_flow", "tank_level"),
                "leak sensor wet (immediate); or flow > 0.05 L/min with no dispensing "
                "and tank full for 10 min",
                FaultSource.BOTH,
            ),
            _row(
                FaultCode.PUMP_FAILURE,
                "booster pump not working",
                Severity.CRITICAL,
                _BOTH,
                ("pump_on", "pump_current", "tank_level"),
                "pump_on and pump_current ~ 0 or > 1.5x nominal for 5 s; "
                "or tank_level not rising for 5 min",
                FaultSource.BOTH,
            ),
            _row(
                FaultCode.NO_INLET_WATER,
                "no feed water",
                Severity.MAJOR,
                _BOTH,
                ("inlet_pressure", "tank_level"),
                "inlet_pressure < 100 kPa and tank falling for 30 s",
                FaultSource.BOTH,
            ),
            _row(
                FaultCode.VALVE_STUCK_OPEN,
                "inlet valve stuck open",
                Severity.MAJOR,
                _BOTH,
                ("pump_on", "tank_level"),
                "pump_on with tank_level = 100 % for > 30 min",
                FaultSource.CLOUD,
            ),
            _row(
                FaultCode.TANK_EMPTY,
                "storage tank empty",
                Severity.WARNING,
                _BOTH,
                ("tank_level",),
                "tank_level < 10 % for 30 min in service hours",
                FaultSource.CLOUD,
            ),
            _row(
                FaultCode.HEATER_FAILURE,
                "hot tank does not heat",
                Severity.MAJOR,
                _CAMPUS_ONLY,
                ("heater_on", "hot_temp"),
                "heater_on and hot_temp < config.hot_setpoint - 15 C for 30 min",
                FaultSource.BOTH,
            ),
            _row(
                FaultCode.HOT_OVERTEMP,
                "hot tank over 100 C",
                Severity.CRITICAL,
                _CAMPUS_ONLY,
                ("hot_temp",),
                "hot_temp > 100 C (immediate)",
                FaultSource.BOTH,
            ),
            _row(
                FaultCode.COMPRESSOR_FAILURE,
                "cold tank does not cool",
                Severity.MAJOR,
                _CAMPUS_ONLY,
                ("compressor_on", "cold_temp"),
                "compressor_on and cold_temp > 12 C for 60 min; or > 6 starts per hour",
                FaultSource.BOTH,
            ),
            _row(
                FaultCode.PAYMENT_FAULT,
                "payment module failing",
                Severity.MAJOR,
                _VENDING,
                ("payment_ok", "payment_error", "sales_count"),
                "payment_ok false or payment_error != 0 (immediate); "
                "or no sales at peak time against baseline for 2 h",
                FaultSource.BOTH,
            ),
            _row(
                FaultCode.DOOR_OPEN,
                "door open outside a maintenance visit",
                Severity.WARNING,
                _BOTH,
                ("door_open",),
                "door_open for config.door_alarm_s (default 60 s)",
                FaultSource.BOTH,
            ),
            _row(
                FaultCode.POWER_LOSS,
                "mains power lost",
                Severity.MAJOR,
                _BOTH,
                ("mains_ok", "msg.reboot.reason"),
                "mains_ok false; or offline with mains lost; or reboot with reason brownout",
                FaultSource.BOTH,
            ),
            _row(
                FaultCode.SENSOR_FAULT,
                "a sensor reads nonsense",
                Severity.WARNING,
                _BOTH,
                ("any metric",),
                "value out of physical range; tds_out > tds_in; zero variance for 24 h",
                FaultSource.BOTH,
            ),
            _row(
                FaultCode.CLOCK_DRIFT,
                "device clock wrong",
                Severity.WARNING,
                _BOTH,
                ("msg.ts",),
                "ts differs from receive time by > 5 min on live messages",
                FaultSource.CLOUD,
            ),
            _row(
                FaultCode.OFFLINE,
                "machine not reporting",
                Severity.MAJOR,
                _BOTH,
                ("msg.status",),
                "status lost/offline, or no message for 3 telemetry intervals",
                FaultSource.CLOUD,
            ),
            _row(
                FaultCode.FLAPPING,
                "connection unstable",
                Severity.WARNING,
                _BOTH,
                ("msg.birth.conn",),
                "> 5 reconnects (births) per hour",
                FaultSource.CLOUD,
            ),
            _row(
                FaultCode.TELEMETRY_GAP,
                "messages missing within a boot",
                Severity.INFO,
                _BOTH,
                ("msg.seq",),
                "seq gap still open after the reorder window and a resend",
                FaultSource.CLOUD,
            ),
        ]
    )
)

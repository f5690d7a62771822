"""Typed, immutable models of the v1 messages.

The wire form (SPEC.md, schemas/) is flat JSON; these models are what the
rest of the product handles. Construct them with keywords; ``encode`` turns
them into bytes and ``decode`` returns them. The envelope's ``v`` is not a
field: a model is always protocol v1.

``Metrics`` and ``StageUsage`` are NamedTuples rather than dataclasses: they
are built once per telemetry message on the ingest hot path, a tuple is the
cheapest immutable record to build, and ``tuple(metrics)`` is already a row in
``METRIC_NAMES`` order for a columnar insert.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final, NamedTuple, TypeAlias

from .faults import FaultCode, MachineClass
from .topics import MessageKind

__all__ = [
    "BOOL_METRICS",
    "INT_METRICS",
    "METRIC_NAMES",
    "AckError",
    "AckStatus",
    "Birth",
    "CartridgeKind",
    "CartridgeReplaced",
    "CartridgeStage",
    "Command",
    "CommandAck",
    "CommandBody",
    "CommandName",
    "Config",
    "DoorClosed",
    "DoorOpened",
    "Event",
    "EventBody",
    "EventKind",
    "FaultCleared",
    "FaultRaised",
    "Message",
    "Metrics",
    "Payment",
    "PaymentMethod",
    "PaymentResult",
    "PresenceState",
    "Rebirth",
    "Reboot",
    "RebootReason",
    "Resend",
    "ResetCartridge",
    "SetConfig",
    "StageUsage",
    "Status",
    "Telemetry",
    "TimeSync",
]


class CartridgeKind(StrEnum):
    PP = "pp"
    CARBON = "carbon"
    RO = "ro"
    POST = "post"
    MINERAL = "mineral"


class PresenceState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    LOST = "lost"


class EventKind(StrEnum):
    FAULT_RAISED = "fault_raised"
    FAULT_CLEARED = "fault_cleared"
    DOOR_OPENED = "door_opened"
    DOOR_CLOSED = "door_closed"
    PAYMENT = "payment"
    REBOOT = "reboot"
    CARTRIDGE_REPLACED = "cartridge_replaced"


class PaymentMethod(StrEnum):
    COIN = "coin"
    NOTE = "note"
    CARD = "card"
    QR = "qr"
    TOKEN = "token"
    FREE = "free"


class PaymentResult(StrEnum):
    OK = "ok"
    DECLINED = "declined"
    ERROR = "error"


class RebootReason(StrEnum):
    POWER_ON = "power_on"
    BROWNOUT = "brownout"
    WATCHDOG = "watchdog"
    PANIC = "panic"
    SOFTWARE = "software"
    OTA_UPDATE = "ota_update"
    COMMAND = "command"
    UNKNOWN = "unknown"


class AckStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"


class AckError(StrEnum):
    UNKNOWN_COMMAND = "unknown_command"
    BAD_ARGS = "bad_args"
    UNSUPPORTED = "unsupported"
    BUSY = "busy"
    NOT_AVAILABLE = "not_available"
    INTERNAL = "internal"


class CommandName(StrEnum):
    REBIRTH = "rebirth"
    RESEND = "resend"
    SET_CONFIG = "set_config"
    RESET_CARTRIDGE = "reset_cartridge"
    TIME_SYNC = "time_sync"


class Metrics(NamedTuple):
    """One reading of every sensor the machine has; absent ones are None.

    Units: tds ppm; temperatures degC; pressures kPa; flows L/min; volume L;
    tank_level and uv_intensity %; pump_current A; uv_hours h; rssi dBm;
    uptime s; sales_amount minor currency units.
    """

    tds_in: float | None = None
    tds_out: float | None = None
    feed_temp: float | None = None
    inlet_pressure: float | None = None
    prefilter_dp: float | None = None
    permeate_flow: float | None = None
    dispense_flow: float | None = None
    volume_total: float | None = None
    tank_level: float | None = None
    pump_current: float | None = None
    hot_temp: float | None = None
    cold_temp: float | None = None
    uv_intensity: float | None = None
    uv_hours: float | None = None
    leak: bool | None = None
    door_open: bool | None = None
    mains_ok: bool | None = None
    heater_on: bool | None = None
    compressor_on: bool | None = None
    pump_on: bool | None = None
    uv_on: bool | None = None
    payment_ok: bool | None = None
    payment_error: int | None = None
    sales_count: int | None = None
    sales_amount: int | None = None
    rssi: int | None = None
    uptime: int | None = None


METRIC_NAMES: Final[tuple[str, ...]] = Metrics._fields
BOOL_METRICS: Final = frozenset(
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
INT_METRICS: Final = frozenset({"payment_error", "sales_count", "sales_amount", "rssi", "uptime"})


class StageUsage(NamedTuple):
    """Counters of one cartridge slot as reported in telemetry."""

    slot: int
    litres_used: float
    days_in_service: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CartridgeStage:
    """A cartridge slot as described in the birth: what it is, its life, its use."""

    slot: int
    kind: CartridgeKind
    capacity_l: float
    capacity_days: int
    litres_used: float
    days_in_service: float
    installed_at: int | None = None
    serial: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Device configuration; ``version`` increases with every change.

    In a set_config command, None means "keep the current value".
    """

    version: int
    telemetry_interval_s: int | None = None
    hot_setpoint: float | None = None
    cold_setpoint: float | None = None
    uv_lamp_life_h: int | None = None
    door_alarm_s: int | None = None
    price_per_litre: int | None = None
    currency: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Birth:
    device_id: str
    boot: int
    conn: int
    seq: int
    ts: int
    fw: str
    model: str
    machine_class: MachineClass
    config: Config
    stages: tuple[CartridgeStage, ...]
    metrics: Metrics
    faults: tuple[FaultCode, ...] = ()
    hw: str | None = None
    serial: str | None = None

    kind = MessageKind.BIRTH
    hist = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Telemetry:
    device_id: str
    boot: int
    seq: int
    ts: int
    metrics: Metrics
    stages: tuple[StageUsage, ...] = ()
    hist: bool = False

    kind = MessageKind.TELEMETRY


# Event bodies: one class per event kind, holding that kind's fields.


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultRaised:
    code: FaultCode
    value: float | None = None

    event = EventKind.FAULT_RAISED


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultCleared:
    code: FaultCode
    value: float | None = None

    event = EventKind.FAULT_CLEARED


@dataclass(frozen=True, slots=True, kw_only=True)
class DoorOpened:
    maintenance: bool | None = None

    event = EventKind.DOOR_OPENED


@dataclass(frozen=True, slots=True, kw_only=True)
class DoorClosed:
    maintenance: bool | None = None

    event = EventKind.DOOR_CLOSED


@dataclass(frozen=True, slots=True, kw_only=True)
class Payment:
    method: PaymentMethod
    amount: int
    currency: str
    result: PaymentResult
    volume_l: float | None = None
    error_code: int | None = None

    event = EventKind.PAYMENT


@dataclass(frozen=True, slots=True, kw_only=True)
class Reboot:
    reason: RebootReason
    prev_uptime: int | None = None

    event = EventKind.REBOOT


@dataclass(frozen=True, slots=True, kw_only=True)
class CartridgeReplaced:
    slot: int
    kind: CartridgeKind
    capacity_l: float
    capacity_days: int
    serial: str | None = None
    source: str | None = None  # "panel" or "command"

    event = EventKind.CARTRIDGE_REPLACED


EventBody: TypeAlias = (
    FaultRaised | FaultCleared | DoorOpened | DoorClosed | Payment | Reboot | CartridgeReplaced
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    device_id: str
    boot: int
    seq: int
    ts: int
    body: EventBody
    detail: str | None = None
    hist: bool = False

    kind = MessageKind.EVENT

    @property
    def event(self) -> EventKind:
        return self.body.event


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    """Retained presence. The Will is a Status with state LOST."""

    device_id: str
    boot: int
    conn: int
    ts: int
    state: PresenceState
    serves: tuple[str, ...] = ()

    kind = MessageKind.STATUS


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandAck:
    device_id: str
    boot: int
    seq: int
    ts: int
    cmd_id: str
    status: AckStatus
    error: AckError | None = None
    detail: str | None = None
    hist: bool = False

    kind = MessageKind.ACK


# Command bodies: one class per command, holding its args.


@dataclass(frozen=True, slots=True, kw_only=True)
class Rebirth:
    name = CommandName.REBIRTH


@dataclass(frozen=True, slots=True, kw_only=True)
class Resend:
    """Replay the data messages boot/from_seq..to_seq (inclusive) with hist."""

    boot: int
    from_seq: int
    to_seq: int

    name = CommandName.RESEND


@dataclass(frozen=True, slots=True, kw_only=True)
class SetConfig:
    config: Config

    name = CommandName.SET_CONFIG


@dataclass(frozen=True, slots=True, kw_only=True)
class ResetCartridge:
    slot: int
    kind: CartridgeKind | None = None
    capacity_l: float | None = None
    capacity_days: int | None = None
    serial: str | None = None

    name = CommandName.RESET_CARTRIDGE


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeSync:
    """Set the device clock to the command's ``ts``."""

    name = CommandName.TIME_SYNC


CommandBody: TypeAlias = Rebirth | Resend | SetConfig | ResetCartridge | TimeSync


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    device_id: str
    id: str
    ts: int
    expires_at: int
    body: CommandBody

    kind = MessageKind.CMD

    @property
    def name(self) -> CommandName:
        return self.body.name

    def expired(self, now_ms: int) -> bool:
        """Whether a device should answer ``expired`` instead of running it.

        time_sync never expires by the device clock: that clock is what it fixes.
        """
        return not isinstance(self.body, TimeSync) and now_ms >= self.expires_at


Message: TypeAlias = Birth | Telemetry | Event | Status | CommandAck | Command

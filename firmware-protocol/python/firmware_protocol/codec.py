"""decode (bytes to model, validating) and encode (model to bytes).

Decode order, which fixes the reason code when several apply (SPEC.md
"Rejections"): topic, size, UTF-8, JSON syntax, non-finite numbers, major
version, schema, identity, clock. Validation is the compiled JSON Schema
(jsonschema-rs over the files in schemas/), so the schemas are the only
definition of a valid message; this module adds only what a schema cannot
say (topic, size, identity, clock) and builds the models.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any, Final

import orjson

from . import _schemas
from .errors import EncodeError, Rejected, RejectReason
from .faults import FaultCode, MachineClass
from .limits import (
    MAX_BIRTH_BYTES,
    MAX_FUTURE_SKEW_MS,
    MAX_HIST_AGE_MS,
    MAX_LIVE_AGE_MS,
    MAX_PAYLOAD_BYTES,
    PROTOCOL_VERSION,
)
from .messages import (
    INT_METRICS,
    METRIC_NAMES,
    AckError,
    AckStatus,
    Birth,
    CartridgeKind,
    CartridgeReplaced,
    CartridgeStage,
    Command,
    CommandAck,
    CommandBody,
    CommandName,
    Config,
    DoorClosed,
    DoorOpened,
    Event,
    EventBody,
    EventKind,
    FaultCleared,
    FaultRaised,
    Message,
    Metrics,
    Payment,
    PaymentMethod,
    PaymentResult,
    PresenceState,
    Rebirth,
    Reboot,
    RebootReason,
    Resend,
    ResetCartridge,
    SetConfig,
    StageUsage,
    Status,
    Telemetry,
    TimeSync,
)
from .topics import MessageKind, parse_topic, topic_of

__all__ = ["decode", "encode", "max_payload_bytes", "topic_for"]

_JsonObj = dict[str, Any]
_INT_METRIC_INDEXES: Final = tuple(i for i, n in enumerate(METRIC_NAMES) if n in INT_METRICS)
_CONFIG_FIELDS: Final = (
    "telemetry_interval_s",
    "hot_setpoint",
    "cold_setpoint",
    "uv_lamp_life_h",
    "door_alarm_s",
    "price_per_litre",
    "currency",
)
_CONFIG_INT_FIELDS: Final = (
    "version",
    "telemetry_interval_s",
    "uv_lamp_life_h",
    "door_alarm_s",
    "price_per_litre",
)


def max_payload_bytes(kind: MessageKind) -> int:
    return MAX_BIRTH_BYTES if kind is MessageKind.BIRTH else MAX_PAYLOAD_BYTES


def topic_for(msg: Message) -> str:
    return topic_of(msg.device_id, msg.kind)


# --------------------------------------------------------------------------
# decode


class _NonFinite(ValueError):
    pass


def _refuse_constant(name: str) -> float:
    raise _NonFinite(name)


def _has_non_finite(obj: object) -> bool:
    if isinstance(obj, float):
        return not math.isfinite(obj)
    if isinstance(obj, dict):
        return any(_has_non_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_non_finite(v) for v in obj)
    return False


def _classify_unparsable(payload: bytes, error: Exception) -> Rejected:
    """Why orjson refused the payload. Slow path: only bad input gets here."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected(RejectReason.NOT_UTF8, str(exc))
    try:
        obj = json.loads(text, parse_constant=_refuse_constant)
    except _NonFinite as exc:
        return Rejected(RejectReason.NON_FINITE_NUMBER, f"{exc} is not a JSON number")
    except (json.JSONDecodeError, RecursionError) as exc:
        return Rejected(RejectReason.MALFORMED_JSON, str(exc))
    if _has_non_finite(obj):
        return Rejected(RejectReason.NON_FINITE_NUMBER, "number overflows a double")
    # What only orjson refuses: lone surrogate escapes, nesting beyond 1024.
    return Rejected(RejectReason.MALFORMED_JSON, str(error))


def _int(x: Any) -> int:
    # JSON Schema counts 5.0 as an integer; the models promise int.
    return x if x.__class__ is int else int(x)


def decode(
    topic: str,
    payload: bytes,
    *,
    received_at_ms: int,
    max_future_skew_ms: int = MAX_FUTURE_SKEW_MS,
    max_live_age_ms: int = MAX_LIVE_AGE_MS,
    max_hist_age_ms: int = MAX_HIST_AGE_MS,
) -> Message:
    """Validate one MQTT message and return its model, or raise Rejected.

    ``received_at_ms`` is the receiver's clock (ms since epoch, UTC), against
    which ``ts`` is judged. Clock rules: any message with ts more than
    ``max_future_skew_ms`` ahead is clock_future; a data message older than
    ``max_live_age_ms`` (or ``max_hist_age_ms`` when ``hist``) is clock_past.
    Status is exempt from the past rule (a retained status or a Will is old by
    nature) and commands from both (the device judges ``expires_at``).
    """
    device_id, kind = parse_topic(topic)
    size = len(payload)
    if size > (MAX_BIRTH_BYTES if kind is MessageKind.BIRTH else MAX_PAYLOAD_BYTES):
        raise Rejected(RejectReason.TOO_LARGE, f"{size} bytes > {max_payload_bytes(kind)}")
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise _classify_unparsable(bytes(payload), exc) from None
    if obj.__class__ is not dict:
        raise Rejected(RejectReason.SCHEMA_VIOLATION, "(root): payload is not a JSON object")
    v = obj.get("v")
    if v != PROTOCOL_VERSION and (v.__class__ is int or (v.__class__ is float and v.is_integer())):
        raise Rejected(RejectReason.UNSUPPORTED_VERSION, f"v={v!r}, this receiver speaks v1")
    if not _schemas.validator(kind).is_valid(obj):
        raise Rejected(RejectReason.SCHEMA_VIOLATION, _schemas.first_error(kind, obj))
    if obj["device_id"] != device_id:
        raise Rejected(
            RejectReason.IDENTITY_MISMATCH,
            f"payload device_id {obj['device_id']!r} on the topic of {device_id!r}",
        )
    ts = obj["ts"]
    if ts.__class__ is not int:
        ts = int(ts)
    if kind is not MessageKind.CMD:
        if ts > received_at_ms + max_future_skew_ms:
            raise Rejected(RejectReason.CLOCK_FUTURE, f"ts {ts} is {ts - received_at_ms} ms ahead")
        if kind is not MessageKind.STATUS:
            limit = max_hist_age_ms if obj.get("hist") is True else max_live_age_ms
            if ts < received_at_ms - limit:
                raise Rejected(
                    RejectReason.CLOCK_PAST, f"ts {ts} is {received_at_ms - ts} ms old > {limit}"
                )
    return _BUILDERS[kind](obj, device_id, ts)


def _metrics(m: _JsonObj) -> Metrics:
    # Positional build: keyword matching of ~25 non-interned keys costs
    # several microseconds per message. Names a newer firmware adds are
    # simply not picked up (v1 evolves by adding fields; receivers ignore them).
    values = list(map(m.get, METRIC_NAMES))
    for i in _INT_METRIC_INDEXES:
        x = values[i]
        if x.__class__ is float:
            values[i] = int(x)
    return Metrics._make(values)


def _config(c: _JsonObj) -> Config:
    kw = {k: c[k] for k in _CONFIG_FIELDS if k in c}
    for k in _CONFIG_INT_FIELDS:
        if k in kw:
            kw[k] = _int(kw[k])
    return Config(version=_int(c["version"]), **kw)


# Telemetry is most of the traffic, so its model is filled through the slot
# descriptors: a frozen dataclass __init__ goes through object.__setattr__ per
# field, which costs about 0.6 us of the roughly 10 us a message takes. The
# result is the same object __init__ would build (tests compare them).
_new_object = object.__new__
_set_device_id = getattr(Telemetry, "device_id").__set__  # noqa: B009
_set_boot = getattr(Telemetry, "boot").__set__  # noqa: B009
_set_seq = getattr(Telemetry, "seq").__set__  # noqa: B009
_set_ts = getattr(Telemetry, "ts").__set__  # noqa: B009
_set_metrics = getattr(Telemetry, "metrics").__set__  # noqa: B009
_set_stages = getattr(Telemetry, "stages").__set__  # noqa: B009
_set_hist = getattr(Telemetry, "hist").__set__  # noqa: B009


def _build_telemetry(o: _JsonObj, device_id: str, ts: int) -> Telemetry:
    # int() because JSON Schema counts 5.0 as an integer and the models promise int.
    stages = o.get("stages")
    msg: Telemetry = _new_object(Telemetry)
    _set_device_id(msg, device_id)
    _set_boot(msg, int(o["boot"]))
    _set_seq(msg, int(o["seq"]))
    _set_ts(msg, ts)
    _set_metrics(msg, _metrics(o["metrics"]))
    _set_stages(
        msg,
        tuple([StageUsage(int(s["slot"]), s["litres_used"], s["days_in_service"]) for s in stages])
        if stages
        else (),
    )
    _set_hist(msg, o.get("hist") is True)
    return msg


def _build_birth(o: _JsonObj, device_id: str, ts: int) -> Birth:
    return Birth(
        device_id=device_id,
        boot=_int(o["boot"]),
        conn=_int(o["conn"]),
        seq=_int(o["seq"]),
        ts=ts,
        fw=o["fw"],
        model=o["model"],
        machine_class=MachineClass(o["machine_class"]),
        config=_config(o["config"]),
        stages=tuple(
            CartridgeStage(
                slot=_int(s["slot"]),
                kind=CartridgeKind(s["kind"]),
                capacity_l=s["capacity_l"],
                capacity_days=_int(s["capacity_days"]),
                litres_used=s["litres_used"],
                days_in_service=s["days_in_service"],
                installed_at=_int(s["installed_at"]) if "installed_at" in s else None,
                serial=s.get("serial"),
            )
            for s in o["stages"]
        ),
        metrics=_metrics(o["metrics"]),
        faults=tuple(FaultCode(f) for f in o["faults"]),
        hw=o.get("hw"),
        serial=o.get("serial"),
    )


def _opt_int(o: _JsonObj, key: str) -> int | None:
    x = o.get(key)
    return None if x is None else _int(x)


def _event_body(o: _JsonObj) -> EventBody:
    kind = EventKind(o["event"])
    if kind is EventKind.FAULT_RAISED:
        return FaultRaised(code=FaultCode(o["code"]), value=o.get("value"))
    if kind is EventKind.FAULT_CLEARED:
        return FaultCleared(code=FaultCode(o["code"]), value=o.get("value"))
    if kind is EventKind.DOOR_OPENED:
        return DoorOpened(maintenance=o.get("maintenance"))
    if kind is EventKind.DOOR_CLOSED:
        return DoorClosed(maintenance=o.get("maintenance"))
    if kind is EventKind.PAYMENT:
        return Payment(
            method=PaymentMethod(o["method"]),
            amount=_int(o["amount"]),
            currency=o["currency"],
            result=PaymentResult(o["result"]),
            volume_l=o.get("volume_l"),
            error_code=_opt_int(o, "error_code"),
        )
    if kind is EventKind.REBOOT:
        return Reboot(reason=RebootReason(o["reason"]), prev_uptime=_opt_int(o, "prev_uptime"))
    return CartridgeReplaced(
        slot=_int(o["slot"]),
        kind=CartridgeKind(o["kind"]),
        capacity_l=o["capacity_l"],
        capacity_days=_int(o["capacity_days"]),
        serial=o.get("serial"),
        source=o.get("source"),
    )


def _build_event(o: _JsonObj, device_id: str, ts: int) -> Event:
    return Event(
        device_id=device_id,
        boot=_int(o["boot"]),
        seq=_int(o["seq"]),
        ts=ts,
        body=_event_body(o),
        detail=o.get("detail"),
        hist=o.get("hist") is True,
    )


def _build_status(o: _JsonObj, device_id: str, ts: int) -> Status:
    return Status(
        device_id=device_id,
        boot=_int(o["boot"]),
        conn=_int(o["conn"]),
        ts=ts,
        state=PresenceState(o["state"]),
        serves=tuple(o.get("serves", ())),
    )


def _build_ack(o: _JsonObj, device_id: str, ts: int) -> CommandAck:
    err = o.get("error")
    return CommandAck(
        device_id=device_id,
        boot=_int(o["boot"]),
        seq=_int(o["seq"]),
        ts=ts,
        cmd_id=o["cmd_id"],
        status=AckStatus(o["status"]),
        error=None if err is None else AckError(err),
        detail=o.get("detail"),
        hist=o.get("hist") is True,
    )


def _command_body(name: CommandName, a: _JsonObj) -> CommandBody:
    if name is CommandName.REBIRTH:
        return Rebirth()
    if name is CommandName.RESEND:
        return Resend(boot=_int(a["boot"]), from_seq=_int(a["from_seq"]), to_seq=_int(a["to_seq"]))
    if name is CommandName.SET_CONFIG:
        return SetConfig(config=_config(a["config"]))
    if name is CommandName.RESET_CARTRIDGE:
        k = a.get("kind")
        return ResetCartridge(
            slot=_int(a["slot"]),
            kind=None if k is None else CartridgeKind(k),
            capacity_l=a.get("capacity_l"),
            capacity_days=_opt_int(a, "capacity_days"),
            serial=a.get("serial"),
        )
    return TimeSync()


def _build_command(o: _JsonObj, device_id: str, ts: int) -> Command:
    return Command(
        device_id=device_id,
        id=o["id"],
        ts=ts,
        expires_at=_int(o["expires_at"]),
        body=_command_body(CommandName(o["cmd"]), o["args"]),
    )


_BUILDERS: Final[Mapping[MessageKind, Callable[[_JsonObj, str, int], Message]]] = {
    MessageKind.TELEMETRY: _build_telemetry,
    MessageKind.BIRTH: _build_birth,
    MessageKind.EVENT: _build_event,
    MessageKind.STATUS: _build_status,
    MessageKind.ACK: _build_ack,
    MessageKind.CMD: _build_command,
}


# --------------------------------------------------------------------------
# encode


def _put(d: _JsonObj, key: str, value: object) -> None:
    if value is not None:
        d[key] = value


def _metrics_obj(m: Metrics) -> _JsonObj:
    return {k: v for k, v in zip(METRIC_NAMES, m, strict=True) if v is not None}


def _config_obj(c: Config) -> _JsonObj:
    d: _JsonObj = {"version": c.version}
    for k in _CONFIG_FIELDS:
        _put(d, k, getattr(c, k))
    return d


def _envelope(msg: Message) -> _JsonObj:
    return {"v": PROTOCOL_VERSION, "device_id": msg.device_id}


def to_wire(msg: Message) -> _JsonObj:
    """The JSON object of ``msg`` (before serialisation), keys in spec order."""
    d = _envelope(msg)
    if isinstance(msg, Telemetry):
        d.update(boot=msg.boot, seq=msg.seq, ts=msg.ts)
        if msg.hist:
            d["hist"] = True
        d["metrics"] = _metrics_obj(msg.metrics)
        if msg.stages:
            d["stages"] = [s._asdict() for s in msg.stages]
    elif isinstance(msg, Birth):
        d.update(boot=msg.boot, conn=msg.conn, seq=msg.seq, ts=msg.ts, fw=msg.fw)
        _put(d, "hw", msg.hw)
        d["model"] = msg.model
        _put(d, "serial", msg.serial)
        d["machine_class"] = msg.machine_class.value
        d["config"] = _config_obj(msg.config)
        stages = []
        for s in msg.stages:
            sd: _JsonObj = {
                "slot": s.slot,
                "kind": s.kind.value,
                "capacity_l": s.capacity_l,
                "capacity_days": s.capacity_days,
                "litres_used": s.litres_used,
                "days_in_service": s.days_in_service,
            }
            _put(sd, "installed_at", s.installed_at)
            _put(sd, "serial", s.serial)
            stages.append(sd)
        d["stages"] = stages
        d["metrics"] = _metrics_obj(msg.metrics)
        d["faults"] = [f.value for f in msg.faults]
    elif isinstance(msg, Event):
        d.update(boot=msg.boot, seq=msg.seq, ts=msg.ts)
        if msg.hist:
            d["hist"] = True
        d["event"] = msg.body.event.value
        _event_fields(d, msg.body)
        _put(d, "detail", msg.detail)
    elif isinstance(msg, Status):
        d.update(boot=msg.boot, conn=msg.conn, ts=msg.ts, state=msg.state.value)
        if msg.serves:
            d["serves"] = list(msg.serves)
    elif isinstance(msg, CommandAck):
        d.update(boot=msg.boot, seq=msg.seq, ts=msg.ts)
        if msg.hist:
            d["hist"] = True
        d.update(cmd_id=msg.cmd_id, status=msg.status.value)
        _put(d, "error", None if msg.error is None else msg.error.value)
        _put(d, "detail", msg.detail)
    else:
        d.update(id=msg.id, ts=msg.ts, expires_at=msg.expires_at, cmd=msg.body.name.value)
        d["args"] = _command_args(msg.body)
    return d


def _event_fields(d: _JsonObj, b: EventBody) -> None:
    if isinstance(b, FaultRaised | FaultCleared):
        d["code"] = b.code.value
        _put(d, "value", b.value)
    elif isinstance(b, DoorOpened | DoorClosed):
        _put(d, "maintenance", b.maintenance)
    elif isinstance(b, Payment):
        d.update(method=b.method.value, amount=b.amount, currency=b.currency)
        _put(d, "volume_l", b.volume_l)
        d["result"] = b.result.value
        _put(d, "error_code", b.error_code)
    elif isinstance(b, Reboot):
        d["reason"] = b.reason.value
        _put(d, "prev_uptime", b.prev_uptime)
    else:
        d.update(
            slot=b.slot, kind=b.kind.value, capacity_l=b.capacity_l, capacity_days=b.capacity_days
        )
        _put(d, "serial", b.serial)
        _put(d, "source", b.source)


def _command_args(b: CommandBody) -> _JsonObj:
    if isinstance(b, Resend):
        return {"boot": b.boot, "from_seq": b.from_seq, "to_seq": b.to_seq}
    if isinstance(b, SetConfig):
        return {"config": _config_obj(b.config)}
    if isinstance(b, ResetCartridge):
        a: _JsonObj = {"slot": b.slot}
        _put(a, "kind", None if b.kind is None else b.kind.value)
        _put(a, "capacity_l", b.capacity_l)
        _put(a, "capacity_days", b.capacity_days)
        _put(a, "serial", b.serial)
        return a
    return {}


def encode(msg: Message, *, validate: bool = True) -> bytes:
    """Serialise ``msg`` to the exact payload bytes (compact UTF-8 JSON).

    With ``validate`` (the default) the result is checked against the schema,
    so a simulator can never put a message on the wire that ingest would
    quarantine for its shape; EncodeError says what is wrong. NaN and
    infinities are always refused: JSON cannot carry them.
    """
    d = to_wire(msg)
    if _has_non_finite(d):
        raise EncodeError(f"{msg.kind.value}: non-finite number")
    if validate and not _schemas.validator(msg.kind).is_valid(d):
        raise EncodeError(f"{msg.kind.value}: {_schemas.first_error(msg.kind, d)}")
    out = orjson.dumps(d)
    if len(out) > max_payload_bytes(msg.kind):
        raise EncodeError(f"{msg.kind.value}: {len(out)} bytes > {max_payload_bytes(msg.kind)}")
    return out

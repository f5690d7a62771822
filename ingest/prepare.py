"""Turning a batch of raw messages into rows: decode, refuse, and sort by destination.

Everything here runs in the writer thread, once per message, so it is written for speed: the
codec does the validation; this module only picks fields into tuples in the staging tables'
column order. A message is refused into a `QuarantineRecord` and never stops its batch.

Identity and duplicates inside one batch are settled here; duplicates against what is already
stored are settled by the writer against the message key table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from firmware_protocol import (
    Birth,
    CommandAck,
    Event,
    FaultCleared,
    FaultRaised,
    Rejected,
    RejectReason,
    Status,
    Telemetry,
    decode,
    parse_topic,
)

from ingest.config import IngestConfig
from ingest.quarantine import QuarantineRecord
from ingest.session import Inbound

# Row layouts; after idx, the column order of the COPY statements in ingest/_sql.py. Times are
# in PostgreSQL's binary timestamptz unit (microseconds since 2000-01-01 UTC), jsonb values in
# its binary jsonb form (a version byte, then the text), so COPY sends them as they are.
# key:       idx, device_id, boot, seq, kind, time, received_at
# telemetry: idx, time, device_id, boot, seq, received_at, hist, *metrics, stages
# event:     idx, time, device_id, boot, seq, received_at, hist, kind, code, value, detail, body
Row = tuple[Any, ...]

PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z in microseconds since 1970


def pg_time(ms: int) -> int:
    """Milliseconds since 1970 as PostgreSQL's binary timestamptz value."""
    return ms * 1000 - PG_EPOCH_US


def pg_jsonb(value: Any) -> bytes:
    """``value`` as PostgreSQL's binary jsonb value (format version 1)."""
    return b"\x01" + orjson.dumps(value)


_EMPTY_JSONB = pg_jsonb({})

_NUL_ESCAPE = b"\\u0000"
_PRESENCE_RANK = {"online": 0, "offline": 1, "lost": 1}


@dataclass(slots=True)
class BirthRow:
    idx: int
    device_id: str
    boot: int
    conn: int
    ts_ms: int
    received_ms: int
    fw: str
    hw: str | None
    model: str
    machine_class: str
    serial: str | None
    config_version: int
    config: str
    stages: str
    faults: list[str]


@dataclass(slots=True)
class StatusRow:
    device_id: str
    boot: int
    conn: int
    ts_ms: int
    received_ms: int
    state: str
    rank: int
    serves: list[str]


@dataclass
class PreparedBatch:
    """A batch sorted by destination; ``idx`` is each message's position in the batch."""

    size: int
    payload_bound: int = 4096
    keys: list[Row] = field(default_factory=list)
    telemetry: list[Row] = field(default_factory=list)
    events: list[Row] = field(default_factory=list)
    acks: list[Row] = field(default_factory=list)
    births: list[BirthRow] = field(default_factory=list)
    statuses: list[StatusRow] = field(default_factory=list)
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    duplicates: int = 0  # within the batch, identical
    # device_id -> (newest receive ms, newest device ts ms) of the accepted messages
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)
    # idx -> (topic, payload, received_ms, device_id) of messages holding a key, to quarantine one
    # that turns out to reuse a stored key for another message
    keyed: dict[int, tuple[str, bytes, int, str]] = field(default_factory=dict)
    lags_ms: list[int] = field(default_factory=list)
    unknown_devices: set[str] = field(default_factory=set)

    def kind_counts(self) -> dict[str, int]:
        return {
            "telemetry": len(self.telemetry) - len(self.births),
            "event": len(self.events),
            "ack": len(self.acks),
            "birth": len(self.births),
            "status": len(self.statuses),
        }


class Preparer:
    """Decodes batches for one worker; ``is_known`` answers from the device cache."""

    def __init__(self, config: IngestConfig, is_known: Callable[[str], bool]) -> None:
        self._config = config
        self._is_known = is_known

    def prepare(self, batch: list[Inbound], lag_samples: int = 32) -> PreparedBatch:
        cfg = self._config
        out = PreparedBatch(size=len(batch), payload_bound=cfg.quarantine_payload_bytes)
        keys_seen: dict[tuple[str, int, int], tuple[str, int]] = {}
        seen = out.seen
        step = max(1, len(batch) // lag_samples)
        bound = cfg.quarantine_payload_bytes
        is_known = self._is_known
        quarantine = out.quarantine.append

        for idx, (_gen, _mid, topic, payload, received_ms) in enumerate(batch):
            # The device id is on the topic: an unknown device is refused before decoding.
            try:
                topic_device, _kind = parse_topic(topic)
            except Rejected as exc:
                quarantine(
                    _record(received_ms, topic, None, exc.reason, exc.detail, payload, bound)
                )
                continue
            if not is_known(topic_device):
                out.unknown_devices.add(topic_device)
                quarantine(
                    _record(
                        received_ms,
                        topic,
                        topic_device,
                        RejectReason.UNKNOWN_DEVICE,
                        f"{topic_device!r} is not in the equipment ledger",
                        payload,
                        bound,
                    )
                )
                continue
            try:
                msg = decode(
                    topic,
                    payload,
                    received_at_ms=received_ms,
                    max_future_skew_ms=cfg.max_future_skew_ms,
                    max_live_age_ms=cfg.max_live_age_ms,
                    max_hist_age_ms=cfg.max_hist_age_ms,
                )
            except Rejected as exc:
                quarantine(
                    _record(
                        received_ms, topic, topic_device, exc.reason, exc.detail, payload, bound
                    )
                )
                continue
            if _NUL_ESCAPE in payload:
                # Valid JSON, but PostgreSQL text and jsonb cannot hold U+0000.
                quarantine(
                    _record(
                        received_ms,
                        topic,
                        topic_device,
                        RejectReason.SCHEMA_VIOLATION,
                        "a string holds U+0000, which the store cannot keep",
                        payload,
                        bound,
                    )
                )
                continue

            device_id = msg.device_id
            ts = msg.ts
            if msg.__class__ is Status:
                assert isinstance(msg, Status)
                out.statuses.append(
                    StatusRow(
                        device_id,
                        msg.boot,
                        msg.conn,
                        ts,
                        received_ms,
                        msg.state.value,
                        _PRESENCE_RANK[msg.state.value],
                        list(msg.serves),
                    )
                )
                _saw(seen, device_id, received_ms, ts)
                continue

            assert isinstance(msg, Telemetry | Event | CommandAck | Birth)
            kind = msg.kind.value
            key = (device_id, msg.boot, msg.seq)
            earlier = keys_seen.get(key)
            if earlier is not None:
                if earlier == (kind, ts):
                    out.duplicates += 1
                else:
                    quarantine(
                        _record(
                            received_ms,
                            topic,
                            device_id,
                            RejectReason.DUPLICATE,
                            f"seq {msg.seq} of boot {msg.boot} already names another message "
                            f"({earlier[0]} at {earlier[1]})",
                            payload,
                            bound,
                        )
                    )
                continue
            keys_seen[key] = (kind, ts)
            time_us = ts * 1000 - PG_EPOCH_US
            received_us = received_ms * 1000 - PG_EPOCH_US
            out.keys.append((idx, device_id, msg.boot, msg.seq, kind, time_us, received_us))
            out.keyed[idx] = (topic, payload, received_ms, device_id)
            _saw(seen, device_id, received_ms, ts)
            if idx % step == 0:
                out.lags_ms.append(received_ms - ts)

            if msg.__class__ is Telemetry:
                assert isinstance(msg, Telemetry)
                out.telemetry.append(
                    (
                        idx,
                        time_us,
                        device_id,
                        msg.boot,
                        msg.seq,
                        received_us,
                        msg.hist,
                        *msg.metrics,
                        _stages_jsonb(msg.stages),
                    )
                )
            elif msg.__class__ is Event:
                assert isinstance(msg, Event)
                body = msg.body
                code = value = None
                if isinstance(body, FaultRaised | FaultCleared):
                    code, value = body.code.value, body.value
                    body_json = _EMPTY_JSONB
                else:
                    body_json = _body_jsonb(body)
                out.events.append(
                    (
                        idx,
                        time_us,
                        device_id,
                        msg.boot,
                        msg.seq,
                        received_us,
                        msg.hist,
                        body.event.value,
                        code,
                        value,
                        msg.detail,
                        body_json,
                    )
                )
            elif msg.__class__ is CommandAck:
                assert isinstance(msg, CommandAck)
                out.acks.append(
                    (
                        idx,
                        device_id,
                        msg.boot,
                        msg.seq,
                        ts,
                        received_ms,
                        msg.hist,
                        msg.cmd_id,
                        msg.status.value,
                        None if msg.error is None else msg.error.value,
                        msg.detail,
                    )
                )
            else:
                assert isinstance(msg, Birth)
                # The birth's readings are a reading like any other.
                out.telemetry.append(
                    (
                        idx,
                        time_us,
                        device_id,
                        msg.boot,
                        msg.seq,
                        received_us,
                        False,
                        *msg.metrics,
                        _birth_stages_jsonb(msg.stages),
                    )
                )
                out.births.append(
                    BirthRow(
                        idx=idx,
                        device_id=device_id,
                        boot=msg.boot,
                        conn=msg.conn,
                        ts_ms=ts,
                        received_ms=received_ms,
                        fw=msg.fw,
                        hw=msg.hw,
                        model=msg.model,
                        machine_class=msg.machine_class.value,
                        serial=msg.serial,
                        config_version=msg.config.version,
                        config=orjson.dumps(_drop_none(dataclasses.asdict(msg.config))).decode(),
                        stages=orjson.dumps(
                            [_drop_none(dataclasses.asdict(s)) for s in msg.stages]
                        ).decode(),
                        faults=[f.value for f in msg.faults],
                    )
                )
        return out


def _saw(seen: dict[str, tuple[int, int]], device_id: str, received_ms: int, ts: int) -> None:
    prev = seen.get(device_id)
    if prev is None:
        seen[device_id] = (received_ms, ts)
    else:
        seen[device_id] = (max(prev[0], received_ms), max(prev[1], ts))


def _record(
    received_ms: int,
    topic: str,
    device_id: str | None,
    reason: RejectReason,
    detail: str,
    payload: bytes,
    bound: int,
) -> QuarantineRecord:
    return QuarantineRecord.of(
        received_ms=received_ms,
        topic=topic.replace("\x00", "\\u0000"),
        device_id=device_id,
        reason=reason,
        detail=detail.replace("\x00", "\\u0000"),
        payload=payload,
        bound=bound,
    )


def _stages_jsonb(stages: tuple[Any, ...]) -> bytes | None:
    if not stages:
        return None
    # By position: a namedtuple's _asdict costs twice as much, for every telemetry message.
    return pg_jsonb([{"slot": s[0], "litres_used": s[1], "days_in_service": s[2]} for s in stages])


def _birth_stages_jsonb(stages: tuple[Any, ...]) -> bytes | None:
    # Telemetry keeps the usage counters of each slot; the birth's full description goes to
    # device_state.
    if not stages:
        return None
    usage = [
        {"slot": s.slot, "litres_used": s.litres_used, "days_in_service": s.days_in_service}
        for s in stages
    ]
    return pg_jsonb(usage)


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _body_jsonb(body: Any) -> bytes:
    return pg_jsonb(_drop_none(dataclasses.asdict(body)))

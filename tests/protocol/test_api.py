"""The public face of firmware_protocol: what ingest and the simulators import."""

from __future__ import annotations

import math
import pickle
from dataclasses import replace

import firmware_protocol as fp
import hypothesis.strategies as st
import pytest
from hypothesis import given, settings


def test_all_names_exist() -> None:
    for name in fp.__all__:
        assert hasattr(fp, name), name
    assert sorted(fp.__all__) == sorted(set(fp.__all__))


def _telemetry() -> fp.Telemetry:
    return fp.Telemetry(
        device_id="pur-0001",
        boot=7,
        seq=12,
        ts=1_764_300_000_000,
        metrics=fp.Metrics(tds_in=312.5, tds_out=11.2, tank_level=82.0, leak=False, rssi=-71),
        stages=(fp.StageUsage(1, 1200.5, 40.2),),
    )


def test_telemetry_round_trip() -> None:
    msg = _telemetry()
    topic = fp.topic_for(msg)
    assert topic == "aquafleet/v1/pur-0001/telemetry"
    assert fp.parse_topic(topic) == ("pur-0001", fp.MessageKind.TELEMETRY)
    assert fp.decode(topic, fp.encode(msg), received_at_ms=msg.ts + 1000) == msg


# -- models built by a simulator survive encode and decode -------------------

_finite = st.floats(min_value=0, max_value=100, allow_nan=False, allow_infinity=False)


@st.composite
def _telemetry_models(draw: st.DrawFn) -> fp.Telemetry:
    values: dict[str, object] = {}
    for name in fp.METRIC_NAMES:
        if not draw(st.booleans()):
            continue
        if name in fp.BOOL_METRICS:
            values[name] = draw(st.booleans())
        elif name == "rssi":
            values[name] = draw(st.integers(min_value=-150, max_value=0))
        elif name in fp.INT_METRICS:
            values[name] = draw(st.integers(min_value=0, max_value=65535))
        else:
            values[name] = draw(_finite)
    slots = draw(st.lists(st.integers(min_value=1, max_value=8), max_size=8, unique=True))
    return fp.Telemetry(
        device_id=draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{2,20}", fullmatch=True)),
        boot=draw(st.integers(min_value=0, max_value=fp.UINT32_MAX)),
        seq=draw(st.integers(min_value=0, max_value=fp.UINT32_MAX)),
        ts=1_764_300_000_000,
        metrics=fp.Metrics(**values),  # type: ignore[arg-type]
        stages=tuple(fp.StageUsage(s, draw(_finite), draw(_finite)) for s in slots),
        hist=draw(st.booleans()),
    )


@settings(max_examples=300, deadline=None)
@given(_telemetry_models())
def test_generated_telemetry_round_trips(msg: fp.Telemetry) -> None:
    payload = fp.encode(msg)
    assert fp.decode(fp.topic_for(msg), payload, received_at_ms=msg.ts) == msg


def test_encode_refuses_what_the_wire_cannot_carry() -> None:
    msg = _telemetry()
    with pytest.raises(fp.EncodeError, match="non-finite"):
        fp.encode(replace(msg, metrics=fp.Metrics(tds_in=math.nan)))
    with pytest.raises(fp.EncodeError, match="tank_level"):
        fp.encode(replace(msg, metrics=fp.Metrics(tank_level=150.0)))
    # validate=False is for tests that need a bad message on purpose.
    bad = fp.encode(replace(msg, metrics=fp.Metrics(tank_level=150.0)), validate=False)
    with pytest.raises(fp.Rejected) as info:
        fp.decode(fp.topic_for(msg), bad, received_at_ms=msg.ts)
    assert info.value.reason is fp.RejectReason.SCHEMA_VIOLATION
    assert "tank_level" in info.value.detail


def test_every_model_encodes_to_its_topic() -> None:
    event = fp.Event(
        device_id="vend-0042",
        boot=1,
        seq=3,
        ts=1_764_300_000_000,
        body=fp.Payment(
            method=fp.PaymentMethod.CARD,
            amount=250,
            currency="EUR",
            result=fp.PaymentResult.OK,
        ),
    )
    assert event.event is fp.EventKind.PAYMENT
    assert fp.topic_for(event) == "aquafleet/v1/vend-0042/event"
    cmd = fp.Command(
        device_id="vend-0042",
        id="c-1",
        ts=1_764_300_000_000,
        expires_at=1_764_300_060_000,
        body=fp.TimeSync(),
    )
    assert cmd.name is fp.CommandName.TIME_SYNC
    assert not cmd.expired(1_764_400_000_000)  # time_sync ignores the device clock
    resend = replace(cmd, body=fp.Resend(boot=1, from_seq=2, to_seq=5))
    assert resend.expired(1_764_300_060_000)
    decoded = fp.decode(fp.topic_for(resend), fp.encode(resend), received_at_ms=0)
    assert decoded == resend


def test_rejected_is_picklable_and_carries_reason() -> None:
    err = fp.Rejected(fp.RejectReason.CLOCK_PAST, "too old")
    again = pickle.loads(pickle.dumps(err))
    assert (again.reason, again.detail) == (err.reason, err.detail)
    assert isinstance(err, fp.ProtocolError)


def test_parse_topic_rejects() -> None:
    for topic in ("aquafleet/v1/ab/telemetry", "aquafleet/v1/pur-0001", "x/v1/pur-0001/birth"):
        with pytest.raises(fp.Rejected) as info:
            fp.parse_topic(topic)
        assert info.value.reason is fp.RejectReason.BAD_TOPIC
    with pytest.raises(fp.Rejected) as info:
        fp.parse_topic("aquafleet/v2/pur-0001/birth")
    assert info.value.reason is fp.RejectReason.UNSUPPORTED_VERSION

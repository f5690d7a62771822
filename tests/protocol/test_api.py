"""The public face of firmware_protocol: what ingest and the simulators import."""

from __future__ import annotations

import firmware_protocol as fp


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

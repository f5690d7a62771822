"""SPEC.md, the schemas and the Python tables say the same thing."""

from __future__ import annotations

import json
import re

import firmware_protocol as fp
import orjson

from .vectors import ROOT

SPEC = (ROOT / "SPEC.md").read_text(encoding="utf-8")
SCHEMAS = {p.name: json.loads(p.read_text()) for p in (ROOT / "schemas").glob("*.schema.json")}
COMMON = SCHEMAS["common.schema.json"]["$defs"]


def _session_blocks() -> list[tuple[str, str, bytes]]:
    blocks = re.findall(r"```mqtt\n(.*?)\n```", SPEC, flags=re.S)
    out = []
    for block in blocks:
        header, _, body = block.partition("\n")
        verb, topic = header.split()[:2]
        out.append((verb, topic, orjson.dumps(orjson.loads(body))))
    return out


def test_worked_session_decodes_and_is_coherent() -> None:
    blocks = _session_blocks()
    assert len(blocks) > 20
    last_ts = max(orjson.loads(body)["ts"] for _, _, body in blocks)
    msgs = [fp.decode(topic, body, received_at_ms=last_ts + 1000) for _, topic, body in blocks]
    kinds = {type(m) for m in msgs}
    assert kinds == {fp.Birth, fp.Telemetry, fp.Event, fp.Status, fp.Command, fp.CommandAck}
    data = [m for m in msgs if isinstance(m, fp.Birth | fp.Telemetry | fp.Event | fp.CommandAck)]
    # Every data message of boot 7 exactly once, once replays are counted as the same message.
    assert {m.seq for m in data} == set(range(17))
    seen: set[int] = set()
    for m in data:
        if m.hist:
            # A replay repeats a number already assigned, with its original time.
            assert m.seq < max(seen)
        else:
            assert m.seq not in seen
        seen.add(m.seq)
    # Each birth's conn is the conn of the Will announced by the preceding CONNECT.
    wills = [orjson.loads(body)["conn"] for verb, _, body in blocks if verb == "WILL"]
    births = [m.conn for m in msgs if isinstance(m, fp.Birth)]
    assert wills == [1, 2]
    assert births == [1, 2, 2]
    events = {m.body.event for m in msgs if isinstance(m, fp.Event)}
    assert {fp.EventKind.FAULT_RAISED, fp.EventKind.FAULT_CLEARED} <= events
    acked = {m.cmd_id for m in msgs if isinstance(m, fp.CommandAck)}
    assert acked == {m.id for m in msgs if isinstance(m, fp.Command)}


def test_fault_table_in_spec_matches_code() -> None:
    rows = re.findall(r"^\| `([a-z_]+)` \| ([^|]+) \| (\w+) \| ([a-z, ]+) \|", SPEC, flags=re.M)
    table = {code: (meaning.strip(), sev, classes) for code, meaning, sev, classes in rows}
    for code, spec in fp.FAULT_TABLE.items():
        meaning, severity, classes = table[code.value]
        assert meaning == spec.meaning
        assert severity == spec.severity.value
        assert set(classes.split(", ")) == {c.value for c in spec.classes}
    assert set(fp.FAULT_TABLE) == set(fp.FaultCode)
    # A stray "|" inside a cell would break the table for readers.
    for line in SPEC.splitlines():
        if re.match(r"^\| `[a-z_]+` \| .* \| (device|cloud|both) \|$", line):
            assert line.count("|") == 8, line


def test_schema_enums_match_models() -> None:
    assert COMMON["faultCode"]["enum"] == [c.value for c in fp.FaultCode]
    assert COMMON["cartridgeKind"]["enum"] == [k.value for k in fp.CartridgeKind]
    assert COMMON["machineClass"]["enum"] == [k.value for k in fp.MachineClass]
    assert list(COMMON["metrics"]["properties"]) == list(fp.METRIC_NAMES)
    config_fields = [f for f in fp.Config.__dataclass_fields__]
    assert list(COMMON["config"]["properties"]) == config_fields
    event = SCHEMAS["event.schema.json"]["properties"]
    assert event["event"]["enum"] == [k.value for k in fp.EventKind]
    assert event["method"]["enum"] == [k.value for k in fp.PaymentMethod]
    assert event["result"]["enum"] == [k.value for k in fp.PaymentResult]
    assert event["reason"]["enum"] == [k.value for k in fp.RebootReason]
    ack = SCHEMAS["ack.schema.json"]["properties"]
    assert ack["status"]["enum"] == [k.value for k in fp.AckStatus]
    assert ack["error"]["enum"] == [k.value for k in fp.AckError]
    assert SCHEMAS["cmd.schema.json"]["properties"]["cmd"]["enum"] == [
        k.value for k in fp.CommandName
    ]
    status = SCHEMAS["status.schema.json"]["properties"]
    assert status["state"]["enum"] == [k.value for k in fp.PresenceState]
    for name in fp.METRIC_NAMES:
        kind = COMMON["metrics"]["properties"][name].get("type", "integer")
        if name in fp.BOOL_METRICS:
            assert kind == "boolean"
        elif name in fp.INT_METRICS:
            assert kind == "integer"
        else:
            assert kind == "number"


def test_spec_names_every_metric_and_reason() -> None:
    for name in fp.METRIC_NAMES:
        assert f"| `{name}` |" in SPEC, name
    for reason in fp.RejectReason:
        assert f"| `{reason.value}` |" in SPEC, reason
    for kind in fp.MessageKind:
        assert f"`aquafleet/v1/{{device_id}}/{kind.value}`" in SPEC, kind

"""Every vector gives its expected result in the codec and in the reference."""

from __future__ import annotations

import json
from typing import Any

import firmware_protocol as fp
import hypothesis.strategies as st
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings

from .vectors import Vector, load_vectors, reference_verdict, schema_validators

VECTORS = load_vectors()
VALID = [v for v in VECTORS if v.valid]
INVALID = [v for v in VECTORS if not v.valid]


def _ids(vs: list[Vector]) -> list[str]:
    return [v.name for v in vs]


def codec_verdict(topic: str, payload: bytes, received_at_ms: int) -> str | None:
    try:
        fp.decode(topic, payload, received_at_ms=received_at_ms)
    except fp.Rejected as exc:
        return exc.reason.value
    return None


def test_vectors_cover_every_kind_and_reason() -> None:
    assert {v.kind for v in VALID} == {k.value for k in fp.MessageKind}
    assert {v.expected_reason for v in INVALID} == {r.value for r in fp.CODEC_REASONS}
    assert all(v.expected_reason for v in INVALID)
    assert all(v.expected_reason is None for v in VALID)


@pytest.mark.parametrize("vector", VALID, ids=_ids(VALID))
def test_valid_vector_decodes_and_re_encodes(vector: Vector) -> None:
    msg = fp.decode(vector.topic, vector.payload, received_at_ms=vector.received_at_ms)
    assert fp.topic_for(msg) == vector.topic
    wire = fp.to_wire(msg)
    sent = orjson.loads(vector.payload)
    if "unknown_fields" in vector.name:
        # What the codec keeps is exactly the known part of the message.
        assert set(wire) < set(sent)
        assert {k: sent[k] for k in wire if k != "metrics"} == {
            k: v for k, v in wire.items() if k != "metrics"
        }
    else:
        assert wire == sent
        assert orjson.loads(fp.encode(msg)) == sent


@pytest.mark.parametrize("vector", INVALID, ids=_ids(INVALID))
def test_invalid_vector_rejected_with_its_reason(vector: Vector) -> None:
    with pytest.raises(fp.Rejected) as info:
        fp.decode(vector.topic, vector.payload, received_at_ms=vector.received_at_ms)
    assert info.value.reason.value == vector.expected_reason, info.value.detail
    assert info.value.detail


@pytest.mark.parametrize("vector", VECTORS, ids=_ids(VECTORS))
def test_reference_agrees_with_vector(vector: Vector) -> None:
    assert (
        reference_verdict(vector.topic, vector.payload, vector.received_at_ms)
        == vector.expected_reason
    )


_SCHEMA_LEVEL = {"schema_violation", "unsupported_version"}
_BEYOND_SCHEMA = {"identity_mismatch", "clock_future", "clock_past", "too_large"}


@pytest.mark.parametrize("vector", VECTORS, ids=_ids(VECTORS))
def test_json_schema_validator_alone(vector: Vector) -> None:
    """The schema accepts every valid vector and rejects the schema-level ones;
    the vectors rejected for identity, clock or size are schema-valid, so those
    rules are exactly what the spec adds on top of the schemas."""
    if vector.expected_reason not in _SCHEMA_LEVEL | _BEYOND_SCHEMA | {None}:
        return
    if vector.topic.startswith("aquafleet/v2/"):
        return
    kind = vector.kind
    obj = json.loads(vector.payload)
    ok = schema_validators()[kind].is_valid(obj)
    assert ok == (vector.expected_reason not in _SCHEMA_LEVEL)


# -- generated mutations of the valid vectors -------------------------------

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, 1, -1, 1.0, 2, 7.0, 0.5, 100, 101, 4294967295, 4294967296])
    | st.text(max_size=12)
    | st.sampled_from(["pur-0001", "pur-0002", "x", "", "online", "lost", "leak", "pp"])
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def _mutated(draw: st.DrawFn) -> tuple[str, bytes, int]:
    vector = draw(st.sampled_from(VALID))
    obj: Any = json.loads(vector.payload)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        node = obj
        # Walk down a random path, then replace, delete or add a member there.
        while True:
            children = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
            children = [(k, c) for k, c in children if isinstance(c, dict | list) and c]
            if not children or draw(st.booleans()):
                break
            node = draw(st.sampled_from(children))[1]
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        action = draw(st.sampled_from(["set", "delete", "add"]))
        if action == "add" and isinstance(node, dict):
            node[draw(st.text(max_size=10))] = draw(_json_values)
        elif keys:
            key = draw(st.sampled_from(keys))
            if action == "delete":
                del node[key]
            else:
                node[key] = draw(_json_values)
    payload = json.dumps(obj).encode()
    return vector.topic, payload, vector.received_at_ms


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_codec_and_reference_agree_on_mutations(case: tuple[str, bytes, int]) -> None:
    topic, payload, received = case
    verdict = reference_verdict(topic, payload, received)
    event(f"verdict: {verdict}")
    assert codec_verdict(topic, payload, received) == verdict

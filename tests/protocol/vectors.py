"""Loading the test vectors, and a reference verdict written from SPEC.md alone.

The reference uses the standard library's json and the Python ``jsonschema``
package (Draft202012Validator), both independent of the codec, which uses
orjson and jsonschema-rs. Agreement between the two on every vector and on
generated mutations is what shows the codec implements the schemas.
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]  # stubs are optional
import referencing

ROOT = Path(__file__).resolve().parents[2] / "firmware-protocol"
VECTOR_DIR = ROOT / "vectors"
SCHEMA_DIR = ROOT / "schemas"

KINDS = ("birth", "telemetry", "event", "status", "ack", "cmd")
MAX_BYTES = 16 * 1024
MAX_BIRTH_BYTES = 64 * 1024
FUTURE_SKEW_MS = 5 * 60 * 1000
LIVE_AGE_MS = 24 * 3600 * 1000
HIST_AGE_MS = 7 * 24 * 3600 * 1000
_TOPIC = re.compile(r"aquafleet/v1/([A-Za-z0-9][A-Za-z0-9_-]{2,63})/([a-z]+)")
_OTHER_VERSION = re.compile(r"aquafleet/v[0-9]{1,4}/[^/]+/[^/]+")


@dataclass(frozen=True)
class Vector:
    name: str
    valid: bool
    description: str
    topic: str
    payload: bytes
    received_at_ms: int
    expected_reason: str | None

    @property
    def kind(self) -> str:
        return self.topic.rsplit("/", 1)[-1]


def load_vectors() -> list[Vector]:
    out = []
    for sub in ("valid", "invalid"):
        for path in sorted((VECTOR_DIR / sub).glob("*.json")):
            raw = json.loads(path.read_text(encoding="utf-8"))
            if "payload_base64" in raw:
                payload = base64.b64decode(raw["payload_base64"])
            else:
                payload = raw["payload"].encode("utf-8")
            out.append(
                Vector(
                    name=f"{sub}/{path.stem}",
                    valid=sub == "valid",
                    description=raw["description"],
                    topic=raw["topic"],
                    payload=payload,
                    received_at_ms=raw["received_at_ms"],
                    expected_reason=raw.get("expected_reason"),
                )
            )
    return out


@cache
def schema_validators() -> dict[str, jsonschema.Draft202012Validator]:
    docs = [json.loads(p.read_text(encoding="utf-8")) for p in SCHEMA_DIR.glob("*.schema.json")]
    registry: referencing.Registry[Any] = referencing.Registry().with_resources(
        (d["$id"], referencing.Resource.from_contents(d)) for d in docs
    )
    by_id = {d["$id"].rsplit("/", 1)[-1]: d for d in docs}
    return {
        kind: jsonschema.Draft202012Validator(by_id[f"{kind}.schema.json"], registry=registry)
        for kind in KINDS
    }


class _NonFinite(ValueError):
    pass


def _refuse(name: str) -> float:
    raise _NonFinite(name)


def _walk(obj: Any) -> Any:
    yield obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


def _integral(x: Any) -> bool:
    return (isinstance(x, int) and not isinstance(x, bool)) or (
        isinstance(x, float) and x.is_integer()
    )


def reference_verdict(topic: str, payload: bytes, received_at_ms: int) -> str | None:
    """None when SPEC.md says accept, else the reason code it prescribes."""
    m = _TOPIC.fullmatch(topic)
    if m is None or m.group(2) not in KINDS:
        if _OTHER_VERSION.fullmatch(topic) and not topic.startswith("aquafleet/v1/"):
            return "unsupported_version"
        return "bad_topic"
    device_id, kind = m.group(1), m.group(2)
    if len(payload) > (MAX_BIRTH_BYTES if kind == "birth" else MAX_BYTES):
        return "too_large"
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8"
    try:
        obj = json.loads(text, parse_constant=_refuse)
    except _NonFinite:
        return "non_finite_number"
    except (ValueError, RecursionError):
        return "malformed_json"
    nodes = list(_walk(obj))
    if any(isinstance(n, float) and not math.isfinite(n) for n in nodes):
        return "non_finite_number"
    if any(isinstance(n, str) and re.search("[\ud800-\udfff]", n) for n in nodes):
        return "malformed_json"  # escapes that are not Unicode text
    if isinstance(obj, dict) and "v" in obj and _integral(obj["v"]) and obj["v"] != 1:
        return "unsupported_version"
    if not schema_validators()[kind].is_valid(obj):
        return "schema_violation"
    if obj["device_id"] != device_id:
        return "identity_mismatch"
    if kind == "cmd":
        return None
    if obj["ts"] > received_at_ms + FUTURE_SKEW_MS:
        return "clock_future"
    if kind != "status":
        limit = HIST_AGE_MS if obj.get("hist") is True else LIVE_AGE_MS
        if obj["ts"] < received_at_ms - limit:
            return "clock_past"
    return None

"""Building the payloads: the codec for rare messages, a fast path for telemetry.

Births, events, status and acks are built as `firmware_protocol` models and encoded by the codec
(validated against the schemas), so the simulator cannot put a shape on the wire that ingest does
not accept. Telemetry is most of the traffic; for it `telemetry_wire` builds the same JSON object
`firmware_protocol.to_wire` would (same keys, same order) straight from the fleet's arrays, which
is several times faster than building models; a test decodes and re-encodes its output with the
codec and checks the bytes are identical.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from firmware_protocol import METRIC_NAMES, Message, encode, topic_for

from simulators.sinks import Outgoing

__all__ = ["PURIFIER_METRICS", "VENDING_METRICS", "encode_wire", "from_model", "with_hist"]

_VENDING_ONLY: Final = frozenset({"payment_ok", "payment_error", "sales_count", "sales_amount"})
_PURIFIER_ONLY: Final = frozenset({"hot_temp", "cold_temp", "heater_on", "compressor_on"})
#: The metrics each class has, in the protocol's order.
PURIFIER_METRICS: Final = tuple(n for n in METRIC_NAMES if n not in _VENDING_ONLY)
VENDING_METRICS: Final = tuple(n for n in METRIC_NAMES if n not in _PURIFIER_ONLY)


def from_model(
    message: Message, sim_ms: int, *, validate: bool = True, retain: bool = False
) -> Outgoing:
    return Outgoing(
        topic=topic_for(message),
        payload=encode(message, validate=validate),
        device_id=message.device_id,
        sim_ms=sim_ms,
        retain=retain,
    )


def encode_wire(wire: dict[str, Any]) -> bytes:
    return orjson.dumps(wire)


def with_hist(wire: dict[str, Any]) -> dict[str, Any]:
    """The same data message marked as a store-and-forward replay (``hist`` after ``ts``)."""
    out: dict[str, Any] = {}
    for key, value in wire.items():
        if key == "hist":
            continue
        out[key] = value
        if key == "ts":
            out["hist"] = True
    return out

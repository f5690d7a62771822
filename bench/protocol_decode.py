"""Decode throughput of the protocol codec on the ingest hot path.

Prints messages per second for valid telemetry, a valid mix of every uplink
kind, and invalid input, each against a baseline measured in the same run on
the same payloads: bare ``orjson.loads`` (the floor any decoder pays). Ends
with one JSON line of the figures.

    PYTHONPATH=firmware-protocol/python python bench/protocol_decode.py [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from collections.abc import Callable
from pathlib import Path

import firmware_protocol as fp
import orjson

VECTORS = Path(__file__).resolve().parent.parent / "firmware-protocol" / "vectors"
Case = tuple[str, bytes, int]


def _load(sub: str) -> list[tuple[str, Case]]:
    out = []
    for path in sorted((VECTORS / sub).glob("*.json")):
        raw = json.loads(path.read_text(encoding="utf-8"))
        payload = (
            base64.b64decode(raw["payload_base64"])
            if "payload_base64" in raw
            else raw["payload"].encode()
        )
        out.append((path.stem, (raw["topic"], payload, raw["received_at_ms"])))
    return out


def _telemetry_stream(n: int) -> list[Case]:
    """n distinct telemetry messages from 100 purifiers, as a fleet sends them."""
    base = orjson.loads(dict(_load("valid"))["telemetry_purifier"][1])
    t0 = base["ts"]
    cases = []
    for i in range(n):
        device = f"pur-{i % 100:04d}"
        base.update(device_id=device, seq=i // 100, ts=t0 + i * 10)
        base["metrics"]["tank_level"] = 50.0 + (i % 50)
        topic = f"aquafleet/v1/{device}/telemetry"
        cases.append((topic, orjson.dumps(base), t0 + n * 10))
    return cases


def _rate(fn: Callable[[str, bytes, int], object], cases: list[Case], seconds: float) -> float:
    """Messages per second, best of three rounds of at least ``seconds`` / 3 each."""
    best = 0.0
    for _ in range(3):
        done = 0
        start = time.perf_counter()
        elapsed = 0.0
        while elapsed < seconds / 3:
            for topic, payload, received in cases:
                fn(topic, payload, received)
            done += len(cases)
            elapsed = time.perf_counter() - start
        best = max(best, done / elapsed)
    return best


def _baseline(_topic: str, payload: bytes, _received: int) -> object:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None


def _decode(topic: str, payload: bytes, received: int) -> object:
    try:
        return fp.decode(topic, payload, received_at_ms=received)
    except fp.Rejected as exc:
        return exc.reason


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="time per measurement")
    args = parser.parse_args()

    valid = [c for name, c in _load("valid") if not name.startswith("cmd_")]
    invalid = [c for name, c in _load("invalid") if name != "too_large"]
    suites = {
        "telemetry": _telemetry_stream(1000),
        "valid_mix": valid,
        "invalid_mix": invalid,
    }
    # The invalid mix must really be rejected and the valid ones accepted.
    assert all(isinstance(_decode(*c), fp.Message) for c in suites["telemetry"] + valid)
    assert all(isinstance(_decode(*c), fp.RejectReason) for c in invalid)

    figures: dict[str, float] = {}
    print(f"{'suite':<12} {'msgs':>5} {'orjson.loads/s':>15} {'decode/s':>10} {'ratio':>6}")
    for name, cases in suites.items():
        base = _rate(_baseline, cases, args.seconds)
        dec = _rate(_decode, cases, args.seconds)
        figures[f"{name}_decode_per_s"] = round(dec)
        figures[f"{name}_baseline_per_s"] = round(base)
        figures[f"{name}_ratio"] = round(dec / base, 3)
        print(f"{name:<12} {len(cases):>5} {base:>15,.0f} {dec:>10,.0f} {dec / base:>6.2f}")
    print(json.dumps({"bench": "protocol_decode", **figures}))


if __name__ == "__main__":
    main()

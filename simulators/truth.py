"""Ground truth: every fault and misbehaviour the simulator put into the fleet, with its times.

Written as JSON lines, one per occurrence, sorted by start time, device and name::

    {"device_id": "SIM-000003", "name": "membrane_failed", "code": "membrane_failed",
     "kind": "fault", "cause": "injected", "source": "faults[0]",
     "start": "2025-03-03T02:00:00.000Z", "end": "2025-03-03T06:00:00.000Z",
     "start_ms": 1740967200000, "end_ms": 1740981600000, "params": {"rejection": 0.6}}

``kind`` is ``fault`` (a row of the fault table) or ``misbehaviour`` (a protocol misbehaviour;
``code`` is the matching fault-table row, or null for those with none, e.g. ``duplicate``).
``cause``: ``injected`` (the scenario's faults and misbehaviours), ``batch_defect`` and
``random`` (drawn from failure rates), ``recurrence`` (came back after a repair), ``wear``
(a cartridge or lamp wearing out in the model), ``consequence`` (follows from another fault, such
as an empty tank behind a failed pump). ``end`` is null while it lasts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from firmware_protocol import FaultCode

from simulators.timespec import format_ms

__all__ = ["GroundTruth", "TruthRecord", "read_ground_truth"]


@dataclass(slots=True)
class TruthRecord:
    device_id: str
    name: str
    code: FaultCode | None
    kind: str
    cause: str
    source: str
    start_ms: int
    end_ms: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "name": self.name,
            "code": None if self.code is None else self.code.value,
            "kind": self.kind,
            "cause": self.cause,
            "source": self.source,
            "start": format_ms(self.start_ms),
            "end": None if self.end_ms is None else format_ms(self.end_ms),
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "params": dict(self.params),
        }


class GroundTruth:
    """Collects occurrences as they start and end; `write` stores them as JSON lines."""

    def __init__(self) -> None:
        self.records: list[TruthRecord] = []
        self._open: dict[tuple[str, str], TruthRecord] = {}

    def start(self, record: TruthRecord) -> None:
        key = (record.device_id, record.name)
        if key in self._open:
            return  # already under way: one occurrence, not two
        self._open[key] = record
        self.records.append(record)

    def end(self, device_id: str, name: str, end_ms: int) -> TruthRecord | None:
        record = self._open.pop((device_id, name), None)
        if record is not None:
            record.end_ms = end_ms
        return record

    def is_open(self, device_id: str, name: str) -> bool:
        return (device_id, name) in self._open

    def open_names(self, device_id: str) -> list[str]:
        return [name for (device, name) in self._open if device == device_id]

    def __iter__(self) -> Iterator[TruthRecord]:
        return iter(self.sorted())

    def __len__(self) -> int:
        return len(self.records)

    def sorted(self) -> list[TruthRecord]:
        return sorted(self.records, key=lambda r: (r.start_ms, r.device_id, r.name))

    def lines(self) -> Iterable[bytes]:
        for record in self.sorted():
            yield orjson.dumps(record.to_json(), option=orjson.OPT_SORT_KEYS) + b"\n"

    def write(self, path: Path) -> None:
        path.write_bytes(b"".join(self.lines()))


def read_ground_truth(path: Path) -> list[dict[str, Any]]:
    """The records of a ground-truth file, as dicts (for tests and evaluation scripts)."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]

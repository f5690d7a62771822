"""Turning a scenario into a timeline: which machine gets what, when.

Selections (a share, a count) and failure times drawn from rates are random but seeded by the
run's seed and the item's position in the scenario, so the same scenario picks the same machines.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from firmware_protocol import FAULT_TABLE, FaultCode

from simulators.errors import ScenarioError
from simulators.ledger import MachineSpec
from simulators.scenario import Injection, RepairAction, Scenario, Selector, parse_scenario
from simulators.timespec import When

__all__ = ["Planned", "Timeline", "select_devices"]

_YEAR_MS = 365.25 * 86_400_000


def select_devices(
    selector: Selector, machines: Sequence[MachineSpec], *, seed: int, salt: int, key: str
) -> list[int]:
    """Indices of the machines a selector names, in fleet order."""
    if selector.devices:
        index = {m.device_id: i for i, m in enumerate(machines)}
        chosen = []
        for k, device_id in enumerate(selector.devices):
            if device_id not in index:
                raise ScenarioError("<scenario>", f"{key}.devices[{k}]", f"no machine {device_id}")
            chosen.append(index[device_id])
        return chosen
    candidates = [
        i
        for i, m in enumerate(machines)
        if (selector.machine_class is None or m.machine_class is selector.machine_class)
        and (selector.lot is None or m.hardware_lot == selector.lot)
        and (selector.site is None or m.site_id == selector.site)
    ]
    if selector.count is not None:
        wanted = min(selector.count, len(candidates))
    else:
        wanted = round((selector.share or 0.0) * len(candidates))
    rng = np.random.default_rng([seed, 0x5E1EC7, salt])
    picked = rng.choice(len(candidates), size=wanted, replace=False).tolist() if wanted else []
    return sorted(candidates[int(p)] for p in picked)


@dataclass(frozen=True, slots=True)
class Planned:
    """One occurrence to start on one machine."""

    injection: Injection
    device: int
    cause: str


@dataclass(order=True, slots=True)
class _Entry:
    time_ms: int
    order: int
    what: str = field(compare=False)  # "start", "end", "repair"
    item: Any = field(compare=False)


class Timeline:
    """A time-ordered queue of starts, ends and repairs; ties keep insertion order."""

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._order = 0

    def add(self, time_ms: int, what: str, item: Any) -> None:
        self._order += 1
        heapq.heappush(self._heap, _Entry(time_ms, self._order, what, item))

    def due(self, until_ms: int) -> list[tuple[int, str, Any]]:
        out = []
        while self._heap and self._heap[0].time_ms <= until_ms:
            entry = heapq.heappop(self._heap)
            out.append((entry.time_ms, entry.what, entry.item))
        return out

    def __len__(self) -> int:
        return len(self._heap)


def plan(
    scenario: Scenario,
    machines: Sequence[MachineSpec],
    *,
    seed: int,
    start_ms: int,
    horizon_ms: int,
    timeline: Timeline,
    device_index: Mapping[str, int],
) -> None:
    """Put every start and repair of the scenario on the timeline."""
    for salt, injection in enumerate(scenario.injections):
        at = injection.at.resolve(start_ms)
        for device in select_devices(
            injection.select, machines, seed=seed, salt=salt, key=injection.key
        ):
            if injection.code is not None and injection.misbehaviour is None:
                spec = FAULT_TABLE[injection.code]
                if machines[device].machine_class not in spec.classes:
                    continue  # a heater fault on a machine with no heater: nothing to inject
            timeline.add(at, "start", Planned(injection, device, "injected"))
    for k, defect in enumerate(scenario.batch_defects):
        rng = np.random.default_rng([seed, 0xBA7C, k])
        n = len(machines)
        in_lot = np.array([m.hardware_lot == defect.lot for m in machines])
        rate = defect.base_rate_per_year * np.where(in_lot, defect.multiplier, 1.0)
        with np.errstate(divide="ignore"):
            wait_ms = rng.exponential(1.0, n) / rate * _YEAR_MS
        applicable = np.array(
            [m.machine_class in FAULT_TABLE[defect.code].classes for m in machines]
        )
        hit = np.nonzero(applicable & (wait_ms <= horizon_ms - start_ms))[0]
        injection = Injection(
            key=defect.key,
            name=defect.code.value,
            code=defect.code,
            misbehaviour=None,
            select=Selector(),
            at=When(offset_ms=0),
            duration_ms=None,
            recur_after_ms=None,
            params=_default_params(defect.code),
        )
        for device in hit.tolist():
            cause = "batch_defect" if in_lot[device] else "random"
            timeline.add(
                start_ms + int(wait_ms[device]), "start", Planned(injection, device, cause)
            )
    for repair in scenario.repairs:
        if repair.device_id not in device_index:
            raise ScenarioError("<scenario>", "repairs", f"no machine {repair.device_id}")
        timeline.add(repair.at.resolve(start_ms) if repair.at else start_ms, "repair", repair)


def _default_params(code: FaultCode) -> Mapping[str, Any]:
    """The parameters a fault has when a scenario gives none."""
    doc = {"faults": [{"fault": code.value, "count": 1, "at": 0}]}
    return parse_scenario(doc).faults[0].params


def repair_codes(repair: RepairAction, open_names: Sequence[str]) -> list[str]:
    if repair.all_faults:
        return list(open_names)
    return [repair.code.value] if repair.code is not None else []

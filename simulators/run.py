"""Running a simulation end to end: repairs from a file, ground truth to a file, progress."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import orjson

from simulators.errors import ScenarioError
from simulators.progress import Progress
from simulators.scenario import RepairAction, parse_repair, read_document
from simulators.simulation import RunStats, Simulation, SimulationConfig
from simulators.sinks import Sink
from simulators.truth import GroundTruth

__all__ = ["RepairFeed", "run_simulation"]

_LIST_SUFFIXES = (".yaml", ".yml", ".toml", ".json")


class RepairFeed:
    """Repair actions from a file.

    A YAML/TOML/JSON file holds a list (or ``repairs:`` list) read once at the start. Any other
    file is JSON lines, one repair per line, read as it grows: another program (a dispatcher, a
    technician's app, a test) appends lines while the simulation runs. A line without ``at``
    takes effect at the next tick.
    """

    def __init__(self, path: Path, *, timezone: str = "Asia/Shanghai") -> None:
        self.path = path
        self.timezone = timezone
        self._offset = 0
        self._line = 0
        self._once = path.suffix.lower() in _LIST_SUFFIXES

    def poll(self) -> list[RepairAction]:
        if self._once:
            if self._offset:
                return []
            self._offset = 1
            document = read_document(self.path)
            if isinstance(document, dict):
                document = document.get("repairs", [])
            if not isinstance(document, list):
                raise ScenarioError(str(self.path), "", "must be a list of repairs")
            return [
                parse_repair(item, source=f"{self.path}: [{k}]", timezone=self.timezone)
                for k, item in enumerate(document)
            ]
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []  # no complete line yet
        self._offset += end + 1
        out = []
        for raw in data[: end + 1].splitlines():
            self._line += 1
            if not raw.strip():
                continue
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ScenarioError(
                    str(self.path), f"line {self._line}", f"not JSON: {exc}"
                ) from exc
            out.append(
                parse_repair(item, source=f"{self.path}: line {self._line}", timezone=self.timezone)
            )
        return out


def run_simulation(
    config: SimulationConfig,
    sink: Sink,
    *,
    speed: float | None = None,
    stop: threading.Event | None = None,
    ground_truth: Path | None = None,
    repairs: Path | None = None,
    progress: Progress | None = None,
    on_tick: Callable[[Simulation], None] | None = None,
    timezone: str = "Asia/Shanghai",
) -> RunStats:
    """Run ``config`` into ``sink``; the ground truth is written even if the run is cut short."""
    truth = GroundTruth()
    sim = Simulation(config, sink, truth=truth)
    feed = RepairFeed(repairs, timezone=timezone) if repairs is not None else None
    if feed is not None:
        for action in feed.poll():
            sim.repair(action)

    def each_tick(s: Simulation) -> None:
        if feed is not None:
            for action in feed.poll():
                s.repair(action)
        if progress is not None:
            progress(s)
        if on_tick is not None:
            on_tick(s)

    try:
        return sim.run(speed=speed, stop=stop, on_tick=each_tick)
    finally:
        if progress is not None:
            progress.close()
        if ground_truth is not None:
            truth.write(ground_truth)

"""A one-line live summary on a terminal; nothing at all when the output is not a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from simulators.simulation import Simulation
from simulators.timespec import format_ms

__all__ = ["Progress"]

_REFRESH_S = 0.25
_BAR = 20


class Progress:
    """Call with the simulation after each tick; `close` ends the line."""

    def __init__(self, stream: TextIO | None = None, *, force: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = force or self.stream.isatty()
        self._t0 = time.monotonic()
        self._last = 0.0
        self._last_messages = 0
        self._last_t = self._t0
        self._rate = 0.0
        self._drawn = False

    def __call__(self, sim: Simulation) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < _REFRESH_S and not sim.done:
            return
        stats = sim.stats
        dt = now - self._last_t
        if dt > 0:
            self._rate = (stats.messages - self._last_messages) / dt
        self._last, self._last_t, self._last_messages = now, now, stats.messages
        end = sim.config.end_ms
        if end is not None:
            share = (sim.now_ms - sim.config.start_ms) / max(end - sim.config.start_ms, 1)
            filled = round(share * _BAR)
            bar = f"[{'#' * filled}{'-' * (_BAR - filled)}] {share:4.0%} "
        else:
            bar = ""
        line = (
            f"\r{bar}{format_ms(sim.now_ms)[:16]} | {self._rate:,.0f} msg/s | "
            f"online {sim.online}/{sim.n} | faults injected {stats.faults_started} "
        )
        self.stream.write(line)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()

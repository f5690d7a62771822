"""Prometheus metrics of ingest, and the plain counters the in-process API reads.

Each worker owns an `IngestMetrics` on a registry of its own, so several workers in one process
(the demo, tests) never share or clash. With ``--workers N`` the workers are processes and the
supervisor serves their sum through prometheus_client's multiprocess mode.

Per-message costs are kept off the hot path: counters move once per batch, and ingest lag is
observed on a bounded sample of each batch.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_PREFIX = "aquafleet_ingest"

# Batches go from one message (idle fleet) to the batch bound (backlog).
_BATCH_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)
_COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Lag spans milliseconds (live) to days (a broker backlog, store-and-forward replays).
_LAG_BUCKETS = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0, 604800.0,
)  # fmt: skip
LAG_SAMPLES_PER_BATCH = 32


@dataclass
class IngestCounters:
    """Totals since the worker started; read them through `IngestWorker.counters()`."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    batches: int = 0
    reconnects: int = 0
    inflight: int = 0
    db_errors: int = 0
    gaps_detected: int = 0
    resends_requested: int = 0
    permanent_gaps: int = 0
    boot_counter_resets: int = 0

    def copy(self) -> IngestCounters:
        return IngestCounters(**{f.name: getattr(self, f.name) for f in fields(self)})


class IngestMetrics:
    """The metrics of one worker, and their plain-int mirror."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.counters = IngestCounters()
        self._lock = threading.Lock()
        r = self.registry
        self.received = Counter(
            f"{_PREFIX}_messages_received", "Messages taken from the broker", registry=r
        )
        self.stored = Counter(
            f"{_PREFIX}_messages_stored", "Messages committed to the database", ["kind"], registry=r
        )
        self.duplicates = Counter(
            f"{_PREFIX}_duplicates",
            "Messages already stored (redelivery, replay, device retry), dropped",
            registry=r,
        )
        self.quarantined = Counter(
            f"{_PREFIX}_messages_quarantined", "Messages refused, by reason", ["reason"], registry=r
        )
        self.batch_size = Histogram(
            f"{_PREFIX}_batch_messages",
            "Messages per committed batch",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            f"{_PREFIX}_commit_seconds",
            "Time to write and commit one batch",
            buckets=_COMMIT_BUCKETS,
            registry=r,
        )
        self.lag_seconds = Histogram(
            f"{_PREFIX}_lag_seconds",
            "Receive time minus device time (a sample of each batch)",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.reconnects = Counter(
            f"{_PREFIX}_broker_reconnects", "Connections to the broker after the first", registry=r
        )
        self.db_errors = Counter(
            f"{_PREFIX}_database_errors", "Batches that failed and were retried", registry=r
        )
        self.inflight = Gauge(
            f"{_PREFIX}_inflight_messages",
            "Messages received and not yet acknowledged",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.gaps = Counter(
            f"{_PREFIX}_sequence_gaps",
            "Sequence gaps confirmed after the reorder window",
            registry=r,
        )
        self.resends = Counter(
            f"{_PREFIX}_resends_requested", "Resend commands queued for devices", registry=r
        )
        self.permanent_gaps = Counter(
            f"{_PREFIX}_permanent_gaps",
            "Sequence gaps still open after the device answered the resend (telemetry_gap)",
            registry=r,
        )
        self.boot_counter_resets = Counter(
            f"{_PREFIX}_boot_counter_resets",
            "Births whose boot went below the device's highest: flagged for service",
            registry=r,
        )

    # Called by the writer thread (once per batch) and the session thread; the lock keeps the
    # plain counters consistent for readers in other threads.

    def batch_committed(
        self,
        *,
        received: int,
        stored_by_kind: dict[str, int],
        duplicates: int,
        quarantined_by_reason: dict[str, int],
        commit_s: float,
        lags_s: list[float],
        boot_counter_resets: int = 0,
    ) -> None:
        stored = sum(stored_by_kind.values())
        quarantined = sum(quarantined_by_reason.values())
        self.received.inc(received)
        for kind, n in stored_by_kind.items():
            if n:
                self.stored.labels(kind).inc(n)
        if duplicates:
            self.duplicates.inc(duplicates)
        for reason, n in quarantined_by_reason.items():
            self.quarantined.labels(reason).inc(n)
        self.batch_size.observe(received)
        self.commit_seconds.observe(commit_s)
        for lag in lags_s:
            self.lag_seconds.observe(max(lag, 0.0))
        if boot_counter_resets:
            self.boot_counter_resets.inc(boot_counter_resets)
        with self._lock:
            c = self.counters
            c.received += received
            c.stored += stored
            c.duplicates += duplicates
            c.quarantined += quarantined
            c.batches += 1
            c.boot_counter_resets += boot_counter_resets

    def set_inflight(self, n: int) -> None:
        self.inflight.set(n)
        with self._lock:
            self.counters.inflight = n

    def reconnected(self) -> None:
        self.reconnects.inc()
        with self._lock:
            self.counters.reconnects += 1

    def database_error(self) -> None:
        self.db_errors.inc()
        with self._lock:
            self.counters.db_errors += 1

    def gaps_confirmed(self, gaps: int, resends: int, permanent: int = 0) -> None:
        if gaps:
            self.gaps.inc(gaps)
        if resends:
            self.resends.inc(resends)
        if permanent:
            self.permanent_gaps.inc(permanent)
        with self._lock:
            self.counters.gaps_detected += gaps
            self.counters.resends_requested += resends
            self.counters.permanent_gaps += permanent

    def snapshot(self) -> IngestCounters:
        with self._lock:
            return self.counters.copy()


def serve_metrics(port: int, registry: CollectorRegistry, addr: str = "0.0.0.0") -> object:
    """Expose ``registry`` over HTTP on ``port``; returns the server (``shutdown()`` stops it)."""
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server

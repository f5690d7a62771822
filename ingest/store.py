"""The database side of a worker: decode a batch, write it, retry until it is durable.

`BatchStore` owns the database connection, the device cache and the gap scan. It runs in the
worker's writer thread, or in a writer process of its own (`run_writer_process`): the MQTT
client is the throughput ceiling and holds the GIL for most of each message, so decoding and
COPY in another process let both use a core each.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from typing import cast

import psycopg
from firmware_protocol import RejectReason

from aquafleet.db import Database
from aquafleet.errors import DatabaseUnavailable
from ingest import logs
from ingest.config import IngestConfig
from ingest.device_state import NOTHING_SCANNED, GapScanner, GapScanResult, KnownDevices
from ingest.metrics import LAG_SAMPLES_PER_BATCH
from ingest.prepare import PreparedBatch, Preparer
from ingest.quarantine import QuarantineRecord
from ingest.session import Inbound
from ingest.writer import BatchWriter, WriteResult, is_transient

log = logging.getLogger("ingest.store")

_GAP_SCAN_EVERY_S = 1.0
_RETRY_MIN_S = 0.2
_RETRY_MAX_S = 5.0
# A message the codec accepted but the database refused (a value beyond a column's range, say)
# is, for the store, a shape it does not accept.
_STORE_REFUSED = RejectReason.SCHEMA_VIOLATION


@dataclass
class StoreOutcome:
    """What storing one batch did; crosses the process boundary, so plain data only."""

    received: int
    stored_by_kind: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    commit_s: float = 0.0
    lags_s: list[float] = field(default_factory=list)
    boot_counter_resets: int = 0


class BatchStore:
    def __init__(
        self,
        config: IngestConfig,
        database: Database,
        *,
        on_database_error: Callable[[], None] = lambda: None,
    ) -> None:
        self._config = config
        self._database = database
        self._on_database_error = on_database_error
        self._devices = KnownDevices(config.device_refresh_s)
        self._preparer = Preparer(config, self._devices.__contains__)
        self._gaps = GapScanner(
            reorder_window_s=config.reorder_window_s, resend_expiry_s=config.resend_expiry_s
        )
        self._writer: BatchWriter | None = None
        self._db_down_since: float | None = None
        self._last_gap_scan = 0.0

    def load_devices(self) -> int:
        with self._database.connection() as conn:
            self._devices.load(conn)
        return len(self._devices)

    def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(psycopg.Error):
                self._writer.connection.close()
            self._writer = None

    def prepare_ahead(self, batch: list[Inbound]) -> PreparedBatch | None:
        """Decode ``batch`` before its turn to be written, without the database; None when it
        names devices the cache does not know, which `store` settles against a fresh ledger."""
        prepared = self._preparer.prepare(batch, LAG_SAMPLES_PER_BATCH)
        return None if prepared.unknown_devices else prepared

    def store(
        self,
        batch: list[Inbound],
        abort: threading.Event,
        prepared: PreparedBatch | None = None,
    ) -> StoreOutcome | None:
        """Store the batch durably, retrying through database outages; None if aborted.

        ``prepared`` is the batch as `prepare_ahead` decoded it, if it did."""
        delay = _RETRY_MIN_S
        while True:
            if abort.is_set():
                return None
            try:
                writer = self._ensure_writer()
                if prepared is None:
                    prepared = self._prepare(batch, writer)
                started = time.perf_counter()
                try:
                    result = writer.write(prepared)
                except psycopg.Error as exc:
                    if is_transient(exc):
                        raise
                    log.warning(
                        "batch refused by the database (%s); writing its messages one by one",
                        exc.sqlstate,
                        extra={"event": "batch_refused"},
                    )
                    result = self._write_isolated(batch, writer)
                elapsed = time.perf_counter() - started
                break
            except (psycopg.Error, DatabaseUnavailable) as exc:
                self._database_lost(exc, len(batch))
                abort.wait(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
        if self._db_down_since is not None:
            log.info(
                "database back after %.1f s",
                time.monotonic() - self._db_down_since,
                extra={"event": "database_back"},
            )
            self._db_down_since = None
        return StoreOutcome(
            received=len(batch),
            stored_by_kind=result.stored_by_kind,
            duplicates=result.duplicates,
            quarantined_by_reason=result.quarantined_by_reason,
            commit_s=elapsed,
            lags_s=[lag / 1000 for lag in prepared.lags_ms],
            boot_counter_resets=result.boot_counter_resets,
        )

    def housekeeping(self) -> GapScanResult:
        """Reload the device cache and scan for gaps when due; what the scan did."""
        if self._db_down_since is not None:
            return NOTHING_SCANNED
        now = time.monotonic()
        try:
            if self._devices.due():
                self._devices.load(self._ensure_writer().connection)
            interval = min(_GAP_SCAN_EVERY_S, self._config.reorder_window_s)
            if now - self._last_gap_scan >= interval:
                self._last_gap_scan = now
                return self._gaps.scan(self._ensure_writer().connection)
        except (psycopg.Error, DatabaseUnavailable) as exc:
            # The next batch finds out properly; housekeeping just waits for a better moment.
            log.debug("housekeeping skipped: %s", exc)
            if self._writer is not None and self._writer.connection.broken:
                self._writer = None
        return NOTHING_SCANNED

    def _prepare(self, batch: list[Inbound], writer: BatchWriter) -> PreparedBatch:
        prepared = self._preparer.prepare(batch, LAG_SAMPLES_PER_BATCH)
        if prepared.unknown_devices and self._devices.may_refresh_early():
            # Perhaps added to the ledger since the last load.
            before = len(self._devices)
            self._devices.load(writer.connection)
            if len(self._devices) != before:
                prepared = self._preparer.prepare(batch, LAG_SAMPLES_PER_BATCH)
        return prepared

    def _write_isolated(self, batch: list[Inbound], writer: BatchWriter) -> WriteResult:
        """Write message by message; one the database refuses goes to quarantine alone."""
        total = WriteResult()
        for message in batch:
            _gen, _mid, topic, payload, received_ms = message
            prepared = self._preparer.prepare([message], LAG_SAMPLES_PER_BATCH)
            try:
                result = writer.write(prepared)
            except psycopg.Error as exc:
                if is_transient(exc):
                    raise
                refused = PreparedBatch(size=1, payload_bound=prepared.payload_bound)
                first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                refused.quarantine.append(
                    QuarantineRecord.of(
                        received_ms=received_ms,
                        topic=topic,
                        device_id=None,
                        reason=_STORE_REFUSED,
                        detail=f"the database refused it: {exc.sqlstate} {first_line}",
                        payload=payload,
                        bound=prepared.payload_bound,
                    )
                )
                result = writer.write(refused)
            for kind, n in result.stored_by_kind.items():
                total.stored_by_kind[kind] = total.stored_by_kind.get(kind, 0) + n
            total.duplicates += result.duplicates
            for reason, n in result.quarantined_by_reason.items():
                total.quarantined_by_reason[reason] = total.quarantined_by_reason.get(reason, 0) + n
        return total

    def _ensure_writer(self) -> BatchWriter:
        if self._writer is None or self._writer.connection.closed:
            self._writer = BatchWriter(self._database.connect())
        return self._writer

    def _database_lost(self, exc: BaseException, holding: int) -> None:
        self._on_database_error()
        self.close()
        if self._db_down_since is None:
            self._db_down_since = time.monotonic()
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            log.warning(
                "database unavailable (%s); holding %d messages unacknowledged and retrying",
                first_line,
                holding,
                extra={"event": "database_unavailable"},
            )


# -- the writer process ----------------------------------------------------------------------------
#
# Parent -> child: pickled batches (list of Inbound), then None to finish.
# Child -> parent: ("ready", devices), ("batch", StoreOutcome), ("gaps", gaps, resends, permanent),
# ("db_error",), ("failed", message).
#
# Two threads: one receives and decodes the next batch while the other writes the one before,
# so the decoding (Python) overlaps the database's work on the previous COPY and commit. The
# queue between them holds one batch, so batches are written, and reported, in arrival order.

_FINISHED = object()  # what the receiving thread queues after the last batch


def run_writer_process(
    pipe: Pipe, config: IngestConfig, database_url: str, log_format: str, verbose: bool
) -> None:
    """Entry point of a writer process: store every batch the pipe brings, report back."""
    import signal

    logs.configure(log_format, verbose=verbose)
    # The worker decides when this process ends (it sends None, or kills it).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    never = threading.Event()
    store = BatchStore(
        config,
        Database(url=database_url),
        on_database_error=lambda: pipe.send(("db_error",)),
    )
    decoded: queue.Queue[object] = queue.Queue(maxsize=1)

    def receive() -> None:
        try:
            while True:
                batch = pickle.loads(pipe.recv_bytes())
                if batch is None:
                    break
                decoded.put((batch, store.prepare_ahead(batch)))
        except BaseException as exc:  # the writing thread reports it (EOF: the worker is gone)
            decoded.put(exc)
            return
        decoded.put(_FINISHED)

    try:
        pipe.send(("ready", store.load_devices()))
        threading.Thread(target=receive, name="ingest-receive", daemon=True).start()
        while True:
            try:
                item = decoded.get(timeout=0.2)
            except queue.Empty:
                item = None
            if item is _FINISHED:
                break
            if isinstance(item, BaseException):
                raise item
            if item is not None:
                batch, prepared = cast(tuple[list[Inbound], PreparedBatch | None], item)
                outcome = store.store(batch, never, prepared)
                pipe.send(("batch", outcome))
            scanned = store.housekeeping()
            if any(scanned):
                pipe.send(("gaps", *scanned))
    except (EOFError, BrokenPipeError):
        pass  # the worker is gone; what is unacknowledged will be delivered again
    except BaseException as exc:
        with contextlib.suppress(OSError):
            pipe.send(("failed", f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        store.close()

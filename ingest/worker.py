"""One ingest worker: an MQTT session, a batcher and a writer thread, wired together.

Two threads: paho's network loop (the session) only hands messages over and sends
acknowledgements; the writer thread decodes, writes and commits, then tells the session which
messages to acknowledge. The MQTT client is the throughput ceiling, so its thread does nothing
else.

`IngestWorker` is also the programmatic face: ``start()`` returns once the broker accepted the
session, ``counters()`` reads the totals, ``stop()`` drains what was received, commits and
acknowledges it, then disconnects.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import psycopg
from firmware_protocol import RejectReason

from aquafleet.db import Database
from aquafleet.errors import DatabaseUnavailable
from ingest.batcher import Batcher
from ingest.config import IngestConfig
from ingest.device_state import GapScanner, KnownDevices
from ingest.errors import IngestError
from ingest.metrics import LAG_SAMPLES_PER_BATCH, IngestCounters, IngestMetrics
from ingest.prepare import PreparedBatch, Preparer
from ingest.quarantine import QuarantineRecord
from ingest.session import Inbound, MqttSession
from ingest.writer import BatchWriter, WriteResult, is_transient

log = logging.getLogger("ingest.worker")

_GAP_SCAN_EVERY_S = 1.0
_RETRY_MIN_S = 0.2
_RETRY_MAX_S = 5.0
_DRAIN_TIMEOUT_S = 10.0
# A message the codec accepted but the database refused (a value beyond a column's range, say)
# is, for the store, a shape it does not accept.
_STORE_REFUSED = RejectReason.SCHEMA_VIOLATION


class IngestWorker:
    """Consumes the broker into the database until stopped."""

    def __init__(
        self,
        config: IngestConfig,
        database: Database,
        *,
        metrics: IngestMetrics | None = None,
    ) -> None:
        self.config = config
        self._database = database
        self.metrics = metrics if metrics is not None else IngestMetrics()
        self._batcher = Batcher(config.batch_rows, config.batch_ms / 1000)
        self._session = MqttSession(config, self._batcher.put, self.metrics)
        self._devices = KnownDevices(config.device_refresh_s)
        self._preparer = Preparer(config, self._devices.__contains__)
        self._gaps = GapScanner(
            reorder_window_s=config.reorder_window_s, resend_expiry_s=config.resend_expiry_s
        )
        self._writer: BatchWriter | None = None
        self._closing = threading.Event()  # stop taking messages, drain what is here
        self._abort = threading.Event()  # stop now, even with messages unwritten
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._db_down_since: float | None = None
        self._last_gap_scan = 0.0

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the device ledger, connect to the broker, start writing."""
        with self._database.connection() as conn:
            self._devices.load(conn)
        log.info("%d devices in the ledger", len(self._devices), extra={"event": "ledger_loaded"})
        self._thread = threading.Thread(target=self._run_writer, name="ingest-writer", daemon=True)
        self._thread.start()
        try:
            self._session.start()
        except BaseException:
            self._abort.set()
            self._thread.join(5)
            raise

    def stop(self, timeout: float = _DRAIN_TIMEOUT_S) -> None:
        """Stop taking messages, store and acknowledge those received, then disconnect."""
        self._session.pause()
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                # The database is not coming back in time: what is unacknowledged stays with
                # the broker, which delivers it again to the next session.
                self._abort.set()
                self._thread.join(5)
        self._session.flush_acks(timeout=5)
        self._session.stop()
        if self._writer is not None:
            self._writer.connection.close()
            self._writer = None

    def kill(self) -> None:
        """Stop at once without draining; what was not acknowledged is delivered again later."""
        self._abort.set()
        self._closing.set()
        if self._thread is not None:
            self._thread.join(5)
        self._session.stop()

    def __enter__(self) -> IngestWorker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def failure(self) -> BaseException | None:
        return self._failure or self._session.failure

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.failure is None

    def check(self) -> None:
        """Raise the error that stopped a thread of this worker, if any."""
        failure = self.failure
        if failure is not None:
            raise IngestError(f"ingest worker failed: {failure}") from failure

    def counters(self) -> IngestCounters:
        return self.metrics.snapshot()

    @property
    def session(self) -> MqttSession:
        return self._session

    # -- the writer thread -------------------------------------------------------------------------

    def _run_writer(self) -> None:
        try:
            while not self._abort.is_set():
                if self._closing.is_set() and not len(self._batcher):
                    break
                batch = self._batcher.take(self._abort, idle_timeout_s=0.2)
                self._housekeeping()
                if batch:
                    self._store(batch)
        except BaseException as exc:
            self._failure = exc
            log.exception("writer failed", extra={"event": "writer_failed"})
            self._session.pause()

    def _store(self, batch: list[Inbound]) -> None:
        prepared: PreparedBatch | None = None
        delay = _RETRY_MIN_S
        while True:
            if self._abort.is_set():
                self._session.release(len(batch))
                return
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
                self._abort.wait(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
        if self._db_down_since is not None:
            log.info(
                "database back after %.1f s",
                time.monotonic() - self._db_down_since,
                extra={"event": "database_back"},
            )
            self._db_down_since = None
        self._session.acknowledge([(m.generation, m.mid) for m in batch])
        self.metrics.batch_committed(
            received=len(batch),
            stored_by_kind=result.stored_by_kind,
            duplicates=result.duplicates,
            quarantined_by_reason=result.quarantined_by_reason,
            commit_s=elapsed,
            lags_s=[lag / 1000 for lag in prepared.lags_ms],
        )

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
            prepared = self._preparer.prepare([message], LAG_SAMPLES_PER_BATCH)
            try:
                result = writer.write(prepared)
            except psycopg.Error as exc:
                if is_transient(exc):
                    raise
                refused = PreparedBatch(size=1, payload_bound=prepared.payload_bound)
                refused.quarantine.append(
                    QuarantineRecord.of(
                        received_ms=message.received_ms,
                        topic=message.topic,
                        device_id=None,
                        reason=_STORE_REFUSED,
                        detail=f"the database refused it: {exc.sqlstate} "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                        payload=message.payload,
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
            conn = self._database.connect()
            try:
                self._writer = BatchWriter(conn)
            except BaseException:
                conn.close()
                raise
        return self._writer

    def _database_lost(self, exc: BaseException, holding: int) -> None:
        self.metrics.database_error()
        if self._writer is not None:
            with contextlib.suppress(psycopg.Error):
                self._writer.connection.close()
            self._writer = None
        if self._db_down_since is None:
            self._db_down_since = time.monotonic()
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            log.warning(
                "database unavailable (%s); holding %d messages unacknowledged and retrying",
                first_line,
                holding,
                extra={"event": "database_unavailable"},
            )

    def _housekeeping(self) -> None:
        if self._db_down_since is not None:
            return
        now = time.monotonic()
        try:
            if self._devices.due():
                writer = self._ensure_writer()
                self._devices.load(writer.connection)
            if now - self._last_gap_scan >= min(_GAP_SCAN_EVERY_S, self.config.reorder_window_s):
                self._last_gap_scan = now
                writer = self._ensure_writer()
                gaps, resends = self._gaps.scan(writer.connection)
                if gaps or resends:
                    self.metrics.gaps_confirmed(gaps, resends)
        except (psycopg.Error, DatabaseUnavailable) as exc:
            # The next batch finds out properly; housekeeping just waits for a better moment.
            log.debug("housekeeping skipped: %s", exc)
            if self._writer is not None and self._writer.connection.broken:
                self._writer = None

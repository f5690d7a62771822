"""One ingest worker: an MQTT session, a batcher and a batch store, wired together.

paho's network loop (the session) only hands messages over and sends acknowledgements; the
batch store decodes, writes and commits, then the worker tells the session which messages to
acknowledge. The store runs either in a thread of this process, or in a writer process of its
own (``writer_process=True``, what `aquafleet ingest` uses): the MQTT client is the throughput
ceiling and holds the GIL for most of each message, so moving decoding and COPY out of its
process lets both use a core.

`IngestWorker` is also the programmatic face: ``start()`` returns once the broker accepted the
session, ``counters()`` reads the totals, ``stop()`` drains what was received, commits and
acknowledges it, then disconnects.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import pickle
import threading
from collections.abc import Callable

from aquafleet.db import Database
from ingest.batcher import Batcher
from ingest.config import IngestConfig
from ingest.errors import IngestError
from ingest.metrics import IngestCounters, IngestMetrics
from ingest.session import Inbound, MqttSession
from ingest.store import BatchStore, StoreOutcome, run_writer_process

log = logging.getLogger("ingest.worker")

_DRAIN_TIMEOUT_S = 10.0
_WRITER_START_TIMEOUT_S = 60.0
# Batches sent to the writer process and not yet stored: one being written, one waiting.
_BATCHES_AHEAD = 2


class IngestWorker:
    """Consumes the broker into the database until stopped."""

    def __init__(
        self,
        config: IngestConfig,
        database: Database,
        *,
        metrics: IngestMetrics | None = None,
        writer_process: bool = False,
        log_format: str = "text",
        verbose: bool = False,
    ) -> None:
        self.config = config
        self._database = database
        self.metrics = metrics if metrics is not None else IngestMetrics()
        self._batcher = Batcher(config.batch_rows, config.batch_ms / 1000)
        self._session = MqttSession(config, self._batcher.put, self.metrics)
        self._writer_process = writer_process
        self._log_format = log_format
        self._verbose = verbose
        self._store: BatchStore | None = None
        self._closing = threading.Event()  # stop taking messages, drain what is here
        self._abort = threading.Event()  # stop now, even with messages unwritten
        self._threads: list[threading.Thread] = []
        self._failure: BaseException | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._pipe: multiprocessing.connection.Connection | None = None
        # (generation, mid) of the batches in the writer process, oldest first
        self._in_writer: collections.deque[list[tuple[int, int]]] = collections.deque()
        self._in_writer_changed = threading.Condition()

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the device ledger, start the store, connect to the broker."""
        if self._writer_process:
            devices = self._start_writer_process()
            threads = [("ingest-shipper", self._run_shipper), ("ingest-results", self._run_results)]
        else:
            self._store = BatchStore(
                self.config, self._database, on_database_error=self.metrics.database_error
            )
            devices = self._store.load_devices()
            threads = [("ingest-writer", self._run_writer)]
        log.info("%d devices in the ledger", devices, extra={"event": "ledger_loaded"})
        for name, target in threads:
            thread = threading.Thread(target=self._guard(target), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        try:
            self._session.start()
        except BaseException:
            self.kill()
            raise

    def stop(self, timeout: float = _DRAIN_TIMEOUT_S, *, end_session: bool = False) -> None:
        """Stop taking messages, store and acknowledge those received, then disconnect.

        ``end_session`` also ends the broker session (see `ingest.retire`)."""
        self._session.pause()
        self._closing.set()
        for thread in self._threads:
            thread.join(timeout)
        if any(t.is_alive() for t in self._threads):
            # The database is not coming back in time: what is unacknowledged stays with the
            # broker, which delivers it again to the next session.
            self._abort.set()
            self._end_writer_process(kill=True)
            for thread in self._threads:
                thread.join(5)
        self._session.flush_acks(timeout=5)
        self._session.stop(end_session=end_session)
        self._end_writer_process(kill=False)
        if self._store is not None:
            self._store.close()

    def kill(self) -> None:
        """Stop at once without draining; what was not acknowledged is delivered again later."""
        self._abort.set()
        self._closing.set()
        self._end_writer_process(kill=True)
        for thread in self._threads:
            thread.join(5)
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
        return any(t.is_alive() for t in self._threads) and self.failure is None

    def check(self) -> None:
        """Raise the error that stopped a part of this worker, if any."""
        failure = self.failure
        if failure is not None:
            raise IngestError(f"ingest worker failed: {failure}") from failure

    def counters(self) -> IngestCounters:
        return self.metrics.snapshot()

    @property
    def session(self) -> MqttSession:
        return self._session

    # -- shared ------------------------------------------------------------------------------------

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:
                self._failure = exc
                log.exception("ingest worker failed", extra={"event": "worker_failed"})
                self._session.pause()

        return run

    def _committed(
        self, messages: list[Inbound] | list[tuple[int, int]], out: StoreOutcome
    ) -> None:
        acks = [(m[0], m[1]) for m in messages]
        self._session.acknowledge(acks)
        self.metrics.batch_committed(
            received=out.received,
            stored_by_kind=out.stored_by_kind,
            duplicates=out.duplicates,
            quarantined_by_reason=out.quarantined_by_reason,
            commit_s=out.commit_s,
            lags_s=out.lags_s,
            boot_counter_resets=out.boot_counter_resets,
        )

    # -- the store in a thread ---------------------------------------------------------------------

    def _run_writer(self) -> None:
        store = self._store
        assert store is not None
        while not self._abort.is_set():
            if self._closing.is_set() and not len(self._batcher):
                break
            batch = self._batcher.take(self._abort, idle_timeout_s=0.2)
            scanned = store.housekeeping()
            if any(scanned):
                self.metrics.gaps_confirmed(*scanned)
            if not batch:
                continue
            outcome = store.store(batch, self._abort)
            if outcome is None:
                self._session.release(len(batch))
                return
            self._committed(batch, outcome)

    # -- the store in a process --------------------------------------------------------------------

    def _start_writer_process(self) -> int:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(
            target=run_writer_process,
            args=(child, self.config, self._database.url, self._log_format, self._verbose),
            name=f"ingest-writer-{self.config.client_id}",
            daemon=True,
        )
        self._process.start()
        child.close()
        self._pipe = parent
        if not parent.poll(_WRITER_START_TIMEOUT_S):
            self._end_writer_process(kill=True)
            raise IngestError("the writer process did not start")
        try:
            message = parent.recv()
        except EOFError:
            self._end_writer_process(kill=True)
            raise IngestError("the writer process could not start (see its log)") from None
        if message[0] == "failed":
            self._end_writer_process(kill=True)
            raise IngestError(f"the writer process failed: {message[1]}")
        return int(message[1])

    def _run_shipper(self) -> None:
        """Batches from the batcher to the writer process, at most _BATCHES_AHEAD at a time."""
        pipe = self._pipe
        assert pipe is not None
        while not self._abort.is_set():
            if self._closing.is_set() and not len(self._batcher):
                break
            with self._in_writer_changed:
                while len(self._in_writer) >= _BATCHES_AHEAD and not self._abort.is_set():
                    self._in_writer_changed.wait(0.2)
            batch = self._batcher.take(self._abort, idle_timeout_s=0.2)
            if not batch:
                continue
            with self._in_writer_changed:
                self._in_writer.append([(m[0], m[1]) for m in batch])
            pipe.send_bytes(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
        if not self._abort.is_set():
            pipe.send_bytes(pickle.dumps(None))

    def _run_results(self) -> None:
        pipe = self._pipe
        assert pipe is not None
        while True:
            try:
                message = pipe.recv()
            except (EOFError, OSError):
                if not self._abort.is_set() and not self._closing.is_set():
                    raise IngestError("the writer process ended unexpectedly") from None
                break
            kind = message[0]
            if kind == "batch":
                with self._in_writer_changed:
                    acks = self._in_writer.popleft()
                    self._in_writer_changed.notify_all()
                self._committed(acks, message[1])
            elif kind == "gaps":
                self.metrics.gaps_confirmed(*message[1:])
            elif kind == "db_error":
                self.metrics.database_error()
            elif kind == "failed":
                raise IngestError(f"the writer process failed: {message[1]}")
        with self._in_writer_changed:
            stale = sum(len(b) for b in self._in_writer)
            self._in_writer.clear()
        if stale:
            self._session.release(stale)

    def _end_writer_process(self, *, kill: bool) -> None:
        process = self._process
        if process is None:
            return
        if kill and process.is_alive():
            process.kill()
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()
        self._process = None

"""Running ingest as a service: one worker in this process, or N worker processes.

The MQTT client is bound to one core, so more throughput on one machine means more processes,
each with its own session in the shared subscription group. The supervisor restarts a worker
process that dies (its client id and session stay the same, so the broker hands it back what it
had not acknowledged) and serves the metrics of all workers on one port through
prometheus_client's multiprocess mode.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.process
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from aquafleet.db import Database
from ingest import logs
from ingest.config import IngestConfig
from ingest.metrics import IngestMetrics, serve_metrics
from ingest.relay import CommandRelay
from ingest.worker import IngestWorker

log = logging.getLogger("ingest.runner")

_RESTART_DELAY_S = 1.0
_STOP_TIMEOUT_S = 15.0
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True)
class RunOptions:
    workers: int = 1
    metrics_port: int | None = None
    metrics_addr: str = "0.0.0.0"
    log_format: str = "text"
    verbose: bool = False
    relay_commands: bool = False
    # decode and write in a process of their own, next to each MQTT client's process
    writer_process: bool = True


def run_ingest(
    config: IngestConfig,
    database_url: str,
    options: RunOptions,
    stop: threading.Event | None = None,
) -> None:
    """Run until ``stop`` is set or SIGTERM/SIGINT arrives; raises if a worker fails for good."""
    stop = stop if stop is not None else threading.Event()
    restore = _handle_signals(stop)
    relay = CommandRelay(config, Database(url=database_url)) if options.relay_commands else None
    try:
        if relay is not None:
            relay.start()
        if options.workers == 1:
            _run_single(config, database_url, options, stop)
        else:
            _Supervisor(config, database_url, options, stop).run()
    finally:
        if relay is not None:
            relay.stop()
        restore()


def run_relay(config: IngestConfig, database_url: str, stop: threading.Event | None = None) -> None:
    """Run only the command relay until ``stop`` or SIGTERM/SIGINT."""
    stop = stop if stop is not None else threading.Event()
    restore = _handle_signals(stop)
    relay = CommandRelay(config, Database(url=database_url))
    try:
        relay.start()
        log.info("command relay running", extra={"event": "started"})
        stop.wait()
    finally:
        relay.stop()
        restore()


def _run_single(
    config: IngestConfig, database_url: str, options: RunOptions, stop: threading.Event
) -> None:
    metrics = IngestMetrics()
    server = (
        serve_metrics(options.metrics_port, metrics.registry, options.metrics_addr)
        if options.metrics_port is not None
        else None
    )
    worker = IngestWorker(
        config,
        Database(url=database_url),
        metrics=metrics,
        writer_process=options.writer_process,
        log_format=options.log_format,
        verbose=options.verbose,
    )
    try:
        worker.start()
        log.info(
            "ingest running: client %s, %s, metrics %s",
            config.client_id,
            f"group {config.group}" if config.shared else "plain subscription",
            f"on port {options.metrics_port}" if options.metrics_port is not None else "off",
            extra={"event": "started"},
        )
        while not stop.wait(0.5):
            worker.check()
    finally:
        worker.stop()
        if server is not None:
            server.shutdown()  # type: ignore[attr-defined]
        log.info("ingest stopped: %s", worker.counters(), extra={"event": "stopped"})


def _handle_signals(stop: threading.Event) -> Callable[[], None]:
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    return restore


# -- several worker processes ------------------------------------------------------------------


def _worker_process(config: IngestConfig, database_url: str, options: RunOptions) -> None:
    """Entry point of a worker process."""
    logs.configure(options.log_format, verbose=options.verbose)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    # Ctrl-C reaches the whole process group; the supervisor decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = IngestWorker(
        config,
        Database(url=database_url),
        writer_process=options.writer_process,
        log_format=options.log_format,
        verbose=options.verbose,
    )
    worker.start()
    try:
        while not stop.wait(0.5):
            worker.check()
    finally:
        worker.stop()


class _Supervisor:
    def __init__(
        self, config: IngestConfig, database_url: str, options: RunOptions, stop: threading.Event
    ) -> None:
        self._configs = [config.for_worker(i) for i in range(options.workers)]
        self._database_url = database_url
        self._options = options
        self._stop = stop
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[multiprocessing.process.BaseProcess | None] = [None] * len(
            self._configs
        )

    def run(self) -> None:
        metrics_dir = tempfile.mkdtemp(prefix="aquafleet-ingest-metrics-")
        previous = os.environ.get(_MULTIPROC_ENV)
        # Read by prometheus_client when a worker process imports it.
        os.environ[_MULTIPROC_ENV] = metrics_dir
        server = None
        try:
            if self._options.metrics_port is not None:
                from prometheus_client import CollectorRegistry
                from prometheus_client.multiprocess import MultiProcessCollector

                registry = CollectorRegistry()
                MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
                server = serve_metrics(
                    self._options.metrics_port, registry, self._options.metrics_addr
                )
            for i in range(len(self._configs)):
                self._spawn(i)
            log.info(
                "ingest running: %d worker processes in group %s",
                len(self._configs),
                self._configs[0].group,
                extra={"event": "started", "workers": len(self._configs)},
            )
            while not self._stop.wait(0.5):
                self._restart_dead(metrics_dir)
        finally:
            self._terminate_all()
            if server is not None:
                server.shutdown()  # type: ignore[attr-defined]
            if previous is None:
                os.environ.pop(_MULTIPROC_ENV, None)
            else:
                os.environ[_MULTIPROC_ENV] = previous
            shutil.rmtree(metrics_dir, ignore_errors=True)

    def _spawn(self, index: int) -> None:
        process = self._context.Process(
            target=_worker_process,
            args=(self._configs[index], self._database_url, self._options),
            name=f"ingest-worker-{index}",
        )
        process.start()
        self._processes[index] = process
        log.info(
            "worker %d started (pid %s, client %s)",
            index,
            process.pid,
            self._configs[index].client_id,
            extra={"event": "worker_started", "worker": index, "pid": process.pid},
        )

    def _restart_dead(self, metrics_dir: str) -> None:
        from prometheus_client import multiprocess

        for index, process in enumerate(self._processes):
            if process is None or process.is_alive():
                continue
            log.warning(
                "worker %d (pid %s) exited with %s; restarting",
                index,
                process.pid,
                process.exitcode,
                extra={"event": "worker_died", "worker": index, "exitcode": process.exitcode},
            )
            if process.pid is not None:
                multiprocess.mark_process_dead(process.pid, metrics_dir)  # type: ignore[no-untyped-call]
            time.sleep(_RESTART_DELAY_S)
            if not self._stop.is_set():
                self._spawn(index)

    def _terminate_all(self) -> None:
        for process in self._processes:
            if process is not None and process.is_alive():
                process.terminate()  # SIGTERM: the worker drains and acknowledges
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        for process in self._processes:
            if process is None:
                continue
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()

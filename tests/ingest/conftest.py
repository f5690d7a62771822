"""Fixtures of the ingest tests: a migrated database with a ledger, and `aquafleet ingest` runs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest

from tests.ingest.fleet import device_ids, prepare_database

AQUAFLEET = Path(sys.executable).with_name("aquafleet")
DEVICES = device_ids(20)


@pytest.fixture
def ledger_url(database_url: str) -> str:
    """A migrated TimescaleDB database whose ledger holds ``DEVICES``."""
    prepare_database(database_url, DEVICES)
    return database_url


class IngestProcess:
    """`aquafleet ingest` as a user runs it: a separate process, its output in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, wait_running: bool = True) -> IngestProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(AQUAFLEET), "ingest", *self.args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # its own process group, so kill9 also takes worker processes
                start_new_session=True,
            )
        if wait_running:
            self.wait_for_log("ingest running", timeout=30)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 30.0, *, after: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log()[after:]:
                return
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"ingest exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in the ingest log within {timeout} s:\n{self.log()}")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill9(self) -> None:
        """SIGKILL to the whole process group: no chance to commit, acknowledge or say goodbye."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def rss_bytes(self) -> int:
        """Resident memory of the ingest process and its children."""
        main = psutil.Process(self.pid)
        total = main.memory_info().rss
        for child in main.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += child.memory_info().rss
        return int(total)


MakeIngest = Callable[..., IngestProcess]


@pytest.fixture
def make_ingest(tmp_path: Path) -> Iterator[MakeIngest]:
    """``make_ingest(database_url, broker_url, *args, env={})`` -> an IngestProcess, not started."""
    made: list[IngestProcess] = []

    def make(
        database_url: str, broker_url: str, *args: str, env: dict[str, str] | None = None
    ) -> IngestProcess:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("AQUAFLEET_")}
        full_env.update(
            {
                "AQUAFLEET_DATABASE_URL": database_url,
                "AQUAFLEET_BROKER_URL": broker_url,
                "AQUAFLEET_STATE_DIR": str(tmp_path / "state"),
            }
        )
        full_env.update(env or {})
        process = IngestProcess(list(args), full_env, tmp_path / f"ingest-{len(made)}.log")
        made.append(process)
        return process

    try:
        yield make
    finally:
        for process in made:
            if process.running():
                process.kill9()

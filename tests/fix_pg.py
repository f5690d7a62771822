"""Throwaway PostgreSQL 15 clusters for tests, on free ports.

Two session clusters are offered: one with TimescaleDB preloaded, as in
production (``pg_server``), and a plain one (``plain_pg_server``) for the
code paths that must cope without the extension. Each test gets its own empty
database on them (``database_url``, ``plain_database_url``). A test that
stops or restarts a server takes one of its own from ``make_pg_server``.

The clusters never touch the machine's own PostgreSQL: they live in temporary
directories and listen on 127.0.0.1 on a port found free at start-up.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, NoReturn

import psycopg
import pytest
from psycopg import sql

PG_MAJOR = 15
PG_BIN = Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")
TIMESCALEDB_CONTROL = Path(f"/usr/share/postgresql/{PG_MAJOR}/extension/timescaledb.control")

# Fixtures whose tests get the ``timescaledb`` marker, so that
# ``-m "not timescaledb"`` leaves out everything that needs the cluster.
_TIMESCALEDB_FIXTURES = frozenset({"pg_server", "database_url"})

_START_ATTEMPTS = 5
_COMMAND_TIMEOUT = 60.0
_LOG_TAIL_LINES = 40

StopMode = Literal["smart", "fast", "immediate"]


class PgServerError(RuntimeError):
    """A test cluster could not be created, started or stopped."""


def unavailable(reason: str) -> NoReturn:
    """Skip the test, unless CI said the services must be there."""
    if os.environ.get("AQUAFLEET_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (AQUAFLEET_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    # The port is released before the server binds it, so another process
    # can take it in between; PgServer.start() retries on that collision.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def check_postgres(*, timescaledb: bool) -> str | None:
    """Why a cluster cannot be run on this machine, or None if it can."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (PG_BIN / tool).is_file():
            return f"PostgreSQL {PG_MAJOR} not installed ({PG_BIN / tool} missing)"
    if timescaledb and not TIMESCALEDB_CONTROL.is_file():
        return f"TimescaleDB not installed ({TIMESCALEDB_CONTROL} missing)"
    return None


def _service_user() -> str | None:
    """The user to run PostgreSQL as, or None to run it as ourselves.

    initdb and postgres refuse to run as root, so as root they run as the
    ``postgres`` system user, created here if the machine lacks it.
    """
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"],
            check=True,
            capture_output=True,
        )
    return "postgres"


class PgServer:
    """One PostgreSQL cluster in a temporary directory, run by this process.

    The cluster is created by the constructor and started by ``start()``; its
    port stays the same across ``stop()``/``start()`` so that clients can
    reconnect to the same URL. ``cleanup()`` stops it and deletes its files.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        timescaledb: bool = True,
        port: int | None = None,
        extra_config: str = "",
        max_connections: int = 200,
    ) -> None:
        self.timescaledb = timescaledb
        self._fixed_port = port is not None
        self.port = port if port is not None else _free_port()
        self._user = _service_user()
        # Not under pytest's tmp_path: its parents are private to root, and
        # the server runs as another user that must reach these directories.
        self.base_dir = Path(tempfile.mkdtemp(prefix="aquafleet-pg-"))
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "socket"
        self.log_file = self.base_dir / "postgresql.log"
        self.socket_dir.mkdir()
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            for path in (self.base_dir, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        try:
            self._initdb()
            self._write_config(max_connections=max_connections, extra_config=extra_config)
        except BaseException:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            raise

    def __repr__(self) -> str:
        kind = "timescaledb" if self.timescaledb else "plain"
        return f"<PgServer {kind} {self.host}:{self.port} {self.base_dir}>"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{dbname}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        if self.is_running():
            return
        for attempt in range(1, _START_ATTEMPTS + 1):
            log_size = self.log_file.stat().st_size if self.log_file.exists() else 0
            result = self._pg_ctl("start", "-w", "-t", "30", "-l", str(self.log_file))
            if result.returncode == 0:
                return
            new_log = self._read_log_from(log_size)
            collided = "could not bind" in new_log or "Address already in use" in new_log
            if collided and not self._fixed_port and attempt < _START_ATTEMPTS:
                self.port = _free_port()
                self._set_port()
                continue
            raise PgServerError(
                f"PostgreSQL did not start on port {self.port}:\n"
                f"{result.stdout}{result.stderr}\n--- {self.log_file} ---\n{_tail(self.log_file)}"
            )

    def stop(self, *, mode: StopMode = "fast") -> None:
        """Stop the server; ``mode="immediate"`` is as abrupt as a crash."""
        if not self.is_running():
            return
        result = self._pg_ctl("stop", "-w", "-t", "30", "-m", mode)
        if result.returncode != 0:
            raise PgServerError(
                f"PostgreSQL on port {self.port} did not stop:\n"
                f"{result.stdout}{result.stderr}\n--- {self.log_file} ---\n{_tail(self.log_file)}"
            )

    def restart(self) -> None:
        self.stop()
        self.start()

    def is_running(self) -> bool:
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        return self._pg_ctl("status").returncode == 0

    def cleanup(self) -> None:
        """Stop the server, however it is, and delete its files."""
        try:
            if self.is_running():
                self.stop(mode="immediate")
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its name."""
        name = name or f"test_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        # FORCE ends the sessions a test left open, which would block the drop.
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def _initdb(self) -> None:
        result = self._run(
            str(PG_BIN / "initdb"),
            "--pgdata",
            str(self.data_dir),
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            # Data that lives for one test run needs no fsync.
            "--no-sync",
        )
        if result.returncode != 0:
            raise PgServerError(f"initdb failed:\n{result.stdout}{result.stderr}")

    def _write_config(self, *, max_connections: int, extra_config: str) -> None:
        lines = [
            "# Written by tests/fix_pg.py",
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.socket_dir}'",
            f"max_connections = {max_connections}",
            # Durability buys nothing for a cluster deleted after the run.
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "timezone = 'UTC'",
            "log_timezone = 'UTC'",
            "log_line_prefix = '%m [%p] %q%u@%d '",
        ]
        if self.timescaledb:
            lines += [
                "shared_preload_libraries = 'timescaledb'",
                "timescaledb.telemetry_level = off",
                # Each database with the extension starts a job scheduler;
                # leave room for those next to PostgreSQL's own workers.
                "max_worker_processes = 24",
                "timescaledb.max_background_workers = 16",
            ]
        if extra_config:
            lines.append(extra_config)
        # Appended, so that these win over initdb's defaults above them.
        with (self.data_dir / "postgresql.conf").open("a") as f:
            f.write("\n" + "\n".join(lines) + "\n")

    def _set_port(self) -> None:
        conf = self.data_dir / "postgresql.conf"
        text = re.sub(r"(?m)^port = \d+$", f"port = {self.port}", conf.read_text())
        conf.write_text(text)

    def _read_log_from(self, offset: int) -> str:
        try:
            with self.log_file.open(errors="replace") as f:
                f.seek(offset)
                return f.read()
        except OSError:
            return ""

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run(str(PG_BIN / "pg_ctl"), "--pgdata", str(self.data_dir), *args)

    def _run(self, *command: str) -> subprocess.CompletedProcess[str]:
        argv = list(command)
        if self._user is not None:
            argv = ["runuser", "-u", self._user, "--", *argv]
        # PG* variables of the caller (PGHOST, PGPORT...) must not steer the
        # tools to another server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8"
        return subprocess.run(
            argv,
            # The service user may not be allowed into our working directory.
            cwd=self.base_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT,
            check=False,
        )


def _session_server(*, timescaledb: bool) -> Iterator[PgServer]:
    reason = check_postgres(timescaledb=timescaledb)
    if reason is not None:
        unavailable(reason)
    server = PgServer(timescaledb=timescaledb)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def _fresh_database(server: PgServer) -> Iterator[str]:
    # A test may have stopped the shared server by mistake; bring it back so
    # that the next tests do not fail for it.
    if not server.is_running():
        server.start()
    name = server.create_database()
    try:
        yield server.url(name)
    finally:
        if not server.is_running():
            server.start()
        server.drop_database(name)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL 15 cluster with TimescaleDB preloaded."""
    yield from _session_server(timescaledb=True)


@pytest.fixture(scope="session")
def plain_pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL 15 cluster without TimescaleDB."""
    yield from _session_server(timescaledb=False)


@pytest.fixture
def database_url(pg_server: PgServer) -> Iterator[str]:
    """URL of a new empty database on ``pg_server``, dropped after the test."""
    yield from _fresh_database(pg_server)


@pytest.fixture
def plain_database_url(plain_pg_server: PgServer) -> Iterator[str]:
    """URL of a new empty database on ``plain_pg_server``, dropped after the test."""
    yield from _fresh_database(plain_pg_server)


MakePgServer = Callable[..., PgServer]


@pytest.fixture
def make_pg_server() -> Iterator[MakePgServer]:
    """Factory of started clusters owned by one test, for stopping and restarting.

    ``make_pg_server(timescaledb=True, extra_config="", max_connections=200,
    start=True)``; every server made is stopped and deleted after the test.
    """
    servers: list[PgServer] = []
    checked: dict[bool, str | None] = {}

    def make(
        *,
        timescaledb: bool = True,
        extra_config: str = "",
        max_connections: int = 200,
        start: bool = True,
    ) -> PgServer:
        if timescaledb not in checked:
            checked[timescaledb] = check_postgres(timescaledb=timescaledb)
        reason = checked[timescaledb]
        if reason is not None:
            unavailable(reason)
        server = PgServer(
            timescaledb=timescaledb, extra_config=extra_config, max_connections=max_connections
        )
        servers.append(server)
        if start:
            server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.cleanup()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _TIMESCALEDB_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.timescaledb)

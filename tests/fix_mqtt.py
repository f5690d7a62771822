"""Mosquitto brokers for tests, on free ports.

``mqtt_broker`` is the session's broker with the default configuration: tests
that share it publish under topics of their own. A test that stops, kills or
reconfigures a broker takes one of its own from ``make_mqtt_broker``.

Each broker runs ``mosquitto -c FILE`` as a child of the test process (not
daemonised, so the fixture owns its pid), with its configuration, persistence
data and log in one temporary directory, listening on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import NoReturn

import pytest

# Fixtures whose tests get the ``mqtt`` marker, so that ``-m "not mqtt"``
# leaves out everything that needs a broker.
_MQTT_FIXTURES = frozenset({"mqtt_broker", "make_mqtt_broker"})

_START_ATTEMPTS = 5
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0
_LOG_TAIL_LINES = 40


class MosquittoError(RuntimeError):
    """A test broker could not be started or stopped."""


def unavailable(reason: str) -> NoReturn:
    """Skip the test, unless CI said the services must be there."""
    if os.environ.get("AQUAFLEET_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (AQUAFLEET_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    # The port is released before the broker binds it, so another process
    # can take it in between; MosquittoBroker.start() retries on that.
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


def find_mosquitto() -> str | None:
    # /usr/sbin is not on every user's PATH, and that is where Debian puts it.
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def write_password_file(path: Path, users: Mapping[str, str]) -> Path:
    """Write a Mosquitto password file for ``users`` (name -> password)."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        unavailable("mosquitto_passwd not installed (package mosquitto)")
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    for name, password in users.items():
        # -b takes the password on the command line: fine for test secrets.
        subprocess.run([tool, "-b", str(path), name, password], check=True, capture_output=True)
    return path


class MosquittoBroker:
    """One Mosquitto process with its own configuration, data and log.

    The port and the persistence directory stay the same across
    ``stop()``/``start()``/``kill()``, so retained messages and persistent
    sessions survive as they would in production. ``write_config()`` changes
    the configuration for the next start (or for ``reload()``, for the
    settings Mosquitto re-reads on SIGHUP, such as password and ACL files).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        port: int | None = None,
        allow_anonymous: bool = True,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        extra_config: str = "",
    ) -> None:
        executable = find_mosquitto()
        if executable is None:
            raise MosquittoError("mosquitto not installed")
        self._executable = executable
        self._fixed_port = port is not None
        self.port = port if port is not None else _free_port()
        self.allow_anonymous = allow_anonymous
        self.password_file = password_file
        self.acl_file = acl_file
        self.extra_config = extra_config
        self.base_dir = Path(tempfile.mkdtemp(prefix="aquafleet-mqtt-"))
        self.data_dir = self.base_dir / "data"
        self.data_dir.mkdir()
        self.config_file = self.base_dir / "mosquitto.conf"
        self.log_file = self.base_dir / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.write_config()

    def __repr__(self) -> str:
        return f"<MosquittoBroker {self.host}:{self.port} {self.base_dir}>"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def persistence_file(self) -> Path:
        """Where the broker saves its state; its mtime tells when it last did."""
        return self.data_dir / "mosquitto.db"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.is_running() and self._process else None

    def write_config(
        self,
        *,
        allow_anonymous: bool | None = None,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        extra_config: str | None = None,
    ) -> None:
        """Rewrite the configuration file; arguments left as None are kept.

        It takes effect at the next ``start()``/``restart()``, or at
        ``reload()`` for what Mosquitto re-reads on SIGHUP.
        """
        if allow_anonymous is not None:
            self.allow_anonymous = allow_anonymous
        if password_file is not None:
            self.password_file = password_file
        if acl_file is not None:
            self.acl_file = acl_file
        if extra_config is not None:
            self.extra_config = extra_config
        lines = [
            "# Written by tests/fix_mqtt.py",
            # Started as root, Mosquitto would switch to the `mosquitto` user,
            # which could not read password files a test writes as root.
            # Ignored when not started as root.
            "user root",
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            # Save often, so that a kill() loses little state. Mosquitto
            # saves when more than this many whole seconds have passed, so in
            # practice every 2 s (see persistence_file).
            "autosave_interval 1",
            # Queue without limit for offline persistent sessions, so tests of
            # catching up after a disconnect are not cut by the default 1000.
            "max_queued_messages 0",
            "max_queued_bytes 0",
            "max_inflight_messages 20",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        if self.extra_config:
            lines.append(self.extra_config)
        self.config_file.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        """Start the broker and wait until its port accepts connections."""
        if self.is_running():
            return
        for attempt in range(1, _START_ATTEMPTS + 1):
            log_size = self.log_file.stat().st_size if self.log_file.exists() else 0
            self._spawn()
            if self._wait_ready(log_size):
                return
            self._reap()
            new_log = self._read_log_from(log_size)
            if (
                "Address already in use" in new_log
                and not self._fixed_port
                and attempt < _START_ATTEMPTS
            ):
                self.port = _free_port()
                self.write_config()
                continue
            raise MosquittoError(
                f"Mosquitto did not start on port {self.port}\n"
                f"--- {self.config_file} ---\n{self.config_file.read_text()}"
                f"--- {self.log_file} ---\n{_tail(self.log_file)}"
            )

    def stop(self) -> None:
        """Stop the broker cleanly; it saves its persistence file on the way."""
        self._signal_and_wait(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the broker with SIGKILL: nothing since the last autosave is kept."""
        self._signal_and_wait(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self) -> None:
        """Make the running broker re-read its password and ACL files (SIGHUP)."""
        if self._process is None or not self.is_running():
            raise MosquittoError("broker is not running")
        self._process.send_signal(signal.SIGHUP)

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def cleanup(self) -> None:
        """Stop the broker, however it is, and delete its files."""
        try:
            if self.is_running():
                self.kill()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _spawn(self) -> None:
        # Appending keeps the log of earlier runs of this broker together.
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                [self._executable, "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
            )

    def _wait_ready(self, log_offset: int) -> bool:
        # A connection alone could reach another process that holds the port
        # while our broker fails to bind it; "running" is logged only once
        # the broker's own listeners are open.
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if not self.is_running():
                return False
            if " running" not in self._read_log_from(log_offset):
                time.sleep(0.02)
                continue
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.02)
        return False

    def _signal_and_wait(self, signum: signal.Signals) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signum)
            try:
                self._process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
                raise MosquittoError(
                    f"Mosquitto on port {self.port} ignored {signum.name} and was killed\n"
                    f"--- {self.log_file} ---\n{_tail(self.log_file)}"
                ) from None
        self._process = None

    def _reap(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            self._process = None

    def _read_log_from(self, offset: int) -> str:
        try:
            with self.log_file.open(errors="replace") as f:
                f.seek(offset)
                return f.read()
        except OSError:
            return ""


def _make_broker(
    *,
    allow_anonymous: bool = True,
    password_file: Path | None = None,
    acl_file: Path | None = None,
    extra_config: str = "",
) -> MosquittoBroker:
    if find_mosquitto() is None:
        unavailable("mosquitto not installed (package mosquitto)")
    return MosquittoBroker(
        allow_anonymous=allow_anonymous,
        password_file=password_file,
        acl_file=acl_file,
        extra_config=extra_config,
    )


# One broker per test module, not per session: retained messages (the status of every machine
# a module's fleet ran) outlive the test that published them, and Mosquitto delivers retained
# messages to shared subscriptions too, so a later module's ingest would receive them.
@pytest.fixture(scope="module")
def mqtt_broker() -> Iterator[MosquittoBroker]:
    """The module's broker: anonymous access, persistence on."""
    broker = _make_broker()
    try:
        broker.start()
        yield broker
    finally:
        broker.cleanup()


MakeMqttBroker = Callable[..., MosquittoBroker]


@pytest.fixture
def make_mqtt_broker() -> Iterator[MakeMqttBroker]:
    """Factory of brokers owned by one test, for restarts and odd configurations.

    ``make_mqtt_broker(allow_anonymous=True, password_file=None,
    acl_file=None, extra_config="", start=True)``; every broker made is
    killed and deleted after the test.
    """
    brokers: list[MosquittoBroker] = []

    def make(
        *,
        allow_anonymous: bool = True,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        extra_config: str = "",
        start: bool = True,
    ) -> MosquittoBroker:
        broker = _make_broker(
            allow_anonymous=allow_anonymous,
            password_file=password_file,
            acl_file=acl_file,
            extra_config=extra_config,
        )
        brokers.append(broker)
        if start:
            broker.start()
        return broker

    try:
        yield make
    finally:
        for broker in brokers:
            broker.cleanup()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _MQTT_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.mqtt)

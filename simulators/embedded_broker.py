"""A broker on this machine for the demo: Mosquitto when installed, else amqtt in this process.

`start_local_broker` picks one. A Mosquitto binary found on the machine is preferred: it speaks
MQTT 5 with shared subscriptions, queues QoS 1 messages for persistent sessions, and is what
production runs. It is started as a child process with a configuration of its own under the state
directory, on a free port of 127.0.0.1, and stopped with the demo.

amqtt, the fallback, is a pip-installed broker that runs on an asyncio loop in a thread of this
process. What amqtt 0.12 really does, as probed with paho-mqtt 2.2 (its docs claim MQTT 3.1.1
compliance and nothing more):

- MQTT 5: refused. A v5 CONNECT gets CONNACK "Unsupported protocol version" (the broker checks
  the protocol level is 4). Clients must connect with MQTT 3.1.1.
- Shared subscriptions: not supported, and worse, silently. ``$share/g/filter`` is granted
  QoS 1 but treated as a literal filter: live messages never arrive on it. Consumers must use a
  plain subscription on this broker, and so only one consumer may run per topic.
- QoS 1 publish and delivery: works, but a message is delivered at the subscription's QoS
  rather than the lower of the two (a QoS 0 publish reaches a QoS 1 subscriber as QoS 1).
  About 2 700 messages/s of 700 bytes, publisher, broker and subscriber in one process; that
  is the ceiling of a demo on it, so the demo's rate stays well below.
- Retained messages: stored and cleared (empty payload) correctly, but a new subscriber may
  receive a retained message twice (once at QoS 0, once at the granted QoS), and one session's
  pending retained messages can reach a subscription that does not match them. Consumers must
  filter by topic and tolerate duplicates (ingest's unique keys do).
- Will: published on an unclean disconnect after the keep-alive, with its retain flag honoured.
- Persistent sessions (clean_session=0): the session is kept (session present = 1) but QoS 1
  messages published while the client is away were not delivered on reconnect in our probes
  (none or a few of them). No loss-free catch-up after a consumer restart on this broker.
- No persistence to disk: everything is lost when the process ends, which suits a demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import socket
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

from aquafleet.errors import AquaFleetError

__all__ = [
    "AmqttBroker",
    "BrokerCapabilities",
    "BrokerKind",
    "LocalBroker",
    "LocalBrokerError",
    "MosquittoBroker",
    "find_mosquitto",
    "start_local_broker",
]

log = logging.getLogger(__name__)

_START_TIMEOUT_S: Final = 10.0
_STOP_TIMEOUT_S: Final = 10.0
_START_ATTEMPTS: Final = 5
_HOST: Final = "127.0.0.1"

Preference = Literal["auto", "mosquitto", "amqtt"]


class LocalBrokerError(AquaFleetError):
    """The demo's broker could not be started."""


class BrokerKind(StrEnum):
    MOSQUITTO = "mosquitto"
    AMQTT = "amqtt"


@dataclass(frozen=True)
class BrokerCapabilities:
    """What a broker can do that consumers must know before they subscribe."""

    mqtt5: bool
    shared_subscriptions: bool
    #: QoS 1 messages are kept for a persistent session while its client is away
    offline_queueing: bool


class LocalBroker(ABC):
    """A broker this process started and will stop; use it as a context manager."""

    kind: BrokerKind
    capabilities: BrokerCapabilities
    host: str = _HOST

    def __init__(self) -> None:
        self.port = 0

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    def describe(self) -> str:
        return f"{self.kind.value} on {self.host}:{self.port}"

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def free_port() -> int:
    # The port is free when we look; another process may take it before the broker binds it,
    # which is why the brokers below retry.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def find_mosquitto() -> str | None:
    # Debian installs it in /usr/sbin, which is not on every user's PATH.
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


# ---------------------------------------------------------------------------------------------
# Mosquitto


class MosquittoBroker(LocalBroker):
    """``mosquitto -c FILE`` as a child process, with its files in ``base_dir``."""

    kind = BrokerKind.MOSQUITTO

    def __init__(self, base_dir: Path, *, executable: str | None = None) -> None:
        super().__init__()
        found = executable or find_mosquitto()
        if found is None:
            raise LocalBrokerError("mosquitto is not installed")
        self.executable = found
        self.base_dir = base_dir
        self.config_file = base_dir / "mosquitto.conf"
        self.log_file = base_dir / "mosquitto.log"
        self.version = _mosquitto_version(found)
        # MQTT 5 and shared subscriptions came with Mosquitto 1.6
        modern = self.version >= (1, 6)
        self.capabilities = BrokerCapabilities(
            mqtt5=modern, shared_subscriptions=modern, offline_queueing=True
        )
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self._process is not None:
            return
        self.base_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, _START_ATTEMPTS + 1):
            self.port = free_port()
            self._write_config()
            with self.log_file.open("ab") as log_out:
                offset = log_out.tell()
                self._process = subprocess.Popen(
                    [self.executable, "-c", str(self.config_file)],
                    stdin=subprocess.DEVNULL,
                    stdout=log_out,
                    stderr=subprocess.STDOUT,
                    cwd=self.base_dir,
                )
            if self._wait_ready(offset):
                log.info("started %s", self.describe())
                return
            self._reap()
            new_log = _read_from(self.log_file, offset)
            if "Address already in use" in new_log and attempt < _START_ATTEMPTS:
                continue
            last_line = new_log.strip().splitlines()[-1] if new_log.strip() else "no output"
            raise LocalBrokerError(f"mosquitto did not start: {last_line} (see {self.log_file})")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _write_config(self) -> None:
        lines = [
            "# The demo's broker, written by aquafleet demo; rewritten at every start.",
            f"listener {self.port} {_HOST}",
            "allow_anonymous true",
            # The demo's data lives in the database; the broker keeps nothing between runs.
            "persistence false",
            # The defaults (1000 queued, then dropped) silently lose QoS 1 messages for a
            # consumer that falls behind, which a fleet at high speed makes happen.
            "max_queued_messages 0",
            "max_queued_bytes 0",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            # "... running" is an information line, and start() waits for it
            "log_type information",
            "connection_messages false",
        ]
        self.config_file.write_text("\n".join(lines) + "\n")

    def _wait_ready(self, log_offset: int) -> bool:
        # Mosquitto logs "... running" once its listener is bound; probing the port alone could
        # mistake another process that took the port for our broker.
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False
            if " running" in _read_from(self.log_file, log_offset) and _port_open(self.port):
                return True
            time.sleep(0.02)
        return False

    def _reap(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            self._process = None


def _mosquitto_version(executable: str) -> tuple[int, int]:
    try:
        # `mosquitto -h` prints its version and exits with status 3
        result = subprocess.run(
            [executable, "-h"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return (0, 0)
    match = re.search(r"mosquitto version (\d+)\.(\d+)", result.stdout + result.stderr)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open(errors="replace") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# amqtt


class AmqttBroker(LocalBroker):
    """amqtt's broker on an asyncio loop in a thread of this process (MQTT 3.1.1 only)."""

    kind = BrokerKind.AMQTT
    capabilities = BrokerCapabilities(
        mqtt5=False, shared_subscriptions=False, offline_queueing=False
    )

    def __init__(self) -> None:
        super().__init__()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None

    def start(self) -> None:
        if self._thread is not None:
            return
        last_error: BaseException | None = None
        for _ in range(_START_ATTEMPTS):
            self.port = free_port()
            try:
                self._start_on(self.port)
                log.info("started %s", self.describe())
                return
            except OSError as exc:  # the port was taken in between: try another
                last_error = exc
        raise LocalBrokerError(f"the in-process MQTT broker did not start: {last_error}")

    def _start_on(self, port: int) -> None:
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._broker = loop.run_until_complete(_start_amqtt(port))
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            _close_loop(loop)

        thread = threading.Thread(target=run, name=f"amqtt-{port}", daemon=True)
        thread.start()
        if not started.wait(_START_TIMEOUT_S):
            raise LocalBrokerError("the in-process MQTT broker did not start in time")
        if failure:
            thread.join()
            cause = failure[0]
            # amqtt wraps the bind error in its own exception
            while cause.__cause__ is not None and not isinstance(cause, OSError):
                cause = cause.__cause__
            if isinstance(cause, OSError):
                raise cause
            raise LocalBrokerError(f"the in-process MQTT broker did not start: {failure[0]}")
        self._loop = loop
        self._thread = thread

    def stop(self) -> None:
        loop, thread, broker = self._loop, self._thread, self._broker
        self._loop = self._thread = self._broker = None
        if loop is None or thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(broker.shutdown(), loop)
        with contextlib.suppress(FutureTimeout, Exception):
            future.result(_STOP_TIMEOUT_S)
        loop.call_soon_threadsafe(_stop_loop, loop)
        thread.join(_STOP_TIMEOUT_S)


async def _start_amqtt(port: int) -> Any:
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{_HOST}:{port}"}},
        # Only anonymous access: amqtt's default plugins also log every packet and publish
        # $SYS topics, which costs throughput the demo needs.
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }
    broker = Broker(config)
    await broker.start()
    return broker


def _stop_loop(loop: asyncio.AbstractEventLoop) -> None:
    loop.stop()


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    # Tasks amqtt leaves behind (handlers of clients still connected) are cancelled and awaited,
    # so the loop closes without "task was destroyed but it is pending" noise.
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


# ---------------------------------------------------------------------------------------------


def start_local_broker(state_dir: Path, *, prefer: Preference = "auto") -> LocalBroker:
    """Start the demo's broker: Mosquitto when installed (or required), else amqtt."""
    if prefer != "amqtt":
        executable = find_mosquitto()
        if executable is not None:
            broker: LocalBroker = MosquittoBroker(state_dir / "demo-broker", executable=executable)
            broker.start()
            return broker
        if prefer == "mosquitto":
            raise LocalBrokerError("mosquitto is not installed")
        log.info("no mosquitto on this machine; using the in-process broker (MQTT 3.1.1)")
    broker = AmqttBroker()
    broker.start()
    return broker

"""`aquafleet demo`: a simulated fleet through the real chain, with nothing to set up.

With no settings it starts a broker on this machine (`simulators.embedded_broker`: Mosquitto when
installed, else amqtt in-process) and the embedded PostgreSQL; with AQUAFLEET_BROKER_URL and
AQUAFLEET_DATABASE_URL it uses those. Then: migrate, import a generated sample ledger through
the ledger importer, start ingest in this process, run the fleet of the demo scenario
(`scenarios/demo.yaml`: a handful of faults of both machine classes) at high speed, and show
what the database receives. The database is left in place for the API.

The fleet is published over one MQTT connection (a gateway, in effect) rather than one per
machine: a few hundred paho clients would cost more than the whole chain being shown. A machine's
Will is published by that connection when the simulator drops the machine uncleanly, which is
what the broker would have done.

Simulated time runs so that the run ends now: device timestamps are recent, as a live fleet's
are, and ingest's clock checks accept them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TextIO

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.reasoncodes import ReasonCode

from aquafleet.config import Settings
from aquafleet.db import Database, migrate
from aquafleet.errors import AquaFleetError
from aquafleet.ledger import LedgerRepository, read_ledger_csv
from ingest.config import IngestConfig, Protocol
from ingest.worker import IngestWorker
from simulators.embedded_broker import (
    BrokerCapabilities,
    LocalBroker,
    Preference,
    start_local_broker,
)
from simulators.ledger import generate_ledger, machines_from_ledger, write_ledger_csv
from simulators.recording import BrokerConnectionError, connect_client
from simulators.scenario import load_scenario
from simulators.simulation import Simulation, SimulationConfig
from simulators.sinks import Action, Connect, Disconnect, Outgoing

__all__ = ["DEMO_SCENARIO", "DemoError", "DemoOptions", "DemoSummary", "FaultSeen", "run_demo"]

log = logging.getLogger(__name__)

DEMO_SCENARIO: Final = Path(__file__).with_name("scenarios") / "demo.yaml"
DEFAULT_MACHINES: Final = 300
DEFAULT_SEED: Final = 42
# Simulated hours and wall-clock message rates per broker: amqtt shares this process (and its
# interpreter lock) with the simulator and ingest, and tops out near 2 700 messages/s alone.
_DEFAULT_DURATION_MS: Final = {True: 6 * 3_600_000, False: 2 * 3_600_000}
_TARGET_RATE: Final = {True: 6000.0, False: 1500.0}
_DRAIN_TIMEOUT_S: Final = 60.0
_REFRESH_S: Final = 0.5
_LATEST_FAULTS: Final = 5
_GATEWAY_WINDOW: Final = 2000


class DemoError(AquaFleetError):
    """The demo could not run to its end."""


@dataclass(frozen=True)
class DemoOptions:
    machines: int = DEFAULT_MACHINES
    #: simulated duration; None: a default that suits the broker (a few hours)
    duration_ms: int | None = None
    seed: int = DEFAULT_SEED
    scenario: Path = DEMO_SCENARIO
    #: a ledger CSV to run instead of the generated sample
    ledger: Path | None = None
    live: bool = False
    #: which local broker to start when none is configured
    broker: Preference = "auto"


@dataclass(frozen=True)
class FaultSeen:
    time: datetime
    device_id: str
    code: str


@dataclass
class DemoSummary:
    machines: int = 0
    campus: int = 0
    vending: int = 0
    broker: str = ""
    database: str = ""
    simulated_ms: int = 0
    published: int = 0
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    telemetry_rows: int = 0
    fault_events: int = 0
    machines_reporting: int = 0
    online: int = 0
    online_peak: int = 0
    latest_faults: list[FaultSeen] = field(default_factory=list)
    elapsed_s: float = 0.0


# ---------------------------------------------------------------------------------------------


def run_demo(settings: Settings, options: DemoOptions, out: TextIO) -> DemoSummary:
    started = time.monotonic()
    summary = DemoSummary()
    with Database.open(settings) as database:
        migrate(database)
        summary.database = (
            f"embedded PostgreSQL in {settings.state_dir / 'pgdata'}"
            if database.embedded is not None
            else _redact(database.url)
        )
        ledger_path = options.ledger or _sample_ledger(settings, options)
        ledger = read_ledger_csv(ledger_path, default_timezone=settings.timezone)
        with database.connection() as conn:
            LedgerRepository(conn).import_file(ledger)
        machines = machines_from_ledger(ledger)
        if not machines:
            raise DemoError(f"{ledger_path} has no active machines")
        summary.machines = len(machines)
        summary.vending = sum(1 for m in machines if m.machine_class.value == "vending")
        summary.campus = summary.machines - summary.vending

        local: LocalBroker | None = None
        if settings.broker_url is None:
            local = start_local_broker(settings.state_dir, prefer=options.broker)
            settings = settings.model_copy(update={"broker_url": local.url})
            capabilities = local.capabilities
            summary.broker = local.describe()
        else:
            capabilities = BrokerCapabilities(
                mqtt5=True, shared_subscriptions=True, offline_queueing=True
            )
            summary.broker = settings.broker_url
        try:
            _run_fleet(settings, options, database, machines, capabilities, summary, out)
        finally:
            if local is not None:
                local.stop()
    summary.elapsed_s = time.monotonic() - started
    return summary


def _highest_stored_boot(database: Database) -> int:
    # The demo's machines run again into a database that may hold an earlier run: they power up
    # again, past every boot stored, as real machines would.
    with database.connection(autocommit=True) as conn:
        row = conn.execute("SELECT max(boot) FROM message_keys").fetchone()
    return int(str(row[0])) if row is not None and row[0] is not None else 0


def _run_fleet(
    settings: Settings,
    options: DemoOptions,
    database: Database,
    machines: Sequence[object],
    capabilities: BrokerCapabilities,
    summary: DemoSummary,
    out: TextIO,
) -> None:
    fast = capabilities.mqtt5
    duration_ms = options.duration_ms or _DEFAULT_DURATION_MS[fast]
    scenario = load_scenario(options.scenario, timezone=settings.timezone)
    interval_s = scenario.telemetry_interval_s or 60
    # the run ends now, to the minute: timestamps are as recent as a live fleet's
    end_ms = int(time.time() // 60 * 60_000)
    start_ms = end_ms - duration_ms
    config = SimulationConfig(
        boot_offset=_highest_stored_boot(database),
        machines=tuple(machines),  # type: ignore[arg-type]
        start_ms=start_ms,
        duration_ms=duration_ms,
        seed=options.seed,
        interval_s=interval_s,
        scenario=scenario,
    )
    # about one message per machine per interval, plus events
    speed = _TARGET_RATE[fast] * interval_s / max(1, len(machines))
    summary.simulated_ms = duration_ms

    worker = IngestWorker(_ingest_config(settings, capabilities), database)
    worker.start()
    display: _Display | None = None
    try:
        sink = _GatewaySink(settings)
        try:
            simulation = Simulation(config, sink)
            display = _Display(
                database, worker, simulation, sink, summary, out, start_ms, draw=options.live
            )
            display.start()
            stop = threading.Event()
            try:
                simulation.run(speed=speed, stop=stop, on_tick=lambda _s: worker.check())
            except KeyboardInterrupt:
                stop.set()
                raise
        finally:
            sink.close()
        _wait_drained(worker, sink.published)
    finally:
        worker.stop()
        if display is not None:
            display.stop()
    display.refresh()
    counters = worker.counters()
    summary.published = sink.published
    summary.stored = counters.stored
    summary.duplicates = counters.duplicates
    summary.quarantined = counters.quarantined


def _ingest_config(settings: Settings, capabilities: BrokerCapabilities) -> IngestConfig:
    target = settings.broker_host_port
    assert target is not None
    password = settings.broker_password.get_secret_value() if settings.broker_password else None
    config = IngestConfig(
        host=target[0],
        port=target[1],
        username=settings.broker_username,
        password=password,
        tls=settings.broker_tls,
        client_id=f"aquafleet-demo-ingest-{os.getpid()}",
        # the demo's ingest lives as long as the demo: nothing should queue for it afterwards
        session_expiry_s=0,
        batch_ms=20,
    )
    if not capabilities.shared_subscriptions:
        # amqtt grants a $share subscription and then delivers nothing on it
        config = replace(config, shared=False)
    if not capabilities.mqtt5:
        config = replace(config, protocol=Protocol.V311)
    return config


def _wait_drained(worker: IngestWorker, published: int) -> None:
    deadline = time.monotonic() + _DRAIN_TIMEOUT_S
    while True:
        worker.check()
        c = worker.counters()
        if c.received >= published and c.stored + c.duplicates + c.quarantined >= c.received:
            return
        if time.monotonic() > deadline:
            raise DemoError(
                f"ingest took {c.received} of {published} messages in {_DRAIN_TIMEOUT_S:.0f} s"
            )
        time.sleep(0.05)


def _sample_ledger(settings: Settings, options: DemoOptions) -> Path:
    """The demo's ledger, generated as production would keep it, then imported like theirs."""
    path = settings.state_dir / "demo" / f"sample-ledger-{options.machines}-{options.seed}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    ledger = generate_ledger(options.machines, seed=options.seed, timezone=settings.timezone)
    write_ledger_csv(ledger, path)
    return path


def _redact(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


# ---------------------------------------------------------------------------------------------
# publishing


class _GatewaySink:
    """Publishes the fleet's actions over one connection, emulating each machine's Will."""

    def __init__(self, settings: Settings) -> None:
        self._client = connect_client(settings, client_id=f"aquafleet-demo-fleet-{os.getpid()}")
        self._window = threading.BoundedSemaphore(_GATEWAY_WINDOW)
        self._wills: dict[str, Outgoing] = {}
        self._commands: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._lost: str | None = None
        self.published = 0
        self._client.on_publish = self._on_publish
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        # commands ingest sends devices (resend requests) reach the simulated firmware
        self._client.subscribe("aquafleet/v1/+/cmd", 1)

    def send(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, Outgoing):
                self._publish(action)
            elif isinstance(action, Connect):
                self._wills[action.device_id] = action.will
            elif isinstance(action, Disconnect):
                will = self._wills.pop(action.device_id, None)
                if action.send_will and will is not None:
                    self._publish(will)

    def commands(self) -> list[tuple[str, bytes]]:
        with self._lock:
            taken, self._commands = self._commands, []
        return taken

    def close(self) -> None:
        # wait for the broker to take everything published
        deadline = time.monotonic() + _DRAIN_TIMEOUT_S
        taken = 0
        while taken < _GATEWAY_WINDOW and time.monotonic() < deadline and self._lost is None:
            if self._window.acquire(timeout=0.2):
                taken += 1
        for _ in range(taken):
            self._window.release()
        self._client.on_disconnect = None
        self._client.disconnect()
        self._client.loop_stop()

    def _publish(self, message: Outgoing) -> None:
        while not self._window.acquire(timeout=0.5):
            if self._lost is not None:
                raise BrokerConnectionError(f"lost the broker: {self._lost}")
        self._client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
        self.published += 1

    def _on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, reason: ReasonCode, props: object
    ) -> None:
        self._window.release()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason: ReasonCode,
        props: object = None,
    ) -> None:
        self._lost = str(reason)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if mqtt.topic_matches_sub("aquafleet/v1/+/cmd", msg.topic):
            with self._lock:
                self._commands.append((msg.topic, bytes(msg.payload)))


# ---------------------------------------------------------------------------------------------
# what the database receives, on screen

_ONLINE = """
SELECT count(*) FILTER (WHERE presence = 'online'), count(*)
FROM device_state WHERE device_id = ANY(%s)
"""
_TELEMETRY_ROWS = "SELECT count(*) FROM telemetry WHERE time >= %s AND device_id = ANY(%s)"
_FAULTS = """
SELECT count(*) FROM device_events
WHERE kind = 'fault_raised' AND time >= %s AND device_id = ANY(%s)
"""
_LATEST = """
SELECT time, device_id, code FROM device_events
WHERE kind = 'fault_raised' AND time >= %s AND device_id = ANY(%s)
ORDER BY time DESC, device_id LIMIT %s
"""


class _Display:
    """Reads what arrived, every half second; on a terminal, redraws a few lines in place."""

    def __init__(
        self,
        database: Database,
        worker: IngestWorker,
        simulation: Simulation,
        sink: _GatewaySink,
        summary: DemoSummary,
        out: TextIO,
        start_ms: int,
        *,
        draw: bool,
    ) -> None:
        self._draw_enabled = draw
        self._database = database
        self._worker = worker
        self._simulation = simulation
        self._sink = sink
        self._summary = summary
        self._out = out
        self._since = datetime.fromtimestamp(start_ms / 1000, UTC)
        self._start_ms = start_ms
        self._ids = list(simulation.ids)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = 0
        self._last: tuple[float, int] = (time.monotonic(), 0)
        self._rate = 0.0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="demo-display", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def refresh(self) -> None:
        """Read the database's view into the summary."""
        s = self._summary
        with self._database.connection(autocommit=True) as conn:
            row = conn.execute(_ONLINE, (self._ids,)).fetchone()
            s.online, s.machines_reporting = (int(str(row[0])), int(str(row[1]))) if row else (0, 0)
            s.online_peak = max(s.online_peak, s.online)
            s.telemetry_rows = _count(conn, _TELEMETRY_ROWS, (self._since, self._ids))
            s.fault_events = _count(conn, _FAULTS, (self._since, self._ids))
            s.latest_faults = [
                FaultSeen(time=t, device_id=str(d), code=str(c))  # type: ignore[arg-type]
                for t, d, c in conn.execute(_LATEST, (self._since, self._ids, _LATEST_FAULTS))
            ]

    def _loop(self) -> None:
        while not self._stop.wait(_REFRESH_S):
            try:
                self.refresh()
            except (psycopg.Error, AquaFleetError) as exc:
                log.debug("display refresh failed: %s", exc)
                continue
            if self._draw_enabled:
                self._draw()
        self._clear()

    def _draw(self) -> None:
        s = self._summary
        counters = self._worker.counters()
        now = time.monotonic()
        then, before = self._last
        if now - then >= 1.0:
            self._rate = (counters.stored - before) / (now - then)
            self._last = (now, counters.stored)
        simulated = self._simulation.now_ms - self._start_ms
        lines = [
            f"simulated {_hm(simulated)} of {_hm(s.simulated_ms)}   "
            f"published {self._sink.published:,}   stored {counters.stored:,} "
            f"({self._rate:,.0f}/s)   quarantined {counters.quarantined:,}",
            f"machines online {s.online:,} of {s.machines:,}   telemetry rows {s.telemetry_rows:,}"
            f"   faults raised {s.fault_events:,}",
            "latest faults:",
            *[f"  {f.time:%H:%M} UTC  {f.device_id:<14} {f.code}" for f in s.latest_faults],
        ]
        self._clear()
        self._out.write("\n".join(lines) + "\n")
        self._out.flush()
        self._drawn = len(lines)

    def _clear(self) -> None:
        if self._drawn:
            # cursor up over the last drawing, then erase to the end of the screen
            self._out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._out.flush()
            self._drawn = 0


def _count(
    conn: psycopg.Connection[tuple[object, ...]], query: str, params: tuple[object, ...]
) -> int:
    row = conn.execute(query, params).fetchone()
    return int(str(row[0])) if row else 0


def _hm(ms: int) -> str:
    minutes = max(0, ms) // 60_000
    return f"{minutes // 60}h{minutes % 60:02d}"


def format_summary(summary: DemoSummary) -> list[str]:
    s = summary
    lines = [
        f"demo: {s.machines} machines ({s.campus} campus, {s.vending} vending), "
        f"{_hm(s.simulated_ms)} simulated in {s.elapsed_s:.0f} s",
        f"broker: {s.broker}",
        f"database: {s.database}",
        f"published {s.published:,} messages; ingest stored {s.stored:,}, "
        f"{s.duplicates:,} duplicate(s), {s.quarantined:,} quarantined",
        f"telemetry rows {s.telemetry_rows:,}; {s.machines_reporting:,} machines reported, "
        f"{s.online_peak:,} online at the peak; {s.fault_events:,} fault(s) raised",
    ]
    if s.latest_faults:
        lines.append("latest faults:")
        lines += [
            f"  {f.time:%Y-%m-%d %H:%M} UTC  {f.device_id:<14} {f.code}" for f in s.latest_faults
        ]
    lines.append("the data stays in the database: try 'aquafleet db status'")
    return lines

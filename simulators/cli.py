"""`aquafleet simulate`: run a simulated fleet against the broker, or write a generated ledger."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

from aquafleet.cli.app import EXIT_OK, add_command, err, out, positive_float, positive_int
from aquafleet.config import Settings
from aquafleet.errors import UsageError
from simulators.ledger import (
    MachineSpec,
    gateway_assignment,
    generate_ledger,
    machines_from_csv,
    machines_from_database,
    machines_from_ledger,
    write_ledger_csv,
)
from simulators.mqtt import BrokerAddress, MqttSink
from simulators.progress import Progress
from simulators.run import run_simulation
from simulators.scenario import Scenario, load_scenario
from simulators.simulation import SimulationConfig
from simulators.timespec import parse_duration_ms, parse_when, to_epoch_ms

#: Up to this many machines, each gets its own connection in ``auto`` mode.
PER_DEVICE_LIMIT = 200
_DEFAULT_MACHINES = 10
_DEFAULT_GENERATED_GATEWAYS = 4


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = add_command(
        commands,
        "simulate",
        "run a simulated fleet that publishes over MQTT as real machines do",
        _simulate,
        description=(
            "Run a fleet of simulated machines (both classes) publishing under the device "
            "protocol to the broker (AQUAFLEET_BROKER_URL or --broker-url). Machines come from "
            "--ledger, --from-db, or a generated ledger of --machines N. Faults and misbehaviours "
            "come from --scenario; their ground truth goes to --ground-truth. With "
            "--generate-ledger N --out FILE it only writes a ledger CSV (with --gateways G, its "
            "machines reach the broker through G gateways). In multiplexed mode the gateways are "
            "the ledger's; machines the ledger puts behind none share --gateways generated ones."
        ),
    )
    src = p.add_argument_group("machines")
    src.add_argument("--machines", type=positive_int, metavar="N", help="generate N machines")
    src.add_argument("--ledger", type=Path, metavar="FILE.csv", help="machines of a ledger CSV")
    src.add_argument("--from-db", action="store_true", help="machines of the imported ledger")
    src.add_argument(
        "--vending-share", type=float, default=None, metavar="F",
        help="share of vending machines when generating (default 0.4)",
    )  # fmt: skip
    src.add_argument(
        "--generate-ledger", type=positive_int, metavar="N",
        help="write a ledger CSV of N machines to --out and exit",
    )  # fmt: skip
    src.add_argument("--out", type=Path, metavar="FILE.csv", help="where --generate-ledger writes")
    run = p.add_argument_group("run")
    run.add_argument("--scenario", type=Path, metavar="FILE", help="YAML/TOML/JSON scenario")
    run.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    pace = run.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed", type=positive_float, metavar="K",
        help="simulated time runs K times faster than real time (default 1)",
    )  # fmt: skip
    pace.add_argument(
        "--as-fast-as-possible", action="store_true",
        help="no pacing; messages carry simulated timestamps (needs a duration)",
    )  # fmt: skip
    run.add_argument("--duration", metavar="D", help="simulated duration, e.g. 90m, 2d")
    run.add_argument(
        "--start", metavar="TIME",
        help="simulated start (ISO 8601); default: so the run ends about now",
    )  # fmt: skip
    run.add_argument("--interval", metavar="D", help="telemetry interval (default 60s)")
    run.add_argument("--ground-truth", type=Path, metavar="FILE", help="write injected faults")
    run.add_argument(
        "--repairs", type=Path, metavar="FILE",
        help="repair actions: a YAML/TOML/JSON list, or JSON lines read as the file grows",
    )  # fmt: skip
    net = p.add_argument_group("broker")
    net.add_argument("--broker-url", metavar="URL", help="mqtt://host:port (default: settings)")
    net.add_argument(
        "--connection", choices=("auto", "per-device", "multiplexed"), default="auto",
        help=f"one connection per machine, or a few gateways (auto: gateways when the ledger "
        f"names them, else per machine up to {PER_DEVICE_LIMIT} machines)",
    )  # fmt: skip
    net.add_argument(
        "--gateways", type=positive_int, metavar="G",
        help="with --generate-ledger: put the machines behind G gateways (default: none); "
        "when running multiplexed: G generated gateways carry the machines the ledger puts "
        f"behind none (default {_DEFAULT_GENERATED_GATEWAYS})",
    )  # fmt: skip


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    if args.generate_ledger is not None:
        if args.out is None:
            raise UsageError("--generate-ledger needs --out FILE.csv")
        gateways = args.gateways or 0
        if gateways > args.generate_ledger:
            raise UsageError("--gateways must not exceed the number of machines")
        ledger = generate_ledger(
            args.generate_ledger,
            seed=args.seed or 0,
            vending_share=_share(args.vending_share, None),
            timezone=settings.timezone,
            gateways=gateways,
        )
        write_ledger_csv(ledger, args.out)
        behind = f" behind {gateways} gateways" if gateways else ""
        out(
            f"wrote {len(ledger.devices)} machines at {len(ledger.sites)} sites{behind}"
            f" to {args.out}"
        )
        return EXIT_OK
    scenario = (
        load_scenario(args.scenario, timezone=settings.timezone) if args.scenario else Scenario()
    )
    seed = args.seed if args.seed is not None else (scenario.seed or 0)
    machines = _machines(args, settings, scenario, seed)
    duration_ms = _duration(args.duration, "--duration") if args.duration else scenario.duration_ms
    speed = None if args.as_fast_as_possible else (args.speed or 1.0)
    if speed is None and duration_ms is None:
        raise UsageError("--as-fast-as-possible needs --duration (or a duration in the scenario)")
    interval_s = scenario.telemetry_interval_s or 60
    if args.interval:
        interval_ms = _duration(args.interval, "--interval")
        if interval_ms % 1000 or not 5_000 <= interval_ms <= 3_600_000:
            raise UsageError("--interval must be whole seconds between 5s and 1h")
        interval_s = interval_ms // 1000
    start_ms = _start(args.start, settings, scenario, duration_ms, speed, interval_s)
    broker = _broker(args.broker_url, settings)
    mode = args.connection
    if mode == "auto":
        # Machines the ledger puts behind a gateway reach the broker through it, as in the field.
        behind_gateways = any(m.gateway_id for m in machines)
        small = len(machines) <= PER_DEVICE_LIMIT
        mode = "per-device" if small and not behind_gateways else "multiplexed"
    config = SimulationConfig(
        machines=machines,
        start_ms=start_ms,
        duration_ms=duration_ms,
        seed=seed,
        interval_s=interval_s,
        scenario=scenario,
    )
    sink = MqttSink(
        broker,
        mode=mode,
        gateways=args.gateways or _DEFAULT_GENERATED_GATEWAYS,
        start_ms=start_ms,
        gateway_of=gateway_assignment(machines),
    )
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, _stopper(stop))
    wall0 = time.monotonic()
    try:
        stats = run_simulation(
            config,
            sink,
            speed=speed,
            stop=stop,
            ground_truth=args.ground_truth,
            repairs=args.repairs,
            progress=Progress(),
            timezone=settings.timezone,
        )
    except KeyboardInterrupt:
        err("aquafleet simulate: interrupted")
        return 130
    finally:
        sink.close()
        signal.signal(signal.SIGTERM, previous)
    wall = time.monotonic() - wall0
    err(
        f"simulated {len(machines)} machines for {stats.machine_minutes / len(machines):,.0f} min:"
        f" {stats.messages:,} messages in {wall:,.1f} s, {stats.faults_started} faults injected"
    )
    return EXIT_OK


def _stopper(stop: threading.Event) -> Callable[[int, FrameType | None], None]:
    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    return handler


def _share(cli: float | None, scenario: float | None) -> float:
    value = cli if cli is not None else scenario if scenario is not None else 0.4
    if not 0.0 <= value <= 1.0:
        raise UsageError("--vending-share must be between 0 and 1")
    return value


def _duration(text: str, option: str) -> int:
    try:
        value = parse_duration_ms(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None
    if value <= 0:
        raise UsageError(f"{option} must be longer than 0")
    return value


def _machines(
    args: argparse.Namespace, settings: Settings, scenario: Scenario, seed: int
) -> tuple[MachineSpec, ...]:
    sources = [bool(args.ledger), bool(args.from_db), args.machines is not None]
    if sum(sources) > 1:
        raise UsageError("give only one of --ledger, --from-db, --machines")
    if args.ledger:
        return machines_from_csv(args.ledger, default_timezone=settings.timezone)
    if args.from_db:
        return machines_from_database(settings)
    n = args.machines or scenario.machines or _DEFAULT_MACHINES
    share = _share(args.vending_share, scenario.vending_share)
    return machines_from_ledger(
        generate_ledger(n, seed=seed, vending_share=share, timezone=settings.timezone)
    )


def _start(
    text: str | None,
    settings: Settings,
    scenario: Scenario,
    duration_ms: int | None,
    speed: float | None,
    interval_s: int,
) -> int:
    if text is not None:
        try:
            when = parse_when(text, settings.zone)
        except ValueError as exc:
            raise UsageError(f"--start: {exc}") from None
        if when.epoch_ms is None:
            raise UsageError("--start must be a time, not an offset")
        return when.epoch_ms
    if scenario.start is not None and scenario.start.epoch_ms is not None:
        return scenario.start.epoch_ms
    now = to_epoch_ms(_now(), settings.zone)
    now -= now % (interval_s * 1000)
    if duration_ms is None:
        return now
    # End about now, so that ingest's clock checks accept the timestamps: fast runs replay the
    # recent past; paced runs start in the past and catch up with the wall clock at the end.
    wall_ms = 0 if speed is None else int(duration_ms / speed)
    return now - duration_ms + wall_ms


def _now() -> datetime:
    return datetime.now(UTC)


def _broker(url: str | None, settings: Settings) -> BrokerAddress:
    url = url or settings.broker_url
    if not url:
        raise UsageError(
            "no broker: set AQUAFLEET_BROKER_URL or pass --broker-url mqtt://host:port"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp") or not parts.hostname:
        raise UsageError(f"--broker-url must be mqtt://host:port, got {url!r}")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise UsageError(f"--broker-url has a bad port: {url!r}") from None
    password = settings.broker_password.get_secret_value() if settings.broker_password else None
    return BrokerAddress(
        host=parts.hostname,
        port=port,
        username=settings.broker_username,
        password=password,
        tls=parts.scheme == "mqtts",
    )

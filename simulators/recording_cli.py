"""`aquafleet record`, `aquafleet replay` and `aquafleet demo`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aquafleet.cli.app import (
    EXIT_OK,
    add_command,
    err,
    out,
    positive_float,
    positive_int,
)
from aquafleet.config import Settings
from simulators.demo import (
    DEFAULT_MACHINES,
    DEFAULT_SEED,
    DEMO_SCENARIO,
    DemoOptions,
    format_summary,
    run_demo,
)
from simulators.recording import DEFAULT_FILTERS, Recorder, with_broker_url
from simulators.replay import Replayer
from simulators.timespec import parse_duration_ms


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    record = add_command(
        commands,
        "record",
        "record the fleet's MQTT traffic to a file, for replay",
        _record,
        description="Subscribe to the fleet's topics (MQTT 5, QoS 1) and write every message, "
        "retained presence included, to a compact streamable file; a name ending in .gz is "
        "compressed. Stops at --duration, --max-messages, or Ctrl-C; the file stays readable "
        "up to its last whole message if the recorder is killed.",
    )
    record.add_argument("--out", type=Path, required=True, metavar="FILE", help="recording file")
    record.add_argument(
        "--topic",
        dest="topics",
        action="append",
        metavar="FILTER",
        help=f"topic filter to record, repeatable (default: {' '.join(DEFAULT_FILTERS)})",
    )
    record.add_argument(
        "--duration", type=positive_float, metavar="SECONDS", help="stop after this long"
    )
    record.add_argument(
        "--max-messages", type=positive_int, metavar="N", help="stop after N messages"
    )
    _broker_argument(record)

    replay = add_command(
        commands,
        "replay",
        "republish a recording with its timing scaled",
        _replay,
        description="Republish every message of a recording with its QoS and retain flag, "
        "payloads byte for byte, K times faster than recorded (--speed K) or as fast as the "
        "broker takes them. Ingest refuses live data more than a day old (clock_past): replay "
        "an older recording with --retime.",
    )
    replay.add_argument("file", type=Path, metavar="FILE", help="a file made by aquafleet record")
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed",
        type=positive_float,
        default=1.0,
        metavar="K",
        help="K times the recorded pace (default: 1, as recorded)",
    )
    pace.add_argument(
        "--as-fast-as-possible",
        action="store_true",
        help="ignore the recorded timing; publish as fast as the broker acknowledges",
    )
    replay.add_argument(
        "--retime",
        action="store_true",
        help="move device timestamps onto the replay's clock (each message stamped as much "
        "later as it is published later than recorded), instead of sending them as recorded",
    )
    _broker_argument(replay)

    demo = add_command(
        commands,
        "demo",
        "run a simulated fleet through the real chain, with nothing to set up",
        _demo,
        description="Start a broker (Mosquitto if installed, else one in this process) and the "
        "embedded PostgreSQL, import a sample ledger, run a fleet of both machine classes with "
        "a handful of faults at high speed through ingest, and show what arrives. The database "
        "is left in place. With AQUAFLEET_BROKER_URL and AQUAFLEET_DATABASE_URL set, uses "
        "those instead.",
    )
    demo.add_argument(
        "--machines",
        type=positive_int,
        default=DEFAULT_MACHINES,
        metavar="N",
        help=f"fleet size (default: {DEFAULT_MACHINES})",
    )
    demo.add_argument(
        "--duration",
        type=_duration,
        metavar="DURATION",
        help="simulated time, e.g. 90m or 6h (default: 6h, or 2h on the in-process broker)",
    )
    demo.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"fleet seed (default: {DEFAULT_SEED})"
    )
    demo.add_argument(
        "--scenario", type=Path, default=DEMO_SCENARIO, metavar="FILE", help="faults to inject"
    )
    demo.add_argument(
        "--ledger", type=Path, metavar="FILE.csv", help="a ledger to run instead of the sample"
    )
    demo.add_argument(
        "--broker",
        choices=["auto", "mosquitto", "amqtt"],
        default="auto",
        help="the local broker when AQUAFLEET_BROKER_URL is unset: Mosquitto if installed "
        "(auto, the default), or amqtt in this process (MQTT 3.1.1 only)",
    )


def _duration(text: str) -> int:
    try:
        ms = parse_duration_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if ms < 60_000:
        raise argparse.ArgumentTypeError(f"{text} is shorter than a minute")
    return ms


def _broker_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker-url",
        metavar="URL",
        help="mqtt://host:port of the broker (default: AQUAFLEET_BROKER_URL)",
    )


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C and SIGTERM end the command cleanly (the file closed, the summary printed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _record(args: argparse.Namespace, settings: Settings) -> int:
    settings = with_broker_url(settings, args.broker_url)
    filters = tuple(args.topics or DEFAULT_FILTERS)
    recorder = Recorder(settings, args.out, filters=filters, max_messages=args.max_messages)
    stop = threading.Event()
    with _stop_on_signals(stop):
        recorder.start()
        started = time.monotonic()
        err(f"recording {' '.join(filters)} from {settings.broker_url} to {args.out}")
        try:
            deadline = started + args.duration if args.duration else None
            while not stop.is_set() and not recorder.full.is_set():
                recorder.check()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                stop.wait(0.2 if left is None else min(0.2, left))
        finally:
            recorder.stop()
    recorder.check()
    err(
        f"recorded {recorder.messages} message(s) in {time.monotonic() - started:.1f} s "
        f"to {args.out}"
    )
    return EXIT_OK


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    settings = with_broker_url(settings, args.broker_url)
    speed = None if args.as_fast_as_possible else args.speed
    stop = threading.Event()
    with _stop_on_signals(stop):
        result = Replayer(settings, args.file, speed=speed, retime=args.retime).run(stop=stop)
    stopped = " (stopped early)" if stop.is_set() else ""
    err(
        f"replayed {result.published} message(s) spanning {result.recorded_s:.1f} s "
        f"in {result.elapsed_s:.1f} s to {settings.broker_url}{stopped}"
    )
    # a cut tail was already reported, with its frame count, as the reader met it
    return EXIT_OK


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    options = DemoOptions(
        machines=args.machines,
        duration_ms=args.duration,
        seed=args.seed,
        scenario=args.scenario,
        ledger=args.ledger,
        live=sys.stdout.isatty(),
        broker=args.broker,
    )
    if not args.verbose:
        # amqtt logs every refused MQTT 5 attempt and client disconnect as a warning, and its
        # state machine library logs every transition
        logging.getLogger("amqtt").setLevel(logging.ERROR)
        logging.getLogger("transitions").setLevel(logging.WARNING)
    summary = run_demo(settings, options, sys.stdout)
    for line in format_summary(summary):
        out(line)
    return EXIT_OK

"""`aquafleet ingest`: consume the fleet's messages into the database.

The broker comes from AQUAFLEET_BROKER_URL (with AQUAFLEET_BROKER_USERNAME/PASSWORD), the
database from AQUAFLEET_DATABASE_URL (or the embedded one), metrics from
AQUAFLEET_METRICS_PORT or ``--metrics-port``.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from typing import Any

from aquafleet.cli.app import EXIT_OK, add_command, out, positive_int
from aquafleet.config import Settings
from aquafleet.db import Database, migrate
from aquafleet.errors import ConfigError
from ingest import logs
from ingest.broker import cli as broker_cli
from ingest.config import DEFAULT_GROUP, IngestConfig, Protocol, default_client_id
from ingest.retire import retire_session
from ingest.runner import RunOptions, run_ingest

log = logging.getLogger("ingest.cli")


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    broker_cli.register(commands)
    parser = add_command(
        commands,
        "ingest",
        "consume device messages from the broker into the database",
        _ingest,
        description="Consume the fleet's messages from the MQTT broker (QoS 1, persistent "
        "session, shared subscription) and store them: every message the broker accepted is "
        "stored once, or quarantined with its reason. Runs until SIGTERM or Ctrl-C.",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        metavar="N",
        help="worker processes on this machine, each a member of the shared subscription "
        "(default: 1)",
    )
    parser.add_argument(
        "--client-id",
        default=None,
        metavar="ID",
        help="MQTT client id; keep it stable, the broker keeps the session under it "
        "(default: aquafleet-ingest-HOSTNAME; each worker adds -0, -1, ...)",
    )
    parser.add_argument(
        "--retire-session",
        default=None,
        metavar="ID",
        help="store what the broker queued for the session of client ID (a worker no longer "
        "run, e.g. after lowering --workers), then end that session and exit",
    )
    parser.add_argument(
        "--group",
        default=DEFAULT_GROUP,
        metavar="NAME",
        help=f"shared subscription group (default: {DEFAULT_GROUP})",
    )
    parser.add_argument(
        "--no-shared",
        action="store_true",
        help="subscribe without a shared subscription (brokers without them; one worker only)",
    )
    parser.add_argument(
        "--protocol",
        choices=[p.value for p in Protocol],
        default=Protocol.AUTO.value,
        help="MQTT version (default: auto, 5 with a fall-back to 3.1.1)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="P",
        help="serve Prometheus metrics on this port (default: AQUAFLEET_METRICS_PORT; unset: off)",
    )
    parser.add_argument(
        "--batch-rows",
        type=positive_int,
        default=2000,
        metavar="N",
        help="most messages per database transaction (default: 2000)",
    )
    parser.add_argument(
        "--batch-ms",
        type=positive_int,
        default=50,
        metavar="N",
        help="longest wait for a batch to fill, in milliseconds (default: 50)",
    )
    parser.add_argument(
        "--max-inflight",
        type=positive_int,
        default=4000,
        metavar="N",
        help="most messages received and not yet committed, per worker (default: 4000)",
    )
    parser.add_argument(
        "--reorder-window",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds a sequence hole may stay open before a resend is asked for (default: 10)",
    )
    parser.add_argument(
        "--writer",
        choices=["process", "thread"],
        default="process",
        help="decode and write in a process of their own (default) or a thread of the worker",
    )
    parser.add_argument(
        "--relay-commands",
        action="store_true",
        help="also publish queued commands (resend requests); needs an account allowed to "
        "write command topics (see 'aquafleet broker relay')",
    )
    parser.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not apply pending schema migrations at start",
    )


def broker_config(settings: Settings, **overrides: Any) -> IngestConfig:
    """The broker connection of the settings, as an IngestConfig."""
    host_port = settings.broker_host_port
    if host_port is None:
        raise ConfigError(["AQUAFLEET_BROKER_URL: is not set (ingest needs the broker's address)"])
    password = settings.broker_password
    return IngestConfig(
        host=host_port[0],
        port=host_port[1],
        username=settings.broker_username,
        password=password.get_secret_value() if password is not None else None,
        tls=settings.broker_tls,
        **overrides,
    )


def _ingest(args: argparse.Namespace, settings: Settings) -> int:
    host_port = settings.broker_host_port
    if host_port is None:
        raise ConfigError(["AQUAFLEET_BROKER_URL: is not set (ingest needs the broker's address)"])
    if args.no_shared and args.workers > 1:
        raise ConfigError(
            ["--no-shared: several workers without a shared subscription would each get everything"]
        )
    logs.configure(settings.log_format, verbose=args.verbose)
    metrics_port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
    if metrics_port is not None and not 0 <= metrics_port <= 65535:
        raise ConfigError([f"--metrics-port: {metrics_port} is not a port number"])
    config = broker_config(
        settings,
        client_id=args.client_id or default_client_id(),
        group=args.group,
        shared=not args.no_shared,
        protocol=Protocol(args.protocol),
        batch_rows=args.batch_rows,
        batch_ms=args.batch_ms,
        max_inflight=max(args.max_inflight, args.batch_rows),
        reorder_window_s=args.reorder_window,
    )
    if args.retire_session is not None:
        if args.workers > 1 or args.no_shared:
            raise ConfigError(["--retire-session: retires one session; drop --workers/--no-shared"])
        config = replace(config, client_id=args.retire_session)
    with Database.open(settings) as database:
        if not args.no_migrate:
            for applied in migrate(database):
                log.info("applied migration %04d_%s", applied.version, applied.name)
        if args.retire_session is not None:
            counters = retire_session(config, database)
            out(
                f"retired session {args.retire_session}: {counters.received} message(s) "
                f"received, {counters.stored} stored, {counters.duplicates} duplicate(s), "
                f"{counters.quarantined} quarantined"
            )
            return EXIT_OK
        run_ingest(
            config,
            database.url,
            RunOptions(
                workers=args.workers,
                metrics_port=metrics_port,
                log_format=settings.log_format,
                verbose=args.verbose,
                relay_commands=args.relay_commands,
                writer_process=args.writer == "process",
            ),
        )
    return EXIT_OK

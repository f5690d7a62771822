"""`aquafleet db ...`: the store's schema, status and retention."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from datetime import timedelta

from aquafleet.cli.app import EXIT_OK, add_command, add_group, out, positive_int
from aquafleet.config import Settings
from aquafleet.db import Database, describe, migrate, prune


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = add_group(commands, "db", "the database: schema, status, retention")
    add_command(
        group,
        "migrate",
        "apply pending schema migrations (safe to run from several processes at once)",
        _migrate,
    )
    status = add_command(
        group, "status", "show the server, TimescaleDB or not, schema version, table sizes", _status
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    prune_cmd = add_command(
        group,
        "prune",
        "delete raw telemetry older than the retention period",
        _prune,
        description="Delete raw telemetry older than the retention period: whole chunks on "
        "TimescaleDB, batched deletes on plain PostgreSQL.",
    )
    prune_cmd.add_argument(
        "--older-than-days",
        type=positive_int,
        metavar="DAYS",
        help="retention period in days (default: AQUAFLEET_TELEMETRY_RETENTION_DAYS)",
    )


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    with Database.open(settings) as database:
        applied = migrate(database)
    if applied:
        for migration in applied:
            out(f"applied {migration.version:04d}_{migration.name}")
    else:
        out("schema is up to date")
    return EXIT_OK


def _status(args: argparse.Namespace, settings: Settings) -> int:
    with Database.open(settings) as database:
        status = describe(database)
    if args.json:
        document = asdict(status) | {"backend": status.backend, "pending": status.pending}
        out(json.dumps(document, default=str))
        return EXIT_OK
    out(f"store:   {status.backend}{' (embedded)' if status.embedded else ''}")
    out(
        f"schema:  version {status.schema_version} of {status.latest_version}"
        + (f" ({status.pending} pending: run 'aquafleet db migrate')" if status.pending else "")
    )
    if status.tables:
        out(f"{'table':<24} {'rows':>12} {'size':>10}")
        for table in status.tables:
            kind = "  hypertable" if table.hypertable else ""
            out(f"{table.name:<24} {table.rows:>12} {_human_bytes(table.bytes):>10}{kind}")
    return EXIT_OK


def _prune(args: argparse.Namespace, settings: Settings) -> int:
    days = args.older_than_days or settings.telemetry_retention_days
    with Database.open(settings) as database:
        results = prune(database, timedelta(days=days))
    for result in results:
        if result.chunks_dropped or not result.rows_deleted:
            what = f"{result.chunks_dropped} chunk(s) dropped"
        else:
            what = f"{result.rows_deleted} row(s) deleted"
        out(f"{result.table}: {what} older than {result.cutoff:%Y-%m-%d %H:%M} UTC")
    return EXIT_OK


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover

"""`aquafleet broker ...`: the production broker's configuration and credentials."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

from aquafleet.cli.app import EXIT_OK, add_command, add_group, out
from aquafleet.config import Settings
from aquafleet.db import Database
from aquafleet.ledger import DeviceStatus, LedgerRepository
from ingest import logs
from ingest.broker.credentials import (
    ACL_FILE,
    CLEAR_NAME,
    INGEST_USER,
    MOSQUITTO_CONF,
    PASSWD_NAME,
    write_credentials,
)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = add_group(commands, "broker", "the production MQTT broker: configuration, credentials")
    creds = add_command(
        group,
        "credentials",
        "write the broker's password file and ACL for every active machine of the ledger",
        _credentials,
        description="Write the Mosquitto password file, the ACL and a clear credentials file "
        f"(0600) into DIR. Passwords already in DIR/{CLEAR_NAME} are kept; machines no longer "
        "active are dropped. Run it after each ledger import, then reload Mosquitto.",
    )
    creds.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    add_command(
        group,
        "relay",
        "publish queued commands (resend requests) to devices; run it as the _commander account",
        _relay,
    )
    config = add_command(
        group, "config", "print the production Mosquitto configuration or ACL", _config
    )
    config.add_argument("--acl", action="store_true", help="print the ACL instead")


def _credentials(args: argparse.Namespace, settings: Settings) -> int:
    with Database.open(settings) as database, database.connection() as conn:
        active = [d for d in LedgerRepository(conn).devices() if d.status is DeviceStatus.ACTIVE]
    gateways: dict[str, list[str]] = {}
    for device in active:
        if device.gateway_id is not None:
            gateways.setdefault(device.gateway_id, []).append(device.device_id)
    plan = write_credentials(args.out, [d.device_id for d in active], gateways)
    out(
        f"{len(plan.passwords)} user(s): {len(plan.added)} added, {len(plan.removed)} removed, "
        f"{len(plan.kept)} kept"
    )
    out(f"password file: {args.out / PASSWD_NAME}")
    out(f"clear credentials (keep secret): {args.out / CLEAR_NAME}")
    out(f"ingest runs as AQUAFLEET_BROKER_USERNAME={INGEST_USER}")
    return EXIT_OK


def _config(args: argparse.Namespace, settings: Settings) -> int:
    out((ACL_FILE if args.acl else MOSQUITTO_CONF).read_text().rstrip("\n"))
    return EXIT_OK


def _relay(args: argparse.Namespace, settings: Settings) -> int:
    from ingest.cli import broker_config
    from ingest.runner import run_relay

    logs.configure(settings.log_format, verbose=args.verbose)
    config = broker_config(settings, client_id=f"aquafleet-relay-{socket.gethostname()}"[:60])
    with Database.open(settings) as database:
        run_relay(config, database.url)
    return EXIT_OK

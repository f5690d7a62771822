"""`aquafleet devices ...`: the equipment ledger."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aquafleet.cli.app import EXIT_OK, add_command, add_group, out
from aquafleet.config import Settings
from aquafleet.db import Database
from aquafleet.ledger import DeviceClass, LedgerRepository, read_ledger_csv


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = add_group(commands, "devices", "the equipment ledger: sites and machines")
    import_cmd = add_command(
        group,
        "import",
        "load a ledger CSV (all or nothing; re-importing the same file changes nothing)",
        _import,
    )
    import_cmd.add_argument("file", type=Path, metavar="FILE.csv", help="the ledger file")
    list_cmd = add_command(group, "list", "list machines in the ledger", _list)
    list_cmd.add_argument("--site", help="only machines at this site id")
    list_cmd.add_argument(
        "--class",
        dest="device_class",
        choices=[c.value for c in DeviceClass],
        help="only machines of this class",
    )
    list_cmd.add_argument("--json", action="store_true", help="one JSON object per line")


def _import(args: argparse.Namespace, settings: Settings) -> int:
    ledger = read_ledger_csv(args.file, default_timezone=settings.timezone)
    with Database.open(settings) as database, database.connection() as conn:
        summary = LedgerRepository(conn).import_file(ledger)
    out(
        f"devices: {summary.devices_added} added, {summary.devices_updated} updated, "
        f"{summary.devices_unchanged} unchanged; "
        f"sites: {summary.sites_added} added, {summary.sites_updated} updated"
    )
    return EXIT_OK


def _list(args: argparse.Namespace, settings: Settings) -> int:
    device_class = DeviceClass(args.device_class) if args.device_class else None
    with Database.open(settings) as database, database.connection() as conn:
        devices = LedgerRepository(conn).devices(site_id=args.site, device_class=device_class)
    if args.json:
        for d in devices:
            out(
                json.dumps(
                    {
                        "device_id": d.device_id,
                        "class": d.device_class.value,
                        "model": d.model,
                        "hardware_lot": d.hardware_lot,
                        "firmware": d.firmware,
                        "install_date": d.install_date.isoformat(),
                        "site_id": d.site_id,
                        "status": d.status.value,
                        "part_suppliers": d.part_suppliers,
                        "gateway_id": d.gateway_id,
                    },
                    ensure_ascii=False,
                )
            )
        return EXIT_OK
    out(
        f"{'device':<20} {'class':<8} {'model':<14} {'lot':<12} {'firmware':<10} "
        f"{'site':<16} status"
    )
    for d in devices:
        out(
            f"{d.device_id:<20} {d.device_class.value:<8} {d.model:<14} {d.hardware_lot:<12} "
            f"{d.firmware:<10} {d.site_id:<16} {d.status.value}"
        )
    out(f"{len(devices)} machine(s)")
    return EXIT_OK

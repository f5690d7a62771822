"""Where the simulated machines come from: a ledger CSV, the imported ledger, or a generated one.

A generated ledger is a valid production ledger file (both classes, sites, models, hardware lots,
suppliers, optionally gateways) that ``aquafleet devices import`` accepts, so the machines the
simulator runs can be the machines the product knows, and the gateways it connects the gateways
the product (ingest, the broker ACL) expects.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from firmware_protocol import MachineClass

from aquafleet.config import Settings
from aquafleet.errors import AquaFleetError
from aquafleet.ledger import COLUMNS, Device, DeviceClass, DeviceStatus, Site, SiteKind
from aquafleet.ledger.csv_file import LedgerFile, read_ledger_csv
from simulators.errors import FleetSourceError

__all__ = [
    "HARDWARE_LOTS",
    "MachineSpec",
    "gateway_assignment",
    "generate_ledger",
    "machines_from_csv",
    "machines_from_database",
    "machines_from_ledger",
    "write_ledger_csv",
]

CAMPUS_MODELS: tuple[str, ...] = ("AQ-C200", "AQ-C400")
VENDING_MODELS: tuple[str, ...] = ("AQ-V800", "AQ-V1200")
HARDWARE_LOTS: tuple[str, ...] = ("LOT-2023-11", "LOT-2024-03", "LOT-2024-07", "LOT-2024-10")
FIRMWARE_VERSIONS: tuple[str, ...] = ("1.4.2", "1.5.0")
_ZONES = ("north", "south", "east", "west")
_SUPPLIERS = {
    "pp": ("PureCore", "FiltraMax"),
    "carbon": ("PureCore", "CarbonWorks"),
    "ro_membrane": ("MembraTech", "OsmoLine"),
    "post_filter": ("PureCore",),
    "uv_lamp": ("LumaUV", "Sterilight"),
    "pump": ("FlowDrive", "AquaPumps"),
    "payment_module": ("PayBox",),
}
# Campus sites hold more machines than a street vending area.
_MACHINES_PER_CAMPUS_SITE = 30
_MACHINES_PER_VENDING_SITE = 8


@dataclass(frozen=True, slots=True)
class MachineSpec:
    """What the simulator needs to know about one machine; the ledger row it stands for."""

    device_id: str
    machine_class: MachineClass
    model: str
    hardware_lot: str
    firmware: str
    site_id: str
    timezone: str
    install_date: date
    # the gateway the ledger puts this machine behind; None when it connects itself
    gateway_id: str | None = None


def _protocol_class(device_class: DeviceClass) -> MachineClass:
    # The ledger and the protocol share the class names (campus, vending).
    return MachineClass(device_class.value)


def machines_from_ledger(ledger: LedgerFile) -> tuple[MachineSpec, ...]:
    """The active machines of a ledger, in device id order (a stable order for determinism)."""
    zones = {site.site_id: site.timezone for site in ledger.sites}
    machines = [
        MachineSpec(
            device_id=d.device_id,
            machine_class=_protocol_class(d.device_class),
            model=d.model,
            hardware_lot=d.hardware_lot,
            firmware=d.firmware,
            site_id=d.site_id,
            timezone=zones[d.site_id],
            install_date=d.install_date,
            gateway_id=d.gateway_id,
        )
        for d in ledger.devices
        if d.status is DeviceStatus.ACTIVE
    ]
    if not machines:
        raise FleetSourceError("the ledger has no active machines")
    return tuple(sorted(machines, key=lambda m: m.device_id))


def machines_from_csv(path: Path, *, default_timezone: str) -> tuple[MachineSpec, ...]:
    """Read and validate a ledger CSV exactly as ``aquafleet devices import`` does."""
    return machines_from_ledger(read_ledger_csv(path, default_timezone=default_timezone))


_SITES_AND_DEVICES = """
SELECT d.device_id, d.class, d.model, d.hardware_lot, d.firmware, d.install_date,
       d.site_id, s.timezone, d.gateway_id
FROM devices d JOIN sites s ON s.site_id = d.site_id
WHERE d.status = 'active'
ORDER BY d.device_id
"""


def machines_from_database(settings: Settings) -> tuple[MachineSpec, ...]:
    """The active machines of the ledger imported into the product's database."""
    from aquafleet.db import Database  # the database is only needed on this path

    try:
        with Database.open(settings) as database, database.connection() as conn:
            rows = conn.execute(_SITES_AND_DEVICES).fetchall()
    except AquaFleetError as exc:
        raise FleetSourceError(f"cannot read the ledger from the database: {exc}") from exc
    machines = tuple(
        MachineSpec(
            device_id=str(row[0]),
            machine_class=_protocol_class(DeviceClass(str(row[1]))),
            model=str(row[2]),
            hardware_lot=str(row[3]),
            firmware=str(row[4]),
            site_id=str(row[6]),
            timezone=str(row[7]),
            install_date=row[5],  # type: ignore[arg-type]
            gateway_id=None if row[8] is None else str(row[8]),
        )
        for row in rows
    )
    if not machines:
        raise FleetSourceError("the database ledger has no active machines; import one first")
    return machines


def gateway_assignment(machines: Iterable[MachineSpec]) -> dict[str, str]:
    """Machine id -> gateway id, for the machines the ledger puts behind a gateway."""
    return {m.device_id: m.gateway_id for m in machines if m.gateway_id is not None}


def generate_ledger(
    machines: int,
    *,
    seed: int = 0,
    vending_share: float = 0.4,
    timezone: str = "Asia/Shanghai",
    today: date | None = None,
    id_prefix: str = "SIM",
    gateways: int = 0,
) -> LedgerFile:
    """A plausible ledger of ``machines`` machines, the same for the same arguments.

    Machines are grouped by class into sites (about 30 purifiers per campus, 8 vending machines
    per vending area); install dates lie 60 to 900 days before ``today``. With ``gateways``,
    every machine reaches the broker through one of the gateways ``{id_prefix}-GW01`` ... (see
    `_behind_gateways`); without, every machine connects itself.
    """
    if machines < 1:
        raise ValueError("machines must be at least 1")
    if not 0 <= gateways <= machines:
        raise ValueError("gateways must be between 0 and the number of machines")
    if not 0.0 <= vending_share <= 1.0:
        raise ValueError("vending_share must be between 0 and 1")
    today = today or date.today()
    rng = np.random.default_rng([seed, 0x1ED6E2])
    is_vending = rng.random(machines) < vending_share
    ages = rng.integers(60, 900, size=machines)
    lots = rng.integers(0, len(HARDWARE_LOTS), size=machines)
    firmware = rng.integers(0, len(FIRMWARE_VERSIONS), size=machines)
    model_pick = rng.integers(0, 2, size=machines)
    supplier_pick = rng.integers(0, 2, size=(machines, len(_SUPPLIERS)))

    sites: list[Site] = []
    devices: list[Device] = []
    counters = {False: 0, True: 0}
    current_site: dict[bool, Site | None] = {False: None, True: None}
    width = max(6, len(str(machines)))
    for i in range(machines):
        vending = bool(is_vending[i])
        per_site = _MACHINES_PER_VENDING_SITE if vending else _MACHINES_PER_CAMPUS_SITE
        if counters[vending] % per_site == 0:
            number = len(sites) + 1
            kind = SiteKind.VENDING_AREA if vending else SiteKind.CAMPUS
            site = Site(
                site_id=f"{id_prefix}-{'VA' if vending else 'CA'}{number:04d}",
                name=f"{'Vending area' if vending else 'Campus'} {number}",
                kind=kind,
                zone=_ZONES[number % len(_ZONES)],
                address=f"{number} Example Road",
                timezone=timezone,
            )
            sites.append(site)
            current_site[vending] = site
        counters[vending] += 1
        site_now = current_site[vending]
        assert site_now is not None
        suppliers = {
            part: options[int(supplier_pick[i, k]) % len(options)]
            for k, (part, options) in enumerate(_SUPPLIERS.items())
            if vending or part != "payment_module"
        }
        models = VENDING_MODELS if vending else CAMPUS_MODELS
        devices.append(
            Device(
                device_id=f"{id_prefix}-{i + 1:0{width}d}",
                device_class=DeviceClass.VENDING if vending else DeviceClass.CAMPUS,
                model=models[int(model_pick[i])],
                hardware_lot=HARDWARE_LOTS[int(lots[i])],
                firmware=FIRMWARE_VERSIONS[int(firmware[i])],
                install_date=today - timedelta(days=int(ages[i])),
                site_id=site_now.site_id,
                status=DeviceStatus.ACTIVE,
                part_suppliers=suppliers,
            )
        )
    if gateways:
        devices = _behind_gateways(devices, sites, gateways, id_prefix)
    return LedgerFile(sites=sites, devices=devices)


def _behind_gateways(
    devices: list[Device], sites: list[Site], gateways: int, id_prefix: str
) -> list[Device]:
    """Put the machines behind ``gateways`` gateways, each serving machines of consecutive sites.

    A gateway is a site's bus or router, so it serves the machines of neighbouring sites rather
    than machines scattered over the fleet: the machines, in site order, are cut into
    ``gateways`` runs of equal size (to one machine). A run boundary may fall inside a site, as
    a large campus has more than one router. Uses no randomness, so the rest of the ledger is
    the one generated without gateways.
    """
    rank = {site.site_id: k for k, site in enumerate(sites)}
    in_site_order = sorted(range(len(devices)), key=lambda i: rank[devices[i].site_id])
    out = list(devices)
    for position, i in enumerate(in_site_order):
        k = position * gateways // len(devices)
        out[i] = replace(devices[i], gateway_id=f"{id_prefix}-GW{k + 1:02d}")
    return out


def ledger_csv_text(ledger: LedgerFile) -> str:
    """The ledger in the production CSV format (``aquafleet.ledger.COLUMNS``)."""
    by_id = {site.site_id: site for site in ledger.sites}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for d in ledger.devices:
        site = by_id[d.site_id]
        row: dict[str, str] = {
            "device_id": d.device_id,
            "class": d.device_class.value,
            "model": d.model,
            "hardware_lot": d.hardware_lot,
            "firmware": d.firmware,
            "install_date": d.install_date.isoformat(),
            "site_id": site.site_id,
            "site_name": site.name,
            "site_kind": site.kind.value,
            "zone": site.zone,
            "address": site.address,
            "site_timezone": site.timezone,
            "status": d.status.value,
            "gateway_id": d.gateway_id or "",
        }
        for part, supplier in d.part_suppliers.items():
            row[f"supplier_{part}"] = supplier
        writer.writerow([row.get(column, "") for column in COLUMNS])
    return buffer.getvalue()


def write_ledger_csv(ledger: LedgerFile, path: Path) -> None:
    path.write_text(ledger_csv_text(ledger), encoding="utf-8")


def select_by_lot(machines: Sequence[MachineSpec], lot: str) -> list[int]:
    return [i for i, m in enumerate(machines) if m.hardware_lot == lot]

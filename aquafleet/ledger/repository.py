"""Reading and writing the ledger in the store."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from aquafleet.errors import StoreError
from aquafleet.ledger.csv_file import LedgerFile
from aquafleet.ledger.models import Device, DeviceClass, DeviceStatus

# An upsert that touches a row only when something in it changed, so importing the same file
# again changes nothing (not even updated_at). xmax = 0 tells an insert from an update.
_UPSERT_SITE = """
INSERT INTO sites (site_id, name, kind, zone, address, timezone)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (site_id) DO UPDATE SET
    name = EXCLUDED.name, kind = EXCLUDED.kind, zone = EXCLUDED.zone,
    address = EXCLUDED.address, timezone = EXCLUDED.timezone, updated_at = now()
WHERE (sites.name, sites.kind, sites.zone, sites.address, sites.timezone)
    IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.kind, EXCLUDED.zone, EXCLUDED.address,
                      EXCLUDED.timezone)
RETURNING (xmax = 0) AS inserted
"""

_UPSERT_DEVICE = """
INSERT INTO devices (device_id, class, model, hardware_lot, firmware, install_date, site_id,
                     part_suppliers, status, gateway_id)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (device_id) DO UPDATE SET
    class = EXCLUDED.class, model = EXCLUDED.model, hardware_lot = EXCLUDED.hardware_lot,
    firmware = EXCLUDED.firmware, install_date = EXCLUDED.install_date,
    site_id = EXCLUDED.site_id, part_suppliers = EXCLUDED.part_suppliers,
    status = EXCLUDED.status, gateway_id = EXCLUDED.gateway_id, updated_at = now()
WHERE (devices.class, devices.model, devices.hardware_lot, devices.firmware,
       devices.install_date, devices.site_id, devices.part_suppliers, devices.status,
       devices.gateway_id)
    IS DISTINCT FROM (EXCLUDED.class, EXCLUDED.model, EXCLUDED.hardware_lot, EXCLUDED.firmware,
                      EXCLUDED.install_date, EXCLUDED.site_id, EXCLUDED.part_suppliers,
                      EXCLUDED.status, EXCLUDED.gateway_id)
RETURNING (xmax = 0) AS inserted
"""

_LIST_DEVICES = """
SELECT d.device_id, d.class, d.model, d.hardware_lot, d.firmware, d.install_date, d.site_id,
       d.part_suppliers, d.status, d.gateway_id
FROM devices d
WHERE (%(site_id)s::text IS NULL OR d.site_id = %(site_id)s)
  AND (%(class)s::text IS NULL OR d.class = %(class)s)
ORDER BY d.device_id
"""


@dataclass(frozen=True)
class ImportSummary:
    devices_added: int
    devices_updated: int
    devices_unchanged: int
    sites_added: int
    sites_updated: int


class LedgerRepository:
    def __init__(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        self._conn = conn

    def import_file(self, ledger: LedgerFile) -> ImportSummary:
        """Upsert a validated ledger in one transaction: all of it or nothing."""
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                site_results = [
                    cur.execute(
                        _UPSERT_SITE,
                        (s.site_id, s.name, s.kind.value, s.zone, s.address, s.timezone),
                    ).fetchone()
                    for s in ledger.sites
                ]
                device_results = [
                    cur.execute(
                        _UPSERT_DEVICE,
                        (
                            d.device_id,
                            d.device_class.value,
                            d.model,
                            d.hardware_lot,
                            d.firmware,
                            d.install_date,
                            d.site_id,
                            Jsonb(d.part_suppliers),
                            d.status.value,
                            d.gateway_id,
                        ),
                    ).fetchone()
                    for d in ledger.devices
                ]
        except psycopg.Error as exc:
            raise StoreError(f"ledger import failed: {exc}") from exc
        added = sum(1 for r in device_results if r is not None and r[0])
        updated = sum(1 for r in device_results if r is not None and not r[0])
        return ImportSummary(
            devices_added=added,
            devices_updated=updated,
            devices_unchanged=len(device_results) - added - updated,
            sites_added=sum(1 for r in site_results if r is not None and r[0]),
            sites_updated=sum(1 for r in site_results if r is not None and not r[0]),
        )

    def devices(
        self, *, site_id: str | None = None, device_class: DeviceClass | None = None
    ) -> list[Device]:
        params = {"site_id": site_id, "class": device_class.value if device_class else None}
        with self._conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(_LIST_DEVICES, params).fetchall()
        return [
            Device(
                device_id=row["device_id"],
                device_class=DeviceClass(row["class"]),
                model=row["model"],
                hardware_lot=row["hardware_lot"],
                firmware=row["firmware"],
                install_date=row["install_date"],
                site_id=row["site_id"],
                status=DeviceStatus(row["status"]),
                part_suppliers=dict(row["part_suppliers"]),
                gateway_id=row["gateway_id"],
            )
            for row in rows
        ]

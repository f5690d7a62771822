"""Reading the ledger file that production keeps.

One row per machine, with its site's columns repeated on every row of that site (the way the
ledger is kept in a spreadsheet). The file is validated as a whole: every bad row is reported
with its line number and reason, and a file with any bad row is refused entirely.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# A device id is a topic level: the protocol's rule is the one rule for it.
from firmware_protocol import is_valid_device_id

from aquafleet.errors import LedgerImportError, RowProblem
from aquafleet.ledger.models import (
    REPLACEABLE_PARTS,
    Device,
    DeviceClass,
    DeviceStatus,
    Site,
    SiteKind,
)

REQUIRED_COLUMNS: tuple[str, ...] = (
    "device_id",
    "class",
    "model",
    "hardware_lot",
    "firmware",
    "install_date",
    "site_id",
    "site_name",
    "site_kind",
    "zone",
    "address",
)
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "site_timezone",
    "status",
    "gateway_id",
    *(f"supplier_{part}" for part in REPLACEABLE_PARTS),
)
COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + OPTIONAL_COLUMNS

MAX_FIELD_CHARS = 500

_E = TypeVar("_E", DeviceClass, SiteKind, DeviceStatus)


@dataclass(frozen=True)
class LedgerFile:
    sites: list[Site]
    devices: list[Device]


def read_ledger_csv(path: Path, *, default_timezone: str, today: date | None = None) -> LedgerFile:
    """Parse and validate a ledger CSV; raises `LedgerImportError` listing every bad row."""
    today = today or date.today()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LedgerImportError(
            str(path), [RowProblem(0, f"cannot read file: {exc.strerror}")]
        ) from exc
    try:
        # utf-8-sig: spreadsheets often save a byte-order mark
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LedgerImportError(
            str(path), [RowProblem(0, f"not UTF-8 text (byte {exc.start})")]
        ) from exc

    reader = csv.DictReader(text.splitlines(keepends=True), strict=True)
    try:
        header = reader.fieldnames
    except csv.Error as exc:
        raise LedgerImportError(str(path), [RowProblem(1, f"unreadable header: {exc}")]) from exc
    problems = _check_header(header)
    if problems:
        raise LedgerImportError(str(path), problems)

    sites: dict[str, tuple[int, Site]] = {}
    devices: dict[str, tuple[int, Device]] = {}
    problems = []
    try:
        for row in reader:
            line = reader.line_num
            if None in row:  # csv puts surplus fields under the key None
                problems.append(RowProblem(line, "more fields than the header has columns"))
                continue
            if all(not (value or "").strip() for value in row.values()):
                continue  # blank line in a spreadsheet export
            try:
                site, device = _parse_row(row, default_timezone, today)
            except ValueError as exc:
                problems.append(RowProblem(line, str(exc)))
                continue
            if device.device_id in devices:
                first = devices[device.device_id][0]
                problems.append(
                    RowProblem(line, f"device_id {device.device_id} already on line {first}")
                )
                continue
            known = sites.get(site.site_id)
            if known is not None and known[1] != site:
                problems.append(
                    RowProblem(
                        line,
                        f"site {site.site_id} differs from its description on line {known[0]}",
                    )
                )
                continue
            sites.setdefault(site.site_id, (line, site))
            devices[device.device_id] = (line, device)
    except csv.Error as exc:
        problems.append(RowProblem(reader.line_num, f"malformed CSV: {exc}"))
    problems.extend(
        RowProblem(line, f"gateway_id {device.gateway_id} is a machine's device_id")
        for line, device in devices.values()
        if device.gateway_id is not None and device.gateway_id in devices
    )
    if problems:
        raise LedgerImportError(str(path), sorted(problems, key=lambda p: p.line))
    if not devices:
        raise LedgerImportError(str(path), [RowProblem(1, "the file has no device rows")])
    return LedgerFile(
        sites=[site for _, site in sites.values()],
        devices=[device for _, device in devices.values()],
    )


def _check_header(header: object) -> list[RowProblem]:
    if not header:
        return [RowProblem(1, "the file is empty; expected a header row")]
    assert isinstance(header, list)
    names = [str(name).strip() for name in header]
    problems = []
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        problems.append(RowProblem(1, f"missing column(s): {', '.join(missing)}"))
    unknown = [c for c in names if c not in COLUMNS]
    if unknown:
        problems.append(RowProblem(1, f"unknown column(s): {', '.join(unknown)}"))
    duplicated = sorted({c for c in names if names.count(c) > 1})
    if duplicated:
        problems.append(RowProblem(1, f"duplicated column(s): {', '.join(duplicated)}"))
    return problems


def _field(row: dict[str, str], name: str, *, required: bool = True) -> str:
    value = (row.get(name) or "").strip()
    if required and not value:
        raise ValueError(f"{name} is empty")
    if len(value) > MAX_FIELD_CHARS:
        raise ValueError(f"{name} is longer than {MAX_FIELD_CHARS} characters")
    if any(ord(ch) < 32 for ch in value):
        raise ValueError(f"{name} contains control characters")
    return value


def _choice(enum: type[_E], name: str, value: str) -> _E:
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise ValueError(f"{name} {value!r} is not one of: {allowed}") from None


def _parse_row(row: dict[str, str], default_timezone: str, today: date) -> tuple[Site, Device]:
    device_id = _field(row, "device_id")
    if not is_valid_device_id(device_id):
        raise ValueError(
            f"device_id {device_id!r} must be 3-64 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    device_class = _choice(DeviceClass, "class", _field(row, "class"))
    install_text = _field(row, "install_date")
    try:
        install_date = date.fromisoformat(install_text)
    except ValueError:
        raise ValueError(f"install_date {install_text!r} is not a date (YYYY-MM-DD)") from None
    if install_date > today:
        raise ValueError(f"install_date {install_text} is in the future")
    site_kind = _choice(SiteKind, "site_kind", _field(row, "site_kind"))
    if (device_class is DeviceClass.CAMPUS) != (site_kind is SiteKind.CAMPUS):
        raise ValueError(f"a {device_class.value} machine cannot stand at a {site_kind.value} site")
    timezone = _field(row, "site_timezone", required=False) or default_timezone
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"site_timezone {timezone!r} is not an IANA time zone") from None
    status_text = _field(row, "status", required=False) or DeviceStatus.ACTIVE.value
    gateway_id = _field(row, "gateway_id", required=False) or None
    if gateway_id is not None and not is_valid_device_id(gateway_id):
        raise ValueError(f"gateway_id {gateway_id!r} must be 3-64 letters, digits, '-' or '_'")
    suppliers = {
        part: supplier
        for part in REPLACEABLE_PARTS
        if (supplier := _field(row, f"supplier_{part}", required=False))
    }
    site = Site(
        site_id=_field(row, "site_id"),
        name=_field(row, "site_name"),
        kind=site_kind,
        zone=_field(row, "zone"),
        address=_field(row, "address"),
        timezone=timezone,
    )
    device = Device(
        device_id=device_id,
        device_class=device_class,
        model=_field(row, "model"),
        hardware_lot=_field(row, "hardware_lot"),
        firmware=_field(row, "firmware"),
        install_date=install_date,
        site_id=site.site_id,
        status=_choice(DeviceStatus, "status", status_text),
        part_suppliers=suppliers,
        gateway_id=gateway_id,
    )
    return site, device

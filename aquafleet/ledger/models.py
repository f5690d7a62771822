"""Typed values of the equipment ledger."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum

# Parts that are replaced in service and bought in from suppliers (policy 4.8, 3.1.4).
REPLACEABLE_PARTS: tuple[str, ...] = (
    "pp",
    "carbon",
    "ro_membrane",
    "post_filter",
    "uv_lamp",
    "pump",
    "payment_module",
)


class DeviceClass(StrEnum):
    CAMPUS = "campus"
    VENDING = "vending"


class SiteKind(StrEnum):
    CAMPUS = "campus"
    VENDING_AREA = "vending_area"


class DeviceStatus(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"
    RETIRED = "retired"


@dataclass(frozen=True)
class Site:
    site_id: str
    name: str
    kind: SiteKind
    zone: str
    address: str
    timezone: str


@dataclass(frozen=True)
class Device:
    device_id: str
    device_class: DeviceClass
    model: str
    hardware_lot: str
    firmware: str
    install_date: date
    site_id: str
    status: DeviceStatus = DeviceStatus.ACTIVE
    part_suppliers: dict[str, str] = field(default_factory=dict)
    # the gateway this machine reaches the broker through; None when it connects itself
    gateway_id: str | None = None

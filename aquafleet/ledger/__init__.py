"""The equipment ledger (policy 3.4.3): sites and the machines installed at them.

`read_ledger_csv` validates a production ledger file as a whole; `LedgerRepository` upserts it and
reads it back.
"""

from aquafleet.ledger.csv_file import COLUMNS, read_ledger_csv
from aquafleet.ledger.models import (
    REPLACEABLE_PARTS,
    Device,
    DeviceClass,
    DeviceStatus,
    Site,
    SiteKind,
)
from aquafleet.ledger.repository import ImportSummary, LedgerRepository

__all__ = [
    "COLUMNS",
    "REPLACEABLE_PARTS",
    "Device",
    "DeviceClass",
    "DeviceStatus",
    "ImportSummary",
    "LedgerRepository",
    "Site",
    "SiteKind",
    "read_ledger_csv",
]

"""The database store: where it is, its schema, and its upkeep.

`Database.open(settings)` resolves the configured server, or starts the embedded PostgreSQL when
none is configured; `migrate` brings the schema up to date; `describe` reports what the store is
on; `prune` applies telemetry retention.
"""

from aquafleet.db.connection import Database
from aquafleet.db.migrations import MIGRATIONS_DIR, applied_versions, migrate
from aquafleet.db.retention import PruneResult, prune
from aquafleet.db.status import StoreStatus, describe

__all__ = [
    "MIGRATIONS_DIR",
    "Database",
    "PruneResult",
    "StoreStatus",
    "applied_versions",
    "describe",
    "migrate",
    "prune",
]

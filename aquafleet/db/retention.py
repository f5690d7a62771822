"""Retention of raw telemetry by age.

On TimescaleDB whole chunks older than the cut-off are dropped, which is instant and leaves no
bloat. The Apache edition (what Debian builds) has no retention policies, so the product
schedules this itself. On plain PostgreSQL old rows are deleted in bounded batches, each in its
own transaction, so a large backlog never holds one huge lock or transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from aquafleet.db.connection import Database
from aquafleet.errors import StoreError

# Tables whose rows expire with age, and their time column. message_keys only needs to outlive
# the oldest message a device may still replay; quarantine is evidence for a while, not an archive.
RETAINED_TABLES: tuple[tuple[str, str], ...] = (
    ("telemetry", "time"),
    ("message_keys", "time"),
    ("quarantine", "received_at"),
)

DELETE_BATCH_ROWS = 10_000


@dataclass(frozen=True)
class PruneResult:
    table: str
    cutoff: datetime
    chunks_dropped: int  # TimescaleDB
    rows_deleted: int  # plain PostgreSQL


def prune(
    database: Database, older_than: timedelta, *, now: datetime | None = None
) -> list[PruneResult]:
    cutoff = (now or datetime.now(UTC)) - older_than
    results: list[PruneResult] = []
    try:
        with database.connection(autocommit=True) as conn:
            for table, time_column in RETAINED_TABLES:
                if _is_hypertable(conn, table):
                    results.append(_drop_chunks(conn, table, cutoff))
                else:
                    results.append(_delete_batches(conn, table, time_column, cutoff))
    except psycopg.Error as exc:
        raise StoreError(f"prune failed: {exc}") from exc
    return results


def _is_hypertable(conn: psycopg.Connection[tuple[object, ...]], table: str) -> bool:
    has_tsdb = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    if not has_tsdb:
        return False
    row = conn.execute(
        "SELECT 1 FROM timescaledb_information.hypertables "
        "WHERE hypertable_schema = 'public' AND hypertable_name = %s",
        (table,),
    ).fetchone()
    return row is not None


def _drop_chunks(
    conn: psycopg.Connection[tuple[object, ...]], table: str, cutoff: datetime
) -> PruneResult:
    dropped = conn.execute(
        "SELECT count(*) FROM drop_chunks(%s::regclass, older_than => %s)", (table, cutoff)
    ).fetchone()
    count = int(str(dropped[0])) if dropped else 0
    return PruneResult(table=table, cutoff=cutoff, chunks_dropped=count, rows_deleted=0)


def _delete_batches(
    conn: psycopg.Connection[tuple[object, ...]], table: str, time_column: str, cutoff: datetime
) -> PruneResult:
    statement = sql.SQL(
        "DELETE FROM {table} WHERE ctid = ANY(ARRAY("
        "SELECT ctid FROM {table} WHERE {time} < %s LIMIT %s))"
    ).format(table=sql.Identifier(table), time=sql.Identifier(time_column))
    total = 0
    while True:
        deleted = conn.execute(statement, (cutoff, DELETE_BATCH_ROWS)).rowcount
        total += max(deleted, 0)
        if deleted < DELETE_BATCH_ROWS:
            break
    return PruneResult(table=table, cutoff=cutoff, chunks_dropped=0, rows_deleted=total)

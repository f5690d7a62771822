"""What the store is on: the server, TimescaleDB or not, the schema version and table sizes."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from aquafleet.db.connection import Database
from aquafleet.db.migrations import applied_versions, available_migrations
from aquafleet.errors import StoreError


@dataclass(frozen=True)
class TableSize:
    name: str
    rows: int  # estimated from statistics on large tables, exact on small ones
    bytes: int
    hypertable: bool


@dataclass(frozen=True)
class StoreStatus:
    server_version: str
    timescaledb_version: str | None
    schema_version: int
    latest_version: int
    tables: list[TableSize]
    embedded: bool

    @property
    def backend(self) -> str:
        if self.timescaledb_version is not None:
            return f"TimescaleDB {self.timescaledb_version} on PostgreSQL {self.server_version}"
        return f"PostgreSQL {self.server_version} (no TimescaleDB)"

    @property
    def pending(self) -> int:
        return max(0, self.latest_version - self.schema_version)


_TABLES = """
SELECT c.relname, c.reltuples::bigint, pg_total_relation_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
ORDER BY c.relname
"""

_HYPERTABLES = """
SELECT hypertable_name, hypertable_size(format('%I.%I', hypertable_schema, hypertable_name))
FROM timescaledb_information.hypertables WHERE hypertable_schema = 'public'
"""

# Below this many estimated rows a count(*) is cheap and exact; above it, statistics will do.
_EXACT_COUNT_LIMIT = 100_000


def describe(database: Database) -> StoreStatus:
    try:
        with database.connection(autocommit=True) as conn:
            server = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            row = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
            ).fetchone()
            timescaledb = str(row[0]) if row else None
            applied = applied_versions(conn)
            hypertables: dict[str, int] = {}
            if timescaledb is not None:
                hypertables = {
                    str(name): int(str(size or 0))
                    for name, size in conn.execute(_HYPERTABLES).fetchall()
                }
            tables = [
                _table_size(conn, str(name), int(str(rows)), int(str(size)), hypertables)
                for name, rows, size in conn.execute(_TABLES).fetchall()
                if not str(name).startswith("_")
            ]
    except psycopg.Error as exc:
        raise StoreError(f"cannot read the store's status: {exc}") from exc
    migrations = available_migrations()
    return StoreStatus(
        server_version=server.split()[0],
        timescaledb_version=timescaledb,
        schema_version=max(applied, default=0),
        latest_version=max((m.version for m in migrations), default=0),
        tables=tables,
        embedded=database.embedded is not None,
    )


def _table_size(
    conn: psycopg.Connection[tuple[object, ...]],
    name: str,
    estimated_rows: int,
    size: int,
    hypertables: dict[str, int],
) -> TableSize:
    is_hypertable = name in hypertables
    if is_hypertable:
        size = hypertables[name]
    rows = estimated_rows
    # reltuples is -1 before the first ANALYZE, and a hypertable's parent holds no rows itself
    if is_hypertable or estimated_rows < _EXACT_COUNT_LIMIT:
        query = psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(name))
        rows = int(str(conn.execute(query).fetchone()[0]))  # type: ignore[index]
    return TableSize(name=name, rows=rows, bytes=size, hypertable=is_hypertable)

"""Numbered SQL migrations, applied in order and recorded in `schema_migrations`.

Files are named ``NNNN_description.sql`` in the `migrations/` folder beside this module. Each is
applied in a transaction of its own, together with its row in `schema_migrations`, so a failed
migration leaves nothing half-done. A session-level advisory lock serialises concurrent runs:
a second `migrate` waits for the first, then finds nothing left to do. A migration changed after
it was applied is refused (its checksum no longer matches), since the schema in the database
would silently differ from the one in the repository.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from aquafleet.db.connection import Database
from aquafleet.errors import MigrationError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# pg_advisory_lock takes a bigint; this one is ours alone ("AQUAFLEET" in hex-ish digits).
MIGRATION_LOCK_KEY = 0x0A0AF1EE7

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"migration file {path.name} is not named NNNN_name.sql")
        migrations.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return migrations


_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def applied_versions(conn: psycopg.Connection[tuple[object, ...]]) -> dict[int, str]:
    """Applied migration versions with their checksums; empty when none was ever applied."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
    return {int(str(v)): str(c) for v, c in rows}


def migrate(database: Database, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply every pending migration; returns those applied by this call."""
    migrations = available_migrations(directory)
    applied_now: list[Migration] = []
    with database.connection(autocommit=True) as conn:
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
            try:
                conn.execute(_CREATE_LEDGER)
                done = applied_versions(conn)
                for migration in migrations:
                    checksum = done.get(migration.version)
                    if checksum is not None:
                        if checksum != migration.checksum:
                            raise MigrationError(
                                f"migration {migration.version:04d}_{migration.name} was changed "
                                "after it was applied; add a new migration instead"
                            )
                        continue
                    _apply(conn, migration)
                    applied_now.append(migration)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        except psycopg.Error as exc:
            raise MigrationError(f"migration failed: {exc}".strip()) from exc
    return applied_now


def _apply(conn: psycopg.Connection[tuple[object, ...]], migration: Migration) -> None:
    try:
        with conn.transaction():
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MigrationError(
            f"migration {migration.version:04d}_{migration.name} failed: {first_line}"
        ) from exc

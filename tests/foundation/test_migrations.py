"""`aquafleet db migrate` and `db status` on TimescaleDB and on plain PostgreSQL."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg

from aquafleet.db.migrations import available_migrations
from tests.fix_cli import AQUAFLEET, RunCli, cli_environment

LATEST = max(m.version for m in available_migrations())


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {str(r[0]) for r in rows}


def _hypertables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT hypertable_name FROM timescaledb_information.hypertables"
        ).fetchall()
    return {str(r[0]) for r in rows}


def test_migrate_on_timescaledb_makes_hypertables(run_cli: RunCli, database_url: str) -> None:
    env = {"AQUAFLEET_DATABASE_URL": database_url}

    result = run_cli("db", "migrate", env=env)

    assert result.returncode == 0, result.stderr
    assert "applied 0001_timescaledb" in result.stdout
    assert {"telemetry", "device_events"} <= _hypertables(database_url)
    status = json.loads(run_cli("db", "status", "--json", env=env).stdout)
    assert status["timescaledb_version"]
    assert status["backend"].startswith("TimescaleDB ")
    assert status["schema_version"] == LATEST
    assert status["pending"] == 0
    by_name = {t["name"]: t for t in status["tables"]}
    assert by_name["telemetry"]["hypertable"] is True
    assert by_name["devices"]["hypertable"] is False


def test_migrate_on_plain_postgresql_makes_the_same_tables(
    run_cli: RunCli, plain_database_url: str, database_url: str
) -> None:
    plain = run_cli("db", "migrate", env={"AQUAFLEET_DATABASE_URL": plain_database_url})
    timescale = run_cli("db", "migrate", env={"AQUAFLEET_DATABASE_URL": database_url})

    assert plain.returncode == 0, plain.stderr
    assert timescale.returncode == 0, timescale.stderr
    assert _tables(plain_database_url) == _tables(database_url)
    status = run_cli("db", "status", env={"AQUAFLEET_DATABASE_URL": plain_database_url})
    assert "(no TimescaleDB)" in status.stdout
    assert f"version {LATEST} of {LATEST}" in status.stdout
    with psycopg.connect(plain_database_url) as conn:
        ext = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    assert ext is None


def test_migrate_twice_changes_nothing(run_cli: RunCli, database_url: str) -> None:
    env = {"AQUAFLEET_DATABASE_URL": database_url}
    run_cli("db", "migrate", env=env)

    again = run_cli("db", "migrate", env=env)

    assert again.returncode == 0
    assert again.stdout.strip() == "schema is up to date"


def test_two_concurrent_migrates_apply_each_migration_once(
    database_url: str, tmp_path: Path
) -> None:
    env = cli_environment(tmp_path, {"AQUAFLEET_DATABASE_URL": database_url})
    procs = [
        subprocess.Popen(
            [str(AQUAFLEET), "db", "migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]

    assert [p.returncode for p in procs] == [0, 0], outputs
    applied = [
        line for out, _ in outputs for line in out.splitlines() if line.startswith("applied")
    ]
    assert len(applied) == LATEST  # each migration applied by exactly one of the two
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == list(range(1, LATEST + 1))


def test_status_before_migrate_says_what_is_pending(run_cli: RunCli, database_url: str) -> None:
    result = run_cli("db", "status", env={"AQUAFLEET_DATABASE_URL": database_url})

    assert result.returncode == 0, result.stderr
    assert f"version 0 of {LATEST} ({LATEST} pending" in result.stdout


def test_a_changed_migration_is_refused(run_cli: RunCli, database_url: str) -> None:
    env = {"AQUAFLEET_DATABASE_URL": database_url}
    run_cli("db", "migrate", env=env)
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 2")

    result = run_cli("db", "migrate", env=env)

    assert result.returncode == 1
    assert "0002_equipment_ledger was changed after it was applied" in result.stderr


def test_embedded_database_is_the_default(run_cli: RunCli) -> None:
    migrate = run_cli("db", "migrate")
    status = run_cli("db", "status")

    assert migrate.returncode == 0, migrate.stderr
    assert status.returncode == 0, status.stderr
    assert "(embedded)" in status.stdout
    assert "(no TimescaleDB)" in status.stdout
    assert f"version {LATEST} of {LATEST}" in status.stdout

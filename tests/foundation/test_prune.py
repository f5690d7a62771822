"""`aquafleet db prune`: telemetry retention on TimescaleDB (chunks) and plain PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.fix_cli import RunCli

NOW = datetime.now(UTC)
OLD = [NOW - timedelta(days=d) for d in (200, 150, 120)]
RECENT = [NOW - timedelta(days=d) for d in (30, 5, 0)]


def _insert_readings(url: str, times: list[datetime]) -> None:
    with psycopg.connect(url) as conn:
        for seq, time in enumerate(times):
            conn.execute(
                "INSERT INTO telemetry (time, device_id, boot, seq, received_at, tds_out) "
                "VALUES (%s, 'AQ-C-0001', 1, %s, %s, 12.5)",
                (time, seq, time),
            )


def _remaining(url: str) -> list[datetime]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT time FROM telemetry ORDER BY time").fetchall()
    return [r[0] for r in rows]


@pytest.mark.parametrize("backend", ["timescaledb", "plain"])
def test_prune_removes_only_telemetry_older_than_retention(
    run_cli: RunCli,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    url = request.getfixturevalue(
        "database_url" if backend == "timescaledb" else "plain_database_url"
    )
    env = {"AQUAFLEET_DATABASE_URL": url}
    assert run_cli("db", "migrate", env=env).returncode == 0
    _insert_readings(url, OLD + RECENT)

    result = run_cli("db", "prune", "--older-than-days", "90", env=env)

    assert result.returncode == 0, result.stderr
    if backend == "timescaledb":
        assert "telemetry: 3 chunk(s) dropped" in result.stdout
    else:
        assert "telemetry: 3 row(s) deleted" in result.stdout
    assert _remaining(url) == sorted(RECENT)


def test_prune_uses_the_configured_retention(run_cli: RunCli, plain_database_url: str) -> None:
    env = {
        "AQUAFLEET_DATABASE_URL": plain_database_url,
        "AQUAFLEET_TELEMETRY_RETENTION_DAYS": "10",
    }
    run_cli("db", "migrate", env=env)
    _insert_readings(plain_database_url, OLD + RECENT)

    result = run_cli("db", "prune", env=env)

    assert result.returncode == 0, result.stderr
    assert "telemetry: 4 row(s) deleted" in result.stdout  # 200, 150, 120 and 30 days old
    assert len(_remaining(plain_database_url)) == 2


def test_prune_deletes_a_backlog_larger_than_one_batch(
    run_cli: RunCli, plain_database_url: str
) -> None:
    env = {"AQUAFLEET_DATABASE_URL": plain_database_url}
    run_cli("db", "migrate", env=env)
    with psycopg.connect(plain_database_url) as conn:
        conn.execute(
            "INSERT INTO telemetry (time, device_id, boot, seq, received_at) "
            "SELECT now() - interval '100 days', 'AQ-C-0001', 1, g, now() "
            "FROM generate_series(1, 25000) g"
        )

    result = run_cli("db", "prune", "--older-than-days", "90", env=env)

    assert "telemetry: 25000 row(s) deleted" in result.stdout
    assert _remaining(plain_database_url) == []

"""`aquafleet demo` end to end, as a user runs it: rows land in the database and faults show."""

from __future__ import annotations

import json
import re

import psycopg
import pytest

from simulators.embedded_broker import find_mosquitto

pytestmark = pytest.mark.slow

# A small, short fleet: every fault of the demo scenario falls within its first two hours.
SMALL = ("demo", "--machines", "90", "--duration", "150m")


def published_and_stored(stdout: str) -> tuple[int, int, int]:
    match = re.search(
        r"published ([\d,]+) messages; ingest stored ([\d,]+), .* ([\d,]+) quarantined", stdout
    )
    assert match, stdout
    published, stored, quarantined = (int(g.replace(",", "")) for g in match.groups())
    return published, stored, quarantined


def fault_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if re.match(r"\s+\d{4}-\d\d-\d\d .* UTC", line)]


def test_demo_with_nothing_configured_fills_the_embedded_database(run_cli):
    result = run_cli(*SMALL, timeout=120)
    assert result.returncode == 0, result.stderr
    published, stored, quarantined = published_and_stored(result.stdout)
    assert published > 90 * 150
    assert stored == published
    assert quarantined == 0
    assert "90 machines (" in result.stdout
    assert "embedded PostgreSQL" in result.stdout
    if find_mosquitto() is not None:
        assert "broker: mosquitto" in result.stdout
    assert fault_lines(result.stdout), result.stdout

    # the database stays for what comes next
    status = run_cli("db", "status", "--json", timeout=60)
    assert status.returncode == 0, status.stderr
    tables = {t["name"]: t["rows"] for t in json.loads(status.stdout)["tables"]}
    assert tables["devices"] == 90
    assert tables["telemetry"] >= 90 * 150
    assert tables["device_events"] > 0


def test_demo_uses_the_configured_broker_and_database(run_cli, mqtt_broker, database_url):
    env = {"AQUAFLEET_BROKER_URL": mqtt_broker.url, "AQUAFLEET_DATABASE_URL": database_url}
    result = run_cli(*SMALL, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"broker: {mqtt_broker.url}" in result.stdout
    published, stored, _ = published_and_stored(result.stdout)
    assert stored == published
    with psycopg.connect(database_url) as conn:
        telemetry = conn.execute("SELECT count(*) FROM telemetry").fetchone()
        faults = conn.execute(
            "SELECT count(DISTINCT code) FROM device_events WHERE kind = 'fault_raised'"
        ).fetchone()
        classes = conn.execute(
            "SELECT count(DISTINCT machine_class) FROM device_state WHERE machine_class IS NOT NULL"
        ).fetchone()
        quarantined = conn.execute("SELECT count(*) FROM quarantine").fetchone()
    assert telemetry is not None
    assert telemetry[0] >= 90 * 150
    assert faults is not None
    assert faults[0] >= 3
    assert classes == (2,)
    assert quarantined == (0,)

    # a second run into the same database adds a new run's rows and refuses nothing
    again = run_cli(*SMALL, env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    published_again, stored_again, quarantined_again = published_and_stored(again.stdout)
    assert quarantined_again == 0
    # the machines powered up again: new boots, so new rows, not duplicates of the first run
    # (ingest also receives the first run's retained status messages once more)
    assert stored_again >= published_again
    with psycopg.connect(database_url) as conn:
        after = conn.execute("SELECT count(*) FROM telemetry").fetchone()
    assert after is not None
    assert after[0] > telemetry[0] + 90 * 100


def test_demo_on_the_in_process_broker(run_cli, database_url):
    result = run_cli(
        *SMALL, "--broker", "amqtt", env={"AQUAFLEET_DATABASE_URL": database_url}, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "broker: amqtt" in result.stdout
    published, stored, quarantined = published_and_stored(result.stdout)
    assert stored == published
    assert quarantined == 0
    assert fault_lines(result.stdout), result.stdout


def test_demo_options_are_checked(run_cli):
    result = run_cli("demo", "--duration", "10s")
    assert result.returncode == 2
    assert "shorter than a minute" in result.stderr

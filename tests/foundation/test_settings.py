"""Every settings error stops start-up with one line naming the setting, through the CLI."""

from __future__ import annotations

import pytest

from tests.fix_cli import RunCli

BAD_SETTINGS = [
    ("AQUAFLEET_DATABASE_URL", "mysql://db/fleet", "must be a postgresql:// URL"),
    ("AQUAFLEET_BROKER_URL", "http://broker:1883", "must be mqtt://host:port"),
    ("AQUAFLEET_BROKER_URL", "mqtt://broker:99999", "bad port"),
    ("AQUAFLEET_BROKER_URL", "mqtt://:1883", "has no host"),
    ("AQUAFLEET_TIMEZONE", "Mars/Olympus_Mons", "unknown time zone"),
    ("AQUAFLEET_RULES_PATH", "/nonexistent/rules.toml", "no such file"),
    ("AQUAFLEET_SLA_POLICY_PATH", "/nonexistent/sla.toml", "no such file"),
    ("AQUAFLEET_TELEMETRY_RETENTION_DAYS", "ninety", "valid integer"),
    ("AQUAFLEET_TELEMETRY_RETENTION_DAYS", "0", "greater than or equal to 1"),
    ("AQUAFLEET_METRICS_PORT", "70000", "less than or equal to 65535"),
    ("AQUAFLEET_LOG_FORMAT", "xml", "'text' or 'json'"),
]


@pytest.mark.parametrize(("name", "value", "complaint"), BAD_SETTINGS)
def test_bad_setting_stops_start_up_with_one_line(
    run_cli: RunCli, name: str, value: str, complaint: str
) -> None:
    result = run_cli("db", "status", env={name: value})

    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"aquafleet: configuration error: {name}: ")
    assert complaint in lines[0]
    assert "Traceback" not in result.stderr


def test_each_bad_setting_gets_its_own_line(run_cli: RunCli) -> None:
    result = run_cli(
        "db",
        "status",
        env={"AQUAFLEET_TIMEZONE": "Nowhere/Land", "AQUAFLEET_LOG_FORMAT": "xml"},
    )

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert any("AQUAFLEET_TIMEZONE" in line for line in lines)
    assert any("AQUAFLEET_LOG_FORMAT" in line for line in lines)


def test_unreachable_database_is_one_line_not_a_traceback(run_cli: RunCli) -> None:
    # port 9 (discard) on loopback: nothing listens there
    result = run_cli(
        "db", "status", env={"AQUAFLEET_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none"}
    )

    assert result.returncode == 1
    assert result.stderr.startswith("aquafleet: error: cannot connect to the database")
    assert len(result.stderr.strip().splitlines()) == 1

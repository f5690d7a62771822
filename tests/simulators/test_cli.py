"""`aquafleet simulate` as a user runs it."""

from __future__ import annotations

import io
from pathlib import Path

import orjson

from aquafleet.config import Settings
from aquafleet.ledger.csv_file import read_ledger_csv
from simulators import MemorySink, Simulation, gateway_assignment, machines_from_database
from simulators.progress import Progress
from tests.fix_cli import RunCli
from tests.fix_mqtt import MosquittoBroker
from tests.simulators.helpers import config, fleet


def test_help_lists_the_options(run_cli: RunCli) -> None:
    result = run_cli("simulate", "--help")
    assert result.returncode == 0
    for option in ("--machines", "--scenario", "--as-fast-as-possible", "--speed",
                   "--ground-truth", "--repairs", "--connection", "--generate-ledger"):  # fmt: skip
        assert option in result.stdout


def test_bad_scenario_is_refused_in_one_line(run_cli: RunCli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "faults:\n  - {fault: leak, count: 1, at: 0}\n  - {fault: leak, count: 1, at: soon}\n"
    )
    result = run_cli(
        "simulate", "--scenario", str(bad), "--as-fast-as-possible", "--duration", "1h",
        "--broker-url", "mqtt://127.0.0.1:1",
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"aquafleet: error: {bad}: faults[1].at: not a time ('soon'; use an ISO 8601 time or an "
        "offset such as +6h)"
    ]


def test_usage_errors_exit_2(run_cli: RunCli) -> None:
    result = run_cli("simulate", "--as-fast-as-possible", "--broker-url", "mqtt://127.0.0.1:1")
    assert result.returncode == 2
    assert "needs --duration" in result.stderr
    result = run_cli("simulate", "--speed", "0")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1


def test_generated_ledger_imports(run_cli: RunCli, tmp_path: Path, database_url: str) -> None:
    path = tmp_path / "fleet.csv"
    result = run_cli("simulate", "--generate-ledger", "120", "--out", str(path), "--seed", "3")
    assert result.returncode == 0, result.stderr
    env = {"AQUAFLEET_DATABASE_URL": database_url}
    assert run_cli("db", "migrate", env=env).returncode == 0
    imported = run_cli("devices", "import", str(path), env=env)
    assert imported.returncode == 0, imported.stderr
    assert "120 added" in imported.stdout


def test_generated_ledger_with_gateways_imports_with_them(
    run_cli: RunCli, tmp_path: Path, database_url: str
) -> None:
    path = tmp_path / "fleet.csv"
    result = run_cli(
        "simulate", "--generate-ledger", "120", "--gateways", "5", "--out", str(path),
        "--seed", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "behind 5 gateways" in result.stdout
    written = {
        d.device_id: d.gateway_id
        for d in read_ledger_csv(path, default_timezone="Asia/Shanghai").devices
    }
    assert set(written.values()) == {f"SIM-GW{k:02d}" for k in range(1, 6)}
    env = {"AQUAFLEET_DATABASE_URL": database_url}
    assert run_cli("db", "migrate", env=env).returncode == 0
    imported = run_cli("devices", "import", str(path), env=env)
    assert imported.returncode == 0, imported.stderr
    assert "120 added" in imported.stdout
    listed = run_cli("devices", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    stored = {
        d["device_id"]: d["gateway_id"] for d in map(orjson.loads, listed.stdout.splitlines())
    }
    assert stored == written
    # and the simulator run --from-db reads them back
    machines = machines_from_database(Settings(database_url=database_url))
    assert gateway_assignment(machines) == written


def test_more_gateways_than_machines_is_refused(run_cli: RunCli, tmp_path: Path) -> None:
    out = tmp_path / "fleet.csv"
    result = run_cli("simulate", "--generate-ledger", "3", "--gateways", "4", "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "aquafleet: error: --gateways must not exceed the number of machines"
    ]
    assert not out.exists()


def test_simulate_to_a_broker_writes_ground_truth(
    run_cli: RunCli, tmp_path: Path, mqtt_broker: MosquittoBroker
) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text('[[faults]]\nfault = "leak"\ncount = 2\nat = "+10m"\nduration = "5m"\n')
    truth = tmp_path / "truth.jsonl"
    result = run_cli(
        "simulate", "--machines", "5", "--as-fast-as-possible", "--duration", "30m",
        "--scenario", str(scenario), "--ground-truth", str(truth), "--broker-url",
        mqtt_broker.url, "--seed", "9",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # quiet when not on a terminal
    lines = [orjson.loads(line) for line in truth.read_bytes().splitlines()]
    assert [(x["code"], x["end_ms"] - x["start_ms"]) for x in lines] == [("leak", 300_000)] * 2


def test_progress_line_on_a_terminal_only() -> None:
    sim = Simulation(config(fleet(3), hours=0.1), MemorySink())
    quiet = io.StringIO()
    Progress(quiet)(sim)
    assert quiet.getvalue() == ""
    shown = io.StringIO()
    progress = Progress(shown, force=True)
    sim.run(on_tick=progress)
    progress.close()
    text = shown.getvalue()
    assert text.startswith("\r[")
    assert "msg/s" in text
    assert "online" in text
    assert "faults injected 0" in text

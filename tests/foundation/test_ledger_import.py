"""`aquafleet devices import` and `devices list`, through the CLI against a real database."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from tests.fix_cli import RunCli

HEADER = (
    "device_id,class,model,hardware_lot,firmware,install_date,site_id,site_name,site_kind,"
    "zone,address,site_timezone,status,supplier_pp,supplier_ro_membrane,supplier_pump"
)
CAMPUS_SITE = "SITE-NJU,Nanjing University Xianlin,campus,east,163 Xianlin Ave,Asia/Shanghai"
VENDING_SITE = "SITE-GL,Gulou Street,vending_area,central,1 Gulou Square,"
GOOD_ROWS = [
    f"AQ-C-0001,campus,PureCampus-300,LOT-2025-07A,2.4.1,2025-08-01,{CAMPUS_SITE},active,"
    "Yili Filters,Vontron,Shanghai Pumps",
    f"AQ-C-0002,campus,PureCampus-300,LOT-2025-07A,2.4.1,2025-08-02,{CAMPUS_SITE},,,,",
    f"AQ-V-0001,vending,AquaVend-2,LOT-2024-11B,1.9.0,2024-12-10,{VENDING_SITE},inactive,,,",
]


def _write(tmp_path: Path, rows: list[str], header: str = HEADER, name: str = "ledger.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def env(run_cli: RunCli, database_url: str) -> dict[str, str]:
    environment = {"AQUAFLEET_DATABASE_URL": database_url}
    assert run_cli("db", "migrate", env=environment).returncode == 0
    return environment


def _device_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM devices").fetchone()
    assert row is not None
    return int(row[0])


def test_good_file_is_imported_and_listed(
    run_cli: RunCli, env: dict[str, str], tmp_path: Path
) -> None:
    result = run_cli("devices", "import", str(_write(tmp_path, GOOD_ROWS)), env=env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "devices: 3 added, 0 updated, 0 unchanged; sites: 2 added, 0 updated"
    )
    listed = [
        json.loads(line)
        for line in run_cli("devices", "list", "--json", env=env).stdout.splitlines()
    ]
    assert [d["device_id"] for d in listed] == ["AQ-C-0001", "AQ-C-0002", "AQ-V-0001"]
    first = listed[0]
    assert first["class"] == "campus"
    assert first["hardware_lot"] == "LOT-2025-07A"
    assert first["part_suppliers"] == {
        "pp": "Yili Filters",
        "ro_membrane": "Vontron",
        "pump": "Shanghai Pumps",
    }
    assert listed[2]["status"] == "inactive"
    vending_only = run_cli("devices", "list", "--class", "vending", env=env).stdout
    assert "AQ-V-0001" in vending_only
    assert "AQ-C-0001" not in vending_only
    assert "1 machine(s)" in vending_only
    with psycopg.connect(env["AQUAFLEET_DATABASE_URL"]) as conn:
        tz = conn.execute("SELECT timezone FROM sites WHERE site_id = 'SITE-GL'").fetchone()
    assert tz == ("Asia/Shanghai",)  # an empty site_timezone takes the company zone


def test_reimporting_the_same_file_changes_nothing(
    run_cli: RunCli, env: dict[str, str], tmp_path: Path
) -> None:
    path = _write(tmp_path, GOOD_ROWS)
    run_cli("devices", "import", str(path), env=env)
    with psycopg.connect(env["AQUAFLEET_DATABASE_URL"]) as conn:
        before = conn.execute("SELECT * FROM devices ORDER BY device_id").fetchall()

    again = run_cli("devices", "import", str(path), env=env)

    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == (
        "devices: 0 added, 0 updated, 3 unchanged; sites: 0 added, 0 updated"
    )
    with psycopg.connect(env["AQUAFLEET_DATABASE_URL"]) as conn:
        after = conn.execute("SELECT * FROM devices ORDER BY device_id").fetchall()
    assert after == before  # not even updated_at moved


def test_a_changed_row_is_updated_by_device_id(
    run_cli: RunCli, env: dict[str, str], tmp_path: Path
) -> None:
    run_cli("devices", "import", str(_write(tmp_path, GOOD_ROWS)), env=env)
    changed = [GOOD_ROWS[0].replace("2.4.1", "2.5.0", 1), *GOOD_ROWS[1:]]

    result = run_cli("devices", "import", str(_write(tmp_path, changed, name="b.csv")), env=env)

    assert result.stdout.strip() == (
        "devices: 0 added, 1 updated, 2 unchanged; sites: 0 added, 0 updated"
    )
    with psycopg.connect(env["AQUAFLEET_DATABASE_URL"]) as conn:
        row = conn.execute("SELECT firmware FROM devices WHERE device_id = 'AQ-C-0001'").fetchone()
    assert row == ("2.5.0",)


BAD_ROWS = [
    ("bad/id,campus", "device_id 'bad/id' must be 3-64 letters"),
    ("AQ-X-1,kiosk", "class 'kiosk' is not one of: campus, vending"),
    ("AQ-X-1,campus,,", "model is empty"),
    ("AQ-X-1,campus,M,L,1.0,01/08/2025", "install_date '01/08/2025' is not a date"),
    ("AQ-X-1,campus,M,L,1.0,2999-01-01", "install_date 2999-01-01 is in the future"),
    ("AQ-X-1,campus,M,L,1.0,2025-01-01,S,N,market", "site_kind 'market' is not one of"),
    (
        "AQ-X-1,vending,M,L,1.0,2025-01-01,S,N,campus,z,a",
        "a vending machine cannot stand at a campus site",
    ),
    ("AQ-X-1,campus,M,L,1.0,2025-01-01,S,N,campus,z,a,Moon/Base", "not an IANA time zone"),
    ("AQ-X-1,campus,M,L,1.0,2025-01-01,S,N,campus,z,a,,broken", "status 'broken' is not one of"),
    ("AQ-X-1,campus,M,L,1.0,2025-01-01,S,N,campus,z,a,,,,,,surplus", "more fields than"),
    ("AQ-X-1,campus,M\x07,L,1.0,2025-01-01,S,N,campus,z,a", "model contains control characters"),
    ("AQ-X-1,campus," + "M" * 501 + ",L,1.0,2025-01-01,S,N,campus,z,a", "longer than 500"),
]


def _complete(row: str) -> str:
    """Pad a short row with plausible values so only the intended field is wrong."""
    defaults = [
        "AQ-X-1",
        "campus",
        "M",
        "L",
        "1.0",
        "2025-01-01",
        "S",
        "N",
        "campus",
        "z",
        "a",
        "",
        "",
        "",
        "",
        "",
    ]
    fields = row.split(",")
    return ",".join(fields + defaults[len(fields) :])


@pytest.mark.parametrize(("row", "reason"), BAD_ROWS, ids=[r for _, r in BAD_ROWS])
def test_each_kind_of_bad_row_is_reported_with_its_line(
    run_cli: RunCli, env: dict[str, str], tmp_path: Path, row: str, reason: str
) -> None:
    path = _write(tmp_path, [*GOOD_ROWS, _complete(row)])

    result = run_cli("devices", "import", str(path), env=env)

    assert result.returncode == 1
    assert f"{path}: line 5: " in result.stderr
    assert reason in result.stderr
    assert "nothing imported" in result.stderr
    assert "Traceback" not in result.stderr
    assert _device_count(env["AQUAFLEET_DATABASE_URL"]) == 0  # all or nothing


def test_every_bad_row_is_reported_not_just_the_first(
    run_cli: RunCli, env: dict[str, str], tmp_path: Path
) -> None:
    rows = [
        GOOD_ROWS[0],
        _complete("AQ-X-1,kiosk"),
        GOOD_ROWS[1],
        _complete("AQ-X-2,campus,M,L,1.0,tomorrow"),
        GOOD_ROWS[0],  # the same device twice
        GOOD_ROWS[1].replace("163 Xianlin Ave", "9 Other Road").replace("AQ-C-0002", "AQ-C-9"),
    ]

    result = run_cli("devices", "import", str(_write(tmp_path, rows)), env=env)

    assert result.returncode == 1
    assert "line 3: class 'kiosk'" in result.stderr
    assert "line 5: install_date 'tomorrow'" in result.stderr
    assert "line 6: device_id AQ-C-0001 already on line 2" in result.stderr
    assert "line 7: site SITE-NJU differs from its description on line 2" in result.stderr
    assert "4 problem(s), nothing imported" in result.stderr
    assert _device_count(env["AQUAFLEET_DATABASE_URL"]) == 0


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "line 1: the file is empty"),
        (HEADER.encode() + b"\n", "the file has no device rows"),
        (HEADER.replace(",model", "").encode() + b"\n", "missing column(s): model"),
        ((HEADER + ",colour").encode() + b"\nx\n", "unknown column(s): colour"),
        ((HEADER + ",zone").encode() + b"\n", "duplicated column(s): zone"),
        (HEADER.encode() + b"\n\xff\xfe,broken\n", "not UTF-8 text"),
        (HEADER.encode() + b'\n"AQ-1,campus\n', "malformed CSV"),
    ],
    ids=["empty", "header-only", "missing", "unknown", "duplicated", "not-utf8", "bad-quote"],
)
def test_a_malformed_file_is_refused(
    run_cli: RunCli, env: dict[str, str], tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)

    result = run_cli("devices", "import", str(path), env=env)

    assert result.returncode == 1
    assert reason in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_file_is_one_line(run_cli: RunCli, env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli("devices", "import", str(tmp_path / "nope.csv"), env=env)

    assert result.returncode == 1
    assert "cannot read file" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_spreadsheet_export_with_bom_and_crlf_is_accepted(
    run_cli: RunCli, env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join([HEADER, *GOOD_ROWS, ""]).encode())

    result = run_cli("devices", "import", str(path), env=env)

    assert result.returncode == 0, result.stderr
    assert _device_count(env["AQUAFLEET_DATABASE_URL"]) == 3


def test_machines_behind_a_gateway_record_it(
    run_cli: RunCli, env: dict[str, str], tmp_path: Path
) -> None:
    header = HEADER + ",gateway_id"
    rows = [GOOD_ROWS[0] + ",GW-NJU-01", GOOD_ROWS[1] + ",GW-NJU-01", GOOD_ROWS[2] + ","]

    result = run_cli("devices", "import", str(_write(tmp_path, rows, header=header)), env=env)

    assert result.returncode == 0, result.stderr
    listed = {
        d["device_id"]: d["gateway_id"]
        for d in map(
            json.loads, run_cli("devices", "list", "--json", env=env).stdout.split("\n")[:-1]
        )
    }
    assert listed == {"AQ-C-0001": "GW-NJU-01", "AQ-C-0002": "GW-NJU-01", "AQ-V-0001": None}


@pytest.mark.parametrize(
    ("gateway", "reason"),
    [
        ("GW/1", "gateway_id 'GW/1' must be 3-64 letters"),
        ("AQ-V-0001", "gateway_id AQ-V-0001 is a machine's device_id"),
    ],
)
def test_a_bad_gateway_id_is_refused(
    run_cli: RunCli, env: dict[str, str], tmp_path: Path, gateway: str, reason: str
) -> None:
    header = HEADER + ",gateway_id"
    rows = [GOOD_ROWS[0] + f",{gateway}", GOOD_ROWS[1] + ",", GOOD_ROWS[2] + ","]

    result = run_cli("devices", "import", str(_write(tmp_path, rows, header=header)), env=env)

    assert result.returncode == 1
    assert f"line 2: {reason}" in result.stderr
    assert _device_count(env["AQUAFLEET_DATABASE_URL"]) == 0

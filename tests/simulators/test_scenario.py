"""Scenario files: valid ones load into typed objects, bad ones are refused naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from firmware_protocol import FaultCode

from simulators import ScenarioError, load_scenario, parse_scenario
from simulators.scenario import Misbehaviour


def test_yaml_and_toml_give_the_same_scenario(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(
        "seed: 7\nduration: 2d\nfaults:\n"
        "  - {fault: pump_failure, share: 0.1, class: vending, at: +6h, params: {mode: stalled}}\n"
        "misbehaviours:\n  - {kind: duplicate, count: 2, at: 1h, duration: 30m}\n"
    )
    (tmp_path / "s.toml").write_text(
        'seed = 7\nduration = "2d"\n[[faults]]\nfault = "pump_failure"\nshare = 0.1\n'
        'class = "vending"\nat = "+6h"\nparams = {mode = "stalled"}\n'
        '[[misbehaviours]]\nkind = "duplicate"\ncount = 2\nat = "1h"\nduration = "30m"\n'
    )
    a = load_scenario(tmp_path / "s.yaml")
    b = load_scenario(tmp_path / "s.toml")
    assert a == b
    assert a.duration_ms == 2 * 86_400_000
    fault = a.faults[0]
    assert fault.code is FaultCode.PUMP_FAILURE
    assert fault.at.offset_ms == 6 * 3_600_000
    assert fault.params["mode"] == "stalled"
    assert a.misbehaviours[0].misbehaviour is Misbehaviour.DUPLICATE
    assert a.misbehaviours[0].params["probability"] == 0.3  # the default


def test_absolute_times_are_read_in_the_company_zone() -> None:
    s = parse_scenario({"faults": [{"fault": "leak", "count": 1, "at": "2025-03-03T08:00:00"}]})
    assert s.faults[0].at.epoch_ms == 1740960000000  # 00:00 UTC


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"faults": [{"fault": "leak", "count": 1, "at": "tomorrow"}]}, "faults[0].at: not a time"),
        ({"faults": [{"fault": "leek", "count": 1, "at": 0}]}, "faults[0].fault: must be one of"),
        ({"faults": [{"fault": "leak", "at": 0}]}, "faults[0]: needs exactly one of devices"),
        ({"faults": [{"fault": "leak", "count": 1}]}, "faults[0].at: is required"),
        (
            {"faults": [{"fault": "leak", "count": 1, "at": 0, "sevrity": 1}]},
            "faults[0].sevrity: unknown key",
        ),
        (
            {"faults": [{}, {"fault": "pump_failure", "count": 1, "at": 0,
                             "params": {"mode": "melted"}}]},
            "faults[0].fault: is required",
        ),
        (
            {"faults": [{"fault": "pump_failure", "count": 1, "at": 0,
                         "params": {"mode": "melted"}}]},
            "faults[0].params.mode: must be one of: open, stalled",
        ),
        ({"faults": [{"fault": "leak", "share": 1.5, "at": 0}]}, "faults[0].share: must be"),
        ({"duration": "soon"}, "duration: not a duration"),
        ({"start": "+1h"}, "start: must be an absolute time"),
        ({"telemetry_interval": "1s"}, "telemetry_interval: must be whole seconds"),
        ({"misbehaviours": [{"kind": "impersonate", "count": 1, "at": 0}]},
         "misbehaviours[0].params.target: is required"),
        ({"batch_defects": [{"lot": "L1", "fault": "pump_failure"}]},
         "batch_defects[0].base_rate_per_year: is required"),
        ({"repairs": [{"device": "SIM-000001", "at": 0}]}, "repairs[0]: needs a fault"),
        ({"fleet": {"machines": 0}}, "fleet.machines: must be between"),
        ({"colour": "blue"}, "colour: unknown key"),
        (["not", "a", "mapping"], "must be a mapping"),
    ],
)  # fmt: skip
def test_bad_scenarios_name_the_key(document: object, message: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(document)
    assert message in str(info.value)


def test_syntax_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("faults: [\n")
    with pytest.raises(ScenarioError, match=r"bad\.yaml: not valid YAML"):
        load_scenario(bad)
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("faults = [\n")
    with pytest.raises(ScenarioError, match=r"bad\.toml: not valid TOML"):
        load_scenario(bad_toml)

"""The C encoder rebuilds every valid uplink vector, and its output validates."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import firmware_protocol as fp
import orjson
import pytest

from .vectors import ROOT, load_vectors, schema_validators

C_DIR = ROOT / "c"
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2"]
# Vectors the device side does not produce: commands travel cloud to device,
# and the unknown-fields vector shows what a receiver ignores.
NOT_FROM_DEVICE = {"telemetry_unknown_fields"}
RECEIVED_AT_MS = 1_764_300_060_000


@pytest.fixture(scope="module")
def c_output(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    gcc = shutil.which("gcc")
    if gcc is None:
        if os.environ.get("AQUAFLEET_REQUIRE_SERVICES") == "1":
            pytest.fail("gcc is required (AQUAFLEET_REQUIRE_SERVICES=1) but not installed")
        pytest.skip("gcc not installed")
    exe = tmp_path_factory.mktemp("c_encoder") / "test_encoder"
    sources = [str(C_DIR / "aquafleet_proto.c"), str(C_DIR / "test_encoder.c")]
    build = subprocess.run(
        [gcc, *CFLAGS, "-o", str(exe), *sources], capture_output=True, text=True, check=False
    )
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, check=False, timeout=60)
    assert run.returncode == 0, run.stderr.decode()
    out: dict[str, bytes] = {}
    for line in run.stdout.splitlines():
        name, _, payload = line.partition(b"\t")
        out[name.decode()] = payload
    return out


def _device_vectors() -> dict[str, bytes]:
    return {
        v.name.removeprefix("valid/"): v.payload
        for v in load_vectors()
        if v.valid and v.kind != "cmd" and v.name.removeprefix("valid/") not in NOT_FROM_DEVICE
    }


def test_every_device_vector_is_built(c_output: dict[str, bytes]) -> None:
    built = {k for k in c_output if not k.startswith("extra/")}
    assert built == set(_device_vectors())


@pytest.mark.parametrize("name", sorted(_device_vectors()))
def test_c_output_equals_vector(c_output: dict[str, bytes], name: str) -> None:
    payload = c_output[name]
    assert orjson.loads(payload) == orjson.loads(_device_vectors()[name])
    kind = name.split("_", 1)[0]
    assert schema_validators()[kind].is_valid(json.loads(payload))
    vector = next(v for v in load_vectors() if v.name == f"valid/{name}")
    fp.decode(vector.topic, payload, received_at_ms=vector.received_at_ms)


def test_c_extras_validate(c_output: dict[str, bytes]) -> None:
    extras = {k: v for k, v in c_output.items() if k.startswith("extra/")}
    for name, payload in extras.items():
        assert schema_validators()["event"].is_valid(json.loads(payload)), name
        fp.decode("aquafleet/v1/pur-0001/event", payload, received_at_ms=RECEIVED_AT_MS)
    faults = {k.removeprefix("extra/fault_") for k in extras if k.startswith("extra/fault_")}
    assert faults == {c.value for c in fp.FaultCode}
    escaped = orjson.loads(extras["extra/escaping"])["detail"]
    assert escaped == 'say "hi" \\ path\n\ttab \x01 caf\u00e9 \u20ac \U0001f4a7'
    assert orjson.loads(extras["extra/number_rounding"])["value"] == -13


def test_header_fault_table_matches_python() -> None:
    header = (C_DIR / "aquafleet_proto.h").read_text()
    for code in fp.FaultCode:
        assert f"AFP_FAULT_{code.value.upper()}" in header

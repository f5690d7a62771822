"""Running the `aquafleet` command as a user would: a separate process with its own environment.

The environment is the test process's minus every AQUAFLEET_* variable, plus what the test
passes, and a state directory of the test's own, so the user's embedded database is never
touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

AQUAFLEET = Path(sys.executable).with_name("aquafleet")

RunCli = Callable[..., subprocess.CompletedProcess[str]]


def cli_environment(state_dir: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AQUAFLEET_")}
    clean["AQUAFLEET_STATE_DIR"] = str(state_dir)
    clean.update(env or {})
    return clean


@pytest.fixture
def run_cli(tmp_path: Path) -> RunCli:
    """``run_cli("db", "status", env={...}, timeout=60)`` -> CompletedProcess (text)."""
    state_dir = tmp_path / "state"

    def run(
        *args: str, env: Mapping[str, str] | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(AQUAFLEET), *args],
            env=cli_environment(state_dir, env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run

"""The command line itself: help on every command, one-line errors on bad arguments."""

from __future__ import annotations

import pytest

from aquafleet.cli.main import build_parser
from tests.fix_cli import RunCli


def _all_command_paths() -> list[tuple[str, ...]]:
    """Every command and subcommand the CLI offers, found by walking the parser."""
    import argparse

    paths: list[tuple[str, ...]] = [()]

    def walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    paths.append((*prefix, name))
                    walk(sub, (*prefix, name))

    walk(build_parser(), ())
    return paths


def test_the_cli_offers_the_foundation_commands() -> None:
    paths = _all_command_paths()
    for expected in [("db", "migrate"), ("db", "status"), ("db", "prune"), ("devices", "import")]:
        assert expected in paths


@pytest.mark.parametrize("path", _all_command_paths(), ids=lambda p: " ".join(p) or "aquafleet")
def test_every_command_has_help(run_cli: RunCli, path: tuple[str, ...]) -> None:
    result = run_cli(*path, "--help")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: aquafleet")


@pytest.mark.parametrize(
    "args",
    [
        ("frobnicate",),
        ("db",),
        ("db", "explode"),
        ("db", "prune", "--older-than-days", "-3"),
        ("db", "prune", "--older-than-days", "soon"),
        ("devices", "import"),
        ("devices", "list", "--class", "spaceship"),
    ],
    ids=" ".join,
)
def test_bad_arguments_exit_2_with_one_line(run_cli: RunCli, args: tuple[str, ...]) -> None:
    result = run_cli(*args)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert ": error: " in lines[0]
    assert "Traceback" not in result.stderr

"""The `aquafleet` command line."""

from aquafleet.cli.main import main, run

__all__ = ["main", "run"]

"""Entry point: parse, build the settings, run the command, turn product errors into one line."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Protocol, cast

from aquafleet.cli.app import EXIT_FAILURE, EXIT_USAGE, CommandParser, err
from aquafleet.config import load_settings
from aquafleet.errors import AquaFleetError, ConfigError, LedgerImportError, UsageError

# Each module adds its commands; components bring their own.
COMMAND_MODULES: tuple[str, ...] = (
    "aquafleet.cli.db_commands",
    "aquafleet.cli.devices_commands",
    "simulators.cli",
    "simulators.recording_cli",
    "ingest.cli",
)


class CommandModule(Protocol):
    def register(self, commands: argparse._SubParsersAction) -> None: ...  # type: ignore[type-arg]


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="aquafleet",
        description="Fleet monitoring and field service for smart drinking-water machines.",
        epilog="Settings come from AQUAFLEET_* environment variables (see the README).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    commands = parser.add_subparsers(
        title="commands", metavar="COMMAND", parser_class=CommandParser
    )
    commands.required = True
    for name in COMMAND_MODULES:
        module = cast(CommandModule, importlib.import_module(name))
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        # pgserver logs every pg_ctl call at INFO; only its problems matter to a user
        logging.getLogger("pgserver").setLevel(logging.WARNING)
    try:
        settings = load_settings()
        code: int = args.handler(args, settings)
        return code
    except ConfigError as exc:
        for problem in exc.problems:
            err(f"aquafleet: configuration error: {problem}")
        return EXIT_USAGE
    except UsageError as exc:
        err(f"aquafleet: error: {exc}")
        return EXIT_USAGE
    except LedgerImportError as exc:
        for row_problem in exc.problems:
            err(f"{exc.path}: {row_problem}")
        err(f"aquafleet: error: {exc}")
        return EXIT_FAILURE
    except AquaFleetError as exc:
        err(f"aquafleet: error: {exc}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def run() -> None:  # pragma: no cover - console script
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))

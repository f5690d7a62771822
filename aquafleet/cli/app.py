"""The pieces every command module uses: the parser type, output, and the command signature.

A command module exposes ``register(subparsers)``; each command it adds sets ``handler`` to a
function ``(args, settings) -> exit code``. Settings are built after parsing, so ``--help``
works whatever the environment holds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from aquafleet.config import Settings

Handler = Callable[[argparse.Namespace, Settings], int]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class CommandParser(argparse.ArgumentParser):
    """argparse with a one-line error instead of the usage block, and a clear exit code."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def add_command(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    help_text: str,
    handler: Handler,
    description: str | None = None,
) -> CommandParser:
    parser: CommandParser = subparsers.add_parser(
        name, help=help_text, description=description or help_text
    )
    parser.set_defaults(handler=handler)
    return parser


def add_group(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    help_text: str,
) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    parser: CommandParser = subparsers.add_parser(name, help=help_text, description=help_text)
    group = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=CommandParser)
    group.required = True
    return group


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def err(text: str) -> None:
    sys.stderr.write(text + "\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number greater than 0")
    return value

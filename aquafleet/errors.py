"""The project's exception tree.

    AquaFleetError                 every error the product raises on purpose
    ├── ConfigError                a setting is missing or malformed; start-up stops
    ├── UsageError                 a command was called with arguments it cannot use
    └── StoreError                 the database could not do what was asked
        ├── DatabaseUnavailable    no connection could be made
        ├── EmbeddedDatabaseError  the embedded PostgreSQL would not start
        ├── MigrationError         the schema could not be brought up to date
        └── LedgerImportError      an equipment ledger file was refused (all of its bad rows)

Components root their own trees in `AquaFleetError`, so the CLI can turn any of them into a
one-line message instead of a traceback. Library errors (psycopg, paho) are wrapped at the
boundary with ``raise ... from``.
"""

from __future__ import annotations

from dataclasses import dataclass


class AquaFleetError(Exception):
    """Base of every error the product raises on purpose."""


class ConfigError(AquaFleetError):
    """A setting is missing or malformed. Each problem names its environment variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class UsageError(AquaFleetError):
    """A command was called with arguments it cannot use."""


class StoreError(AquaFleetError):
    """The database could not do what was asked."""


class DatabaseUnavailable(StoreError):
    """No connection to the database could be made."""


class EmbeddedDatabaseError(StoreError):
    """The embedded PostgreSQL could not be started."""


class MigrationError(StoreError):
    """The schema could not be brought up to date."""


@dataclass(frozen=True)
class RowProblem:
    """One bad row of an imported file: its physical line number and what is wrong."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class LedgerImportError(StoreError):
    """A ledger file was refused; nothing of it was written."""

    def __init__(self, path: str, problems: list[RowProblem]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: {len(problems)} problem(s), nothing imported")

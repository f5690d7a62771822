"""Errors of the ingest component.

    AquaFleetError
    └── IngestError             ingest cannot run as asked
        ├── BrokerUnavailable   the broker could not be reached (after the first attempts)
        ├── BrokerRefused       the broker refused the connection or the subscription
        │                       (carries the MQTT reason code)
        └── CredentialsError    per-device broker credentials could not be produced

Transient failures while running (the database or the broker going away) are not errors: the
worker waits, retries and resumes. These are raised only when there is nothing sensible to wait
for, so the CLI can turn them into one line.
"""

from __future__ import annotations

from aquafleet.errors import AquaFleetError


class IngestError(AquaFleetError):
    """Ingest cannot run as asked."""


class BrokerUnavailable(IngestError):
    """The broker could not be reached."""


class BrokerRefused(IngestError):
    """The broker refused the connection or a subscription."""

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class CredentialsError(IngestError):
    """Per-device broker credentials could not be produced."""

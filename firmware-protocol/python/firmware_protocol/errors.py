"""Errors of the protocol component.

Exception tree::

    ProtocolError              root of everything this package raises
    ├── Rejected               an inbound message breaks the contract;
    │                          carries ``reason`` (a RejectReason) and ``detail``
    └── EncodeError            a model cannot be put on the wire as v1
                               (out-of-range or non-finite value); also a ValueError

``RejectReason`` is the one list of quarantine reason codes. The codec raises
the message-level ones; ingest adds the database-side ones (``unknown_device``,
``duplicate``) so that every quarantined row carries a code from this enum.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["EncodeError", "ProtocolError", "RejectReason", "Rejected"]


class RejectReason(StrEnum):
    """Why a message was quarantined. Values are stable: they are stored."""

    BAD_TOPIC = "bad_topic"
    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    MALFORMED_JSON = "malformed_json"
    NON_FINITE_NUMBER = "non_finite_number"
    UNSUPPORTED_VERSION = "unsupported_version"
    SCHEMA_VIOLATION = "schema_violation"
    IDENTITY_MISMATCH = "identity_mismatch"
    CLOCK_FUTURE = "clock_future"
    CLOCK_PAST = "clock_past"
    # Decided by ingest against the database, never by the codec.
    UNKNOWN_DEVICE = "unknown_device"
    DUPLICATE = "duplicate"


#: Reasons the codec itself can raise, in the order they are checked.
CODEC_REASONS: tuple[RejectReason, ...] = (
    RejectReason.BAD_TOPIC,
    RejectReason.TOO_LARGE,
    RejectReason.NOT_UTF8,
    RejectReason.MALFORMED_JSON,
    RejectReason.NON_FINITE_NUMBER,
    RejectReason.UNSUPPORTED_VERSION,
    RejectReason.SCHEMA_VIOLATION,
    RejectReason.IDENTITY_MISMATCH,
    RejectReason.CLOCK_FUTURE,
    RejectReason.CLOCK_PAST,
)


class ProtocolError(Exception):
    """Root of the errors raised by firmware_protocol."""


class Rejected(ProtocolError):
    """An inbound message was refused; quarantine it under ``reason``."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[Rejected], tuple[RejectReason, str]]:
        # Keeps the exception picklable for process pools in ingest.
        return (Rejected, (self.reason, self.detail))


class EncodeError(ProtocolError, ValueError):
    """A model holds a value that v1 cannot carry."""

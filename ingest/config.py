"""What one ingest worker is asked to do: a frozen value, validated once, passed down."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, replace
from enum import StrEnum

from firmware_protocol import (
    MAX_FUTURE_SKEW_MS,
    MAX_HIST_AGE_MS,
    MAX_LIVE_AGE_MS,
    UPLINK_SUBSCRIPTIONS,
)

from aquafleet.errors import UsageError

DEFAULT_GROUP = "aquafleet-ingest"


def default_client_id() -> str:
    # Stable across restarts (the broker keeps the session under it) and distinct per machine.
    return f"aquafleet-ingest-{socket.gethostname()}"[:64]


class Protocol(StrEnum):
    """MQTT version to speak; AUTO tries 5 first and falls back to 3.1.1."""

    AUTO = "auto"
    V5 = "5"
    V311 = "3.1.1"


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    """One worker's settings. Defaults suit production; tests and the demo shrink them.

    ``max_inflight`` bounds unacknowledged messages: it is sent as Receive Maximum (MQTT 5), and
    the worker stops reading from the broker when that many wait for their commit, so memory
    stays bounded whatever the database does.
    """

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False
    client_id: str = field(default_factory=default_client_id)
    group: str = DEFAULT_GROUP
    shared: bool = True
    protocol: Protocol = Protocol.AUTO
    topics: tuple[str, ...] = UPLINK_SUBSCRIPTIONS
    session_expiry_s: int = 7 * 24 * 3600
    keepalive_s: int = 30
    batch_rows: int = 2000
    batch_ms: int = 50
    max_inflight: int = 4000
    device_refresh_s: float = 30.0
    reorder_window_s: float = 10.0
    resend_expiry_s: int = 3600
    quarantine_payload_bytes: int = 4096
    max_future_skew_ms: int = MAX_FUTURE_SKEW_MS
    max_live_age_ms: int = MAX_LIVE_AGE_MS
    max_hist_age_ms: int = MAX_HIST_AGE_MS
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 10.0

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.port < 65536:
            problems.append(f"port {self.port} is out of range")
        if not 0 < len(self.client_id) <= 64:
            problems.append("client id must be 1 to 64 characters")
        if self.shared and not self.group.replace("-", "").replace("_", "").isalnum():
            problems.append(f"group {self.group!r} may only hold letters, digits, - and _")
        if self.batch_rows < 1 or self.batch_ms < 1:
            problems.append("batch rows and batch ms must be at least 1")
        if not 1 <= self.max_inflight <= 65535:
            problems.append("max in-flight must be between 1 and 65535 (MQTT Receive Maximum)")
        if self.max_inflight < self.batch_rows:
            # A batch could never fill: the broker stops at max_inflight unacknowledged messages.
            problems.append(
                f"max in-flight ({self.max_inflight}) must be at least batch rows "
                f"({self.batch_rows})"
            )
        if problems:
            raise UsageError("; ".join(problems))

    def subscriptions(self) -> tuple[str, ...]:
        if not self.shared:
            return self.topics
        return tuple(f"$share/{self.group}/{topic}" for topic in self.topics)

    def for_worker(self, index: int) -> IngestConfig:
        """The settings of worker ``index``: its own client id (and session).

        The index is in the id whatever the count, so raising ``--workers`` keeps every
        existing session in use; lowering it leaves sessions to retire (`ingest.retire`).
        """
        return replace(self, client_id=f"{self.client_id[:60]}-{index}")

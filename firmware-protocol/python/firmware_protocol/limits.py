"""Numeric limits of protocol v1; SPEC.md section "Limits" states the same."""

from __future__ import annotations

from typing import Final

__all__ = [
    "MAX_BIRTH_BYTES",
    "MAX_FUTURE_SKEW_MS",
    "MAX_HIST_AGE_MS",
    "MAX_LIVE_AGE_MS",
    "MAX_PAYLOAD_BYTES",
    "PROTOCOL_VERSION",
    "UINT32_MAX",
]

PROTOCOL_VERSION: Final = 1

#: Every message but birth; a telemetry message is typically 0.6-1 KiB.
MAX_PAYLOAD_BYTES: Final = 16 * 1024
#: Birth carries the configuration, all stages and the full state.
MAX_BIRTH_BYTES: Final = 64 * 1024

UINT32_MAX: Final = 4_294_967_295

#: Device time may run this far ahead of receive time.
MAX_FUTURE_SKEW_MS: Final = 5 * 60 * 1000
#: A live message may be this old when decoded. Generous on purpose: the
#: broker queues QoS 1 messages while ingest is down, and those are late, not
#: wrong. Small drifts are the rule engine's clock_drift fault, not a rejection.
MAX_LIVE_AGE_MS: Final = 24 * 3600 * 1000
#: A store-and-forward replay (hist) may be this old.
MAX_HIST_AGE_MS: Final = 7 * 24 * 3600 * 1000

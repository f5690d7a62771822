"""The quarantine: messages refused, kept with their reason and a bounded copy of the payload.

Reason codes are `firmware_protocol.RejectReason` values: the codec's own, plus the two ingest
decides against the database (``unknown_device``, ``duplicate``).
"""

from __future__ import annotations

from typing import NamedTuple

from firmware_protocol import RejectReason


class QuarantineRecord(NamedTuple):
    received_ms: int
    topic: str
    device_id: str | None
    reason: RejectReason
    detail: str
    payload: bytes  # at most the configured bound
    payload_bytes: int  # the whole payload's size

    @classmethod
    def of(
        cls,
        *,
        received_ms: int,
        topic: str,
        device_id: str | None,
        reason: RejectReason,
        detail: str,
        payload: bytes,
        bound: int,
    ) -> QuarantineRecord:
        # Detail strings come from validators and may quote the payload; keep them short too.
        return cls(
            received_ms,
            topic[:1024],
            device_id,
            reason,
            detail[:1000],
            bytes(payload[:bound]),
            len(payload),
        )

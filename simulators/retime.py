"""Moving a recording's device times onto the clock of its replay.

A recording keeps device timestamps as they were; replayed days later, every data message is
older than ingest accepts for live data and is quarantined as ``clock_past``. Re-timing shifts
each message's ``ts`` (and a command's ``expires_at``) by how much later it is published than it
was recorded, so what the recording says about time holds again: a live reading is stamped about
when it arrives, a store-and-forward replay stays as far behind as it was, and with ``--speed K``
the readings come K times closer together, as they are published.

When the recording was made is taken from its header (``created``), or failing that from the
first message that carries a ``ts``. A payload that is not a JSON object with an integer ``ts``
(a malformed message kept in the recording, say), or whose shifted time no longer fits a 64-bit
integer, goes out unchanged.
"""

from __future__ import annotations

from datetime import datetime

import orjson

from simulators.recording import Frame, RecordingHeader

_TIME_MEMBERS = ("ts", "expires_at")


class Retimer:
    def __init__(self, header: RecordingHeader) -> None:
        self._recorded_start_ms = _created_ms(header)

    def payload(self, frame: Frame, published_ms: int) -> bytes:
        """The frame's payload with its device times moved to a publication at ``published_ms``."""
        try:
            document = orjson.loads(frame.payload)
        except orjson.JSONDecodeError:
            return frame.payload
        if not isinstance(document, dict) or document.get("ts").__class__ is not int:
            return frame.payload
        offset_ms = round(frame.offset_s * 1000)
        if self._recorded_start_ms is None:
            # No header time: the first stamped message was received about when it was made.
            self._recorded_start_ms = document["ts"] - offset_ms
        shift = published_ms - (self._recorded_start_ms + offset_ms)
        for member in _TIME_MEMBERS:
            value = document.get(member)
            if value.__class__ is int:
                document[member] = value + shift
        try:
            return orjson.dumps(document)
        except orjson.JSONEncodeError:
            return frame.payload  # a time shifted past 64 bits: as recorded, for ingest to judge


def _created_ms(header: RecordingHeader) -> int | None:
    if header.created is None:
        return None
    try:
        created = datetime.fromisoformat(header.created)
    except ValueError:
        return None
    if created.tzinfo is None:
        return None  # not a time this build wrote; fall back to the messages
    return round(created.timestamp() * 1000)

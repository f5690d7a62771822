"""What ingest knows about devices beyond single messages: the ledger cache and sequence gaps.

`KnownDevices` answers "is this device in the ledger?" from memory; the set is reloaded
periodically, and early (at most once a second) when an unknown id shows up, so a machine just
added to the ledger is accepted within a second while a flood from unknown ids costs one query a
second, not one per message.

`GapScanner` looks for holes in each device's sequence among the messages older than the
reorder window (so reordering between workers is over), in slices of receive time, one worker at
a time. A hole found and still open goes to `sequence_gaps` with a resend command for it in the
command outbox, in the same transaction; a hole the replay has filled is closed. A hole still
open a reorder window after the device's final ack to the resend (or after the resend expired
unanswered) is permanent and raises the cloud fault ``telemetry_gap`` (SPEC 7.1); should a late
replay fill it after all, it closes and the fault clears.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime, timedelta
from typing import NamedTuple

import orjson
from firmware_protocol import FAULT_TABLE, Command, FaultCode, Resend, encode, topic_for

from ingest import _sql
from ingest.writer import Connection

log = logging.getLogger("ingest.device_state")

_EARLY_REFRESH_S = 1.0
_MAX_SLICE = timedelta(minutes=5)
_TELEMETRY_GAP = FAULT_TABLE[FaultCode.TELEMETRY_GAP]


class GapScanResult(NamedTuple):
    confirmed: int  # holes still open after the reorder window
    resends: int  # resend commands queued for them
    permanent: int  # holes still open after the device's answer to the resend


NOTHING_SCANNED = GapScanResult(0, 0, 0)


class KnownDevices:
    def __init__(self, refresh_s: float) -> None:
        self._refresh_s = refresh_s
        self._ids: frozenset[str] = frozenset()
        self._loaded_at = float("-inf")

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def due(self) -> bool:
        return time.monotonic() - self._loaded_at >= self._refresh_s

    def may_refresh_early(self) -> bool:
        return time.monotonic() - self._loaded_at >= _EARLY_REFRESH_S

    def load(self, conn: Connection) -> None:
        with conn.transaction():
            rows = conn.execute(_sql.KNOWN_DEVICES).fetchall()
        self._ids = frozenset(str(r[0]) for r in rows)
        self._loaded_at = time.monotonic()


class GapScanner:
    def __init__(self, *, reorder_window_s: float, resend_expiry_s: int) -> None:
        self._window_s = reorder_window_s
        self._expiry_s = resend_expiry_s

    def scan(self, conn: Connection) -> GapScanResult:
        """Look for holes and judge them."""
        confirmed = resends = 0
        now_ms = int(time.time() * 1000)
        with conn.transaction():
            locked = conn.execute(_sql.GAP_SCAN_LOCK, (_sql.GAP_SCAN_LOCK_KEY,)).fetchone()
            if not locked or not locked[0]:
                return NOTHING_SCANNED  # another worker is scanning
            window = conn.execute(_sql.GAP_SCAN_SLICE, {"window": self._window_s}).fetchone()
            assert window is not None
            lo, hi = window
            assert isinstance(lo, datetime)
            assert isinstance(hi, datetime)
            # After a long stop, catch up a bounded slice per scan.
            hi = min(hi, lo + _MAX_SLICE)
            if hi > lo:
                conn.execute(_sql.FIND_GAPS, (lo, hi))
                conn.execute(_sql.GAP_SCAN_SAVE, (hi,))
            rows = conn.execute(_sql.DUE_GAPS).fetchall()
            for device_obj, boot_obj, from_obj, to_obj, present_obj in rows:
                device_id = str(device_obj)
                boot, from_seq, to_seq = int(str(boot_obj)), int(str(from_obj)), int(str(to_obj))
                if int(str(present_obj)) == to_seq - from_seq + 1:
                    conn.execute(_sql.DELETE_GAP, (device_id, boot, from_seq))
                    continue
                confirmed += 1
                command = Command(
                    device_id=device_id,
                    id=f"resend-{uuid.uuid4().hex[:20]}",
                    ts=now_ms,
                    expires_at=now_ms + self._expiry_s * 1000,
                    body=Resend(boot=boot, from_seq=from_seq, to_seq=to_seq),
                )
                payload = encode(command)
                conn.execute(
                    _sql.ENQUEUE_COMMAND,
                    (command.id, device_id, topic_for(command), payload, command.expires_at),
                )
                conn.execute(_sql.REQUEST_GAP, (command.id, device_id, boot, from_seq))
                resends += 1
                log.info(
                    "sequence gap %s boot %s seq %s..%s: resend requested",
                    device_id,
                    boot,
                    from_seq,
                    to_seq,
                    extra={"event": "gap", "device_id": device_id, "boot": boot,
                           "from_seq": from_seq, "to_seq": to_seq},
                )  # fmt: skip
            conn.execute(_sql.CLOSE_FILLED_GAPS)
            permanent = self._settle(conn)
            # The resend commands live and end with the gaps; this scan also records expiries.
            conn.execute(_sql.EXPIRE_COMMANDS)
        return GapScanResult(confirmed, resends, permanent)

    def _settle(self, conn: Connection) -> int:
        """Judge the holes whose resend is over: filled after all, or permanent."""
        permanent = 0
        rows = conn.execute(_sql.SETTLED_GAPS, {"window": self._window_s}).fetchall()
        for device_obj, boot_obj, from_obj, to_obj, cmd_id, present_obj, status in rows:
            device_id = str(device_obj)
            boot, from_seq, to_seq = int(str(boot_obj)), int(str(from_obj)), int(str(to_obj))
            missing = to_seq - from_seq + 1 - int(str(present_obj))
            if missing == 0:
                conn.execute(_sql.MARK_GAP_FILLED, (device_id, boot, from_seq))
                continue
            permanent += 1
            conn.execute(_sql.MAKE_GAP_PERMANENT, (missing, device_id, boot, from_seq))
            answer = "expired unanswered" if status is None else str(status)
            detail = {
                "boot": boot,
                "from_seq": from_seq,
                "to_seq": to_seq,
                "missing": missing,
                "resend_cmd_id": cmd_id,
                "resend": answer,
            }
            conn.execute(
                _sql.RAISE_GAP_FAULT,
                {
                    "device_id": device_id,
                    "code": _TELEMETRY_GAP.code.value,
                    "severity": _TELEMETRY_GAP.severity.value,
                    "boot": boot,
                    "from_seq": from_seq,
                    "to_seq": to_seq,
                    "detail": orjson.dumps(detail).decode(),
                },
            )
            log.info(
                "permanent gap %s boot %s seq %s..%s: %s missing (resend %s)",
                device_id,
                boot,
                from_seq,
                to_seq,
                missing,
                answer,
                extra={"event": "permanent_gap", "device_id": device_id, "boot": boot,
                       "from_seq": from_seq, "to_seq": to_seq, "missing": missing},
            )  # fmt: skip
        return permanent

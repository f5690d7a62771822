"""Writing a prepared batch in one transaction: binary COPY into staging, then the real tables.

The message key table decides what is new: keys are claimed first, and only the rows whose key
was claimed are copied on into telemetry, device_events and command_acks. A key already taken is
either the same message again (redelivery, store-and-forward replay, device retry: dropped and
counted as a duplicate) or another message reusing the sequence number (quarantined).

Device state is touched last, in device order, so two workers writing batches of the same
devices queue behind each other instead of deadlocking, and hold those row locks only for the
end of the transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import psycopg
import psycopg.errors
from firmware_protocol import RejectReason

from ingest import _sql
from ingest.prepare import PreparedBatch, pg_time
from ingest.quarantine import QuarantineRecord

log = logging.getLogger("ingest.writer")

Connection = psycopg.Connection[tuple[object, ...]]


@dataclass
class WriteResult:
    stored_by_kind: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    boot_counter_resets: int = 0


class BatchWriter:
    """Writes batches over one connection; make a new one after the connection broke."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._staging_ready = False

    @property
    def connection(self) -> Connection:
        return self._conn

    def write(self, batch: PreparedBatch) -> WriteResult:
        """Store the batch and commit; on any error nothing of it is stored."""
        conn = self._conn
        result = WriteResult(duplicates=batch.duplicates)
        quarantine: list[QuarantineRecord] = list(batch.quarantine)
        with conn.transaction():
            taken = self._claim_keys(batch, result, quarantine) if batch.keys else set()
            if taken:
                telemetry = [r for r in batch.telemetry if r[0] not in taken]
                events = [r for r in batch.events if r[0] not in taken]
            else:
                telemetry, events = batch.telemetry, batch.events
            if telemetry:
                self._copy(_sql.COPY_TELEMETRY, _sql.TELEMETRY_TYPES, telemetry, skip_idx=True)
            if events:
                self._copy(_sql.COPY_EVENTS, _sql.EVENT_TYPES, events, skip_idx=True)
            acks = [a for a in batch.acks if a[0] not in taken]
            if acks:
                with conn.cursor() as cur:
                    cur.executemany(_sql.INSERT_ACK, [(a[4], *a[1:4], a[5], *a[6:]) for a in acks])
                    # (idx, device, boot, seq, ts, received_ms, hist, cmd_id, status, ...)
                    final = [(a[8], a[5], a[7], a[1]) for a in acks if a[8] != "in_progress"]
                    if final:
                        cur.executemany(_sql.SETTLE_COMMAND, final)
            if batch.statuses:
                with conn.cursor() as cur:
                    cur.executemany(
                        _sql.INSERT_PRESENCE,
                        [
                            (s.ts_ms, s.device_id, s.boot, s.conn, s.state, s.received_ms)
                            for s in batch.statuses
                        ],
                    )
            if quarantine:
                self._copy(
                    _sql.COPY_QUARANTINE,
                    _sql.QUARANTINE_TYPES,
                    [
                        (
                            pg_time(q.received_ms),
                            q.topic,
                            q.device_id,
                            q.reason.value,
                            q.detail,
                            q.payload,
                            q.payload_bytes,
                        )
                        for q in quarantine
                    ],
                )
            result.boot_counter_resets = self._update_state(batch, taken)

        for row in batch.keys:
            if row[0] not in taken:
                kind = str(row[4])
                result.stored_by_kind[kind] = result.stored_by_kind.get(kind, 0) + 1
        if batch.statuses:
            result.stored_by_kind["status"] = len(batch.statuses)
        for q in quarantine:
            reason = q.reason.value
            result.quarantined_by_reason[reason] = result.quarantined_by_reason.get(reason, 0) + 1
        return result

    def _claim_keys(
        self, batch: PreparedBatch, result: WriteResult, quarantine: list[QuarantineRecord]
    ) -> set[int]:
        """Claim the batch's message keys; the batch positions whose key was already taken."""
        conn = self._conn
        # Fast path: COPY the keys straight in. Any key already there fails it as a whole.
        try:
            with conn.transaction():
                self._copy(_sql.COPY_KEYS, _sql.KEY_TYPES, batch.keys, skip_idx=True)
            return set()
        except psycopg.errors.UniqueViolation:
            pass
        with conn.cursor() as cur:
            if not self._staging_ready:
                cur.execute(_sql.CREATE_STAGING)
                self._staging_ready = True
            with cur.copy(_sql.COPY_STAGE_KEYS) as copy:
                copy.set_types(_sql.STAGE_KEY_TYPES)
                for row in batch.keys:
                    copy.write_row(row)
            taken = [int(str(r[0])) for r in cur.execute(_sql.CLAIM_KEYS).fetchall()]
            if taken:
                self._settle_taken(cur, batch, taken, result, quarantine)
        return set(taken)

    def _copy(
        self,
        statement: str,
        types: tuple[str, ...],
        rows: list[tuple[object, ...]],
        *,
        skip_idx: bool = False,
    ) -> None:
        with self._conn.cursor() as cur, cur.copy(statement) as copy:
            copy.set_types(types)
            write = copy.write_row
            if skip_idx:
                for row in rows:
                    write(row[1:])
            else:
                for row in rows:
                    write(row)

    def _settle_taken(
        self,
        cur: psycopg.Cursor[tuple[object, ...]],
        batch: PreparedBatch,
        taken: list[int],
        result: WriteResult,
        quarantine: list[QuarantineRecord],
    ) -> None:
        rows = cur.execute(_sql.CLASSIFY_TAKEN, (taken,)).fetchall()
        for idx_obj, same, stored_kind, stored_ms in rows:
            idx = int(str(idx_obj))
            if same:
                result.duplicates += 1
                continue
            topic, payload, received_ms, device_id = batch.keyed[idx]
            key = next(k for k in batch.keys if k[0] == idx)  # (idx, device, boot, seq, ...)
            quarantine.append(
                QuarantineRecord.of(
                    received_ms=received_ms,
                    topic=topic,
                    device_id=device_id,
                    reason=RejectReason.DUPLICATE,
                    detail=f"seq {key[3]} of boot {key[2]} already names another message "
                    f"({stored_kind} at {stored_ms})",
                    payload=payload,
                    bound=batch.payload_bound,
                )
            )

    def _update_state(self, batch: PreparedBatch, taken: set[int]) -> int:
        """Bring device_state up to the batch; returns how many boot counters went backwards."""
        if not batch.seen:
            return 0
        conn = self._conn
        devices = sorted(batch.seen)
        conn.execute(
            _sql.TOUCH_DEVICES,
            (
                devices,
                [batch.seen[d][0] for d in devices],
                [batch.seen[d][1] for d in devices],
            ),
        )
        births = [b for b in batch.births if b.idx not in taken]
        resets = 0
        with conn.cursor() as cur:
            # One by one: few per batch, and a birth that did not apply may be a boot reset.
            for b in births:
                params = {
                    "device_id": b.device_id,
                    "boot": b.boot,
                    "conn": b.conn,
                    "ts_ms": b.ts_ms,
                    "received_ms": b.received_ms,
                    "fw": b.fw,
                    "hw": b.hw,
                    "model": b.model,
                    "machine_class": b.machine_class,
                    "serial": b.serial,
                    "config_version": b.config_version,
                    "config": b.config,
                    "stages": b.stages,
                    "faults": b.faults,
                }
                if cur.execute(_sql.APPLY_BIRTH, params).rowcount:
                    cur.execute(_sql.REPUBLISH_PENDING, params)
                    continue
                reset = cur.execute(_sql.APPLY_BOOT_RESET, params).fetchone()
                if reset is not None:
                    cur.execute(_sql.REPUBLISH_PENDING, params)
                    resets += 1
                    log.warning(
                        "%s booted with boot %s below its highest %s: boot counter lost, "
                        "flagged for service",
                        b.device_id,
                        b.boot,
                        reset[0],
                        extra={"event": "boot_counter_lost", "device_id": b.device_id,
                               "boot": b.boot, "highest_boot": reset[0]},
                    )  # fmt: skip
            presence = [
                {
                    "device_id": b.device_id,
                    "boot": b.boot,
                    "conn": b.conn,
                    "rank": 0,
                    "state": "online",
                    "ts_ms": b.ts_ms,
                    "serves": [],
                }
                for b in births
            ] + [
                {
                    "device_id": s.device_id,
                    "boot": s.boot,
                    "conn": s.conn,
                    "rank": s.rank,
                    "state": s.state,
                    "ts_ms": s.ts_ms,
                    "serves": s.serves,
                }
                for s in batch.statuses
            ]
            # One by one: few per batch, and whether each applied decides what follows.
            for status in presence:
                applied = cur.execute(_sql.APPLY_STATUS, status).fetchone()
                if applied is not None and status["state"] == "lost" and applied[0]:
                    cur.execute(_sql.SERVED_LOST, (status["ts_ms"], applied[0]))
        return resets


def is_transient(exc: psycopg.Error) -> bool:
    """Whether the same batch can succeed later (connection lost, server shutting down...)."""
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return True
    state = exc.sqlstate or ""
    # 08 connection, 40 rollback (deadlock, serialization), 53 resources, 57 operator
    # intervention (shutdown), 58 system error
    return state[:2] in {"08", "40", "53", "57", "58"}

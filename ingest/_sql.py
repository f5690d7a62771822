"""Every SQL statement of ingest, in one place. Values always travel as parameters.

Times arrive as integer milliseconds (the protocol's unit) and are turned into timestamptz by the
server: building a datetime per value in Python would cost more than the COPY itself.
"""

from __future__ import annotations

from typing import Final

from firmware_protocol import BOOL_METRICS, INT_METRICS, METRIC_NAMES

_METRICS = ", ".join(METRIC_NAMES)


def _ms(column: str) -> str:
    return f"(timestamptz 'epoch' + {column} * interval '1 millisecond')"


# Binary COPY sends times as int8: PostgreSQL's binary timestamptz is the same 8-byte integer
# (microseconds since 2000-01-01), and the server reads it by the column's type. jsonb columns
# get bytea-typed values already in binary jsonb form.
# The telemetry columns of 0003 hold these integer metrics in these types; the others are bool
# or float8, as the codec's metric sets say.
_INT_COLUMN_TYPES = {
    "payment_error": "int4", "sales_count": "int8", "sales_amount": "int8", "rssi": "int4",
    "uptime": "int8",
}  # fmt: skip
if set(_INT_COLUMN_TYPES) != INT_METRICS:  # pragma: no cover - a codec change must come here
    raise RuntimeError("ingest's integer metric columns no longer match firmware_protocol")
_METRIC_TYPES = tuple(
    "bool" if n in BOOL_METRICS else _INT_COLUMN_TYPES.get(n, "float8") for n in METRIC_NAMES
)

# The message keys go straight into message_keys; a batch holding a key already taken makes
# that COPY fail (inside a savepoint), and the batch then takes the staging path below.
COPY_KEYS: Final = (
    "COPY message_keys (device_id, boot, seq, kind, time, received_at) FROM STDIN BINARY"
)
KEY_TYPES: Final = ("text", "int8", "int8", "text", "int8", "int8")

# The staging path, for batches with duplicates: a temporary table per connection, emptied at
# every commit.
CREATE_STAGING: Final = """
CREATE TEMP TABLE IF NOT EXISTS stage_keys (
    idx integer, device_id text, boot bigint, seq bigint, kind text, time timestamptz,
    received_at timestamptz
) ON COMMIT DELETE ROWS
"""
COPY_STAGE_KEYS: Final = (
    "COPY stage_keys (idx, device_id, boot, seq, kind, time, received_at) FROM STDIN BINARY"
)
STAGE_KEY_TYPES: Final = ("int4", "text", "int8", "int8", "text", "int8", "int8")

# Claim the staged keys; returns the batch positions whose key was already taken. Sorted, so
# that two workers claiming overlapping keys lock them in the same order.
CLAIM_KEYS: Final = """
WITH claimed AS (
    INSERT INTO message_keys (device_id, boot, seq, kind, time, received_at)
    SELECT device_id, boot, seq, kind, time, received_at
    FROM stage_keys ORDER BY device_id, boot, seq
    ON CONFLICT DO NOTHING
    RETURNING device_id, boot, seq
)
SELECT s.idx FROM stage_keys s
WHERE NOT EXISTS (
    SELECT 1 FROM claimed c
    WHERE c.device_id = s.device_id AND c.boot = s.boot AND c.seq = s.seq
)
"""

# For the positions whose key was taken: is the stored message the same one (a redelivery or a
# replay), or another one under the same sequence number?
CLASSIFY_TAKEN: Final = """
SELECT s.idx, (k.kind = s.kind AND k.time = s.time), k.kind,
       (extract(epoch FROM k.time) * 1000)::bigint
FROM stage_keys s JOIN message_keys k USING (device_id, boot, seq)
WHERE s.idx = ANY(%s)
"""

COPY_TELEMETRY: Final = (
    "COPY telemetry (time, device_id, boot, seq, received_at, historical, "
    f"{_METRICS}, stages) FROM STDIN BINARY"
)
TELEMETRY_TYPES: Final = ("int8", "text", "int8", "int8", "int8", "bool", *_METRIC_TYPES, "bytea")

COPY_EVENTS: Final = (
    "COPY device_events (time, device_id, boot, seq, received_at, historical, kind, code, "
    "value, detail, body) FROM STDIN BINARY"
)
EVENT_TYPES: Final = (
    "int8", "text", "int8", "int8", "int8", "bool", "text", "text", "float8", "text", "bytea",
)  # fmt: skip

INSERT_ACK: Final = f"""
INSERT INTO command_acks
    (time, device_id, boot, seq, received_at, historical, cmd_id, status, error, detail)
VALUES ({_ms("%s")}, %s, %s, %s, {_ms("%s")}, %s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING
"""

# A final ack settles its command (the first one: a device answers a repeated command id with
# the same status).
SETTLE_COMMAND: Final = f"""
UPDATE command_outbox SET outcome = %s, outcome_at = {_ms("%s")}
WHERE cmd_id = %s AND device_id = %s AND outcome IS NULL
"""

# Commands past their expiry with no final ack (SPEC 6.4: recorded as expired).
EXPIRE_COMMANDS: Final = """
UPDATE command_outbox SET outcome = 'expired', outcome_at = expires_at
WHERE outcome IS NULL AND expires_at < now()
"""

INSERT_PRESENCE: Final = f"""
INSERT INTO device_presence (time, device_id, boot, conn, state, received_at)
VALUES ({_ms("%s")}, %s, %s, %s, %s, {_ms("%s")})
ON CONFLICT DO NOTHING
"""

COPY_QUARANTINE: Final = (
    "COPY quarantine (received_at, topic, device_id, reason, detail, payload, payload_bytes) "
    "FROM STDIN BINARY"
)
QUARANTINE_TYPES: Final = ("int8", "text", "text", "text", "text", "bytea", "int4")

# Last seen, for every device of the batch, in device order (one lock order for all workers).
# It also creates the state row, which the birth and status updates below then find.
TOUCH_DEVICES: Final = f"""
INSERT INTO device_state AS d (device_id, last_seen_at, last_ts, updated_at)
SELECT device_id, {_ms("received_ms")}, {_ms("ts_ms")}, now()
FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS t(device_id, received_ms, ts_ms)
ORDER BY device_id
ON CONFLICT (device_id) DO UPDATE SET
    last_seen_at = GREATEST(d.last_seen_at, EXCLUDED.last_seen_at),
    last_ts = GREATEST(d.last_ts, EXCLUDED.last_ts),
    updated_at = now()
"""

# Firmware, configuration and cartridges from a birth, unless a newer connection's birth is
# already there. (A birth also means the connection is up: the writer applies it as an online
# status too.)
_BIRTH_FIELDS = f"""
    boot = %(boot)s, conn = %(conn)s, birth_at = {_ms("%(ts_ms)s")},
    firmware = %(fw)s, hardware = %(hw)s, model = %(model)s, machine_class = %(machine_class)s,
    serial = %(serial)s, config_version = %(config_version)s, config = %(config)s::jsonb,
    stages = %(stages)s::jsonb, faults = %(faults)s,
    highest_boot = GREATEST(highest_boot, boot, %(boot)s)"""

# A birth newer (in boot, conn order) than the one the state holds.
APPLY_BIRTH: Final = f"""
UPDATE device_state SET {_BIRTH_FIELDS}
WHERE device_id = %(device_id)s
  AND (boot IS NULL OR (boot, conn) <= (%(boot)s, %(conn)s))
"""

# A birth with a lower boot but a later device time than the state's: the boot counter was lost
# (SPEC 7.1). It becomes the current birth, its connection the current presence (the old boot's
# order no longer says anything), and the device is flagged. A lower boot with an earlier time is
# only a late delivery, which APPLY_BIRTH already ignored.
APPLY_BOOT_RESET: Final = f"""
UPDATE device_state SET {_BIRTH_FIELDS},
    boot_counter_lost_at = {_ms("%(ts_ms)s")},
    presence = 'online', presence_boot = %(boot)s, presence_conn = %(conn)s, presence_rank = 0,
    presence_at = {_ms("%(ts_ms)s")}
WHERE device_id = %(device_id)s
  AND boot > %(boot)s AND birth_at < {_ms("%(ts_ms)s")}
RETURNING highest_boot
"""

# Presence from a status or a Will. Connections are ordered by (boot, conn); within one, its end
# (offline, lost: rank 1) wins over its start, so a Will of an earlier connection arriving late
# changes nothing. A gateway's status also says which machines it serves now.
APPLY_STATUS: Final = f"""
UPDATE device_state SET
    presence = %(state)s, presence_boot = %(boot)s, presence_conn = %(conn)s,
    presence_rank = %(rank)s, presence_at = {_ms("%(ts_ms)s")},
    serves = CASE WHEN cardinality(%(serves)s::text[]) > 0 THEN %(serves)s::text[] ELSE serves END
WHERE device_id = %(device_id)s
  AND ((presence_boot, presence_conn, presence_rank) IS NULL
       OR (presence_boot, presence_conn, presence_rank) < (%(boot)s, %(conn)s, %(rank)s))
RETURNING serves
"""

# A gateway's Will applied: every machine it served is lost too, until it publishes a newer
# birth or status (which then wins by its (boot, conn)).
SERVED_LOST: Final = f"""
UPDATE device_state SET presence = 'lost', presence_at = {_ms("%s")}
WHERE device_id IN (
    SELECT device_id FROM device_state WHERE device_id = ANY(%s)
    ORDER BY device_id FOR UPDATE
)
"""

# Machines, and the gateways the ledger puts them behind (a gateway's own birth and status are
# accepted; its id is no machine's).
KNOWN_DEVICES: Final = """
SELECT device_id FROM devices
UNION
SELECT gateway_id FROM devices WHERE gateway_id IS NOT NULL
"""

# -- the gap scan ---------------------------------------------------------------------------------

# One scan at a time across all workers (transaction-level advisory lock).
GAP_SCAN_LOCK: Final = "SELECT pg_try_advisory_xact_lock(%s)"
GAP_SCAN_LOCK_KEY: Final = 0x0A0AF1E6A9

# The slice of receive time to scan now: from where the last scan stopped (or one reorder window
# back at the first scan) to now minus the reorder window, at most max_s long.
GAP_SCAN_SLICE: Final = """
SELECT COALESCE((SELECT scanned_to FROM gap_scan_state WHERE id = 1),
                now() - make_interval(secs => 2 * %(window)s)) AS lo,
       now() - make_interval(secs => %(window)s) AS hi
"""

GAP_SCAN_SAVE: Final = """
INSERT INTO gap_scan_state (id, scanned_to) VALUES (1, %s)
ON CONFLICT (id) DO UPDATE SET scanned_to = EXCLUDED.scanned_to
"""

# Holes just below the messages of the slice: seq - 1 is missing, and a lower seq of the same
# boot is stored (the start of a boot, or of what ingest ever saw, is not a hole).
FIND_GAPS: Final = """
INSERT INTO sequence_gaps (device_id, boot, from_seq, to_seq, detected_at)
SELECT k.device_id, k.boot, p.prev + 1, k.seq - 1, now()
FROM message_keys k
CROSS JOIN LATERAL (
    SELECT max(q.seq) AS prev FROM message_keys q
    WHERE q.device_id = k.device_id AND q.boot = k.boot AND q.seq < k.seq
) p
WHERE k.received_at >= %s AND k.received_at < %s
  AND NOT EXISTS (
      SELECT 1 FROM message_keys q
      WHERE q.device_id = k.device_id AND q.boot = k.boot AND q.seq = k.seq - 1
  )
  AND p.prev IS NOT NULL
ON CONFLICT DO NOTHING
"""

# Suspected holes, each taken by one worker only, with how much of them is stored by now.
DUE_GAPS: Final = """
SELECT g.device_id, g.boot, g.from_seq, g.to_seq,
       (SELECT count(*) FROM message_keys k
        WHERE k.device_id = g.device_id AND k.boot = g.boot
          AND k.seq BETWEEN g.from_seq AND g.to_seq) AS present
FROM sequence_gaps g
WHERE g.state = 'suspected'
ORDER BY g.detected_at
LIMIT 500
FOR UPDATE SKIP LOCKED
"""

DELETE_GAP: Final = "DELETE FROM sequence_gaps WHERE device_id = %s AND boot = %s AND from_seq = %s"

REQUEST_GAP: Final = """
UPDATE sequence_gaps SET state = 'requested', resend_cmd_id = %s, requested_at = now()
WHERE device_id = %s AND boot = %s AND from_seq = %s
"""

ENQUEUE_COMMAND: Final = f"""
INSERT INTO command_outbox (cmd_id, device_id, topic, payload, expires_at)
VALUES (%s, %s, %s, %s, {_ms("%s")})
ON CONFLICT DO NOTHING
"""


def _gap_subject(boot: str, from_seq: str, to_seq: str) -> str:
    """How a telemetry_gap fault names its range, in the statements that raise and clear it."""
    return f"'boot ' || {boot} || ' seq ' || {from_seq} || '..' || {to_seq}"


# Requested holes the replay has filled since, and permanent ones a late replay filled after all
# (a device's store may hold more than it first sent); their telemetry_gap faults clear with them.
CLOSE_FILLED_GAPS: Final = f"""
WITH filled AS (
    UPDATE sequence_gaps g SET state = 'filled', filled_at = now()
    WHERE (g.state = 'requested'
           OR (g.state = 'permanent' AND g.settled_at > now() - interval '1 day'))
      AND (SELECT count(*) FROM message_keys k
           WHERE k.device_id = g.device_id AND k.boot = g.boot
             AND k.seq BETWEEN g.from_seq AND g.to_seq) = g.to_seq - g.from_seq + 1
    RETURNING g.device_id, {_gap_subject("g.boot", "g.from_seq", "g.to_seq")} AS subject
)
UPDATE cloud_faults f SET cleared_at = now()
FROM filled
WHERE f.device_id = filled.device_id AND f.code = 'telemetry_gap'
  AND f.subject = filled.subject AND f.cleared_at IS NULL
"""

# SPEC 6.4: a birth (new boot or new connection) means the device may not have seen the commands
# sent before it (a rebooted device starts a clean session): every unexpired one without a final
# ack goes out again. A device answers a command id it already executed with the same status.
REPUBLISH_PENDING: Final = f"""
UPDATE command_outbox o SET sent_at = NULL
WHERE o.device_id = %(device_id)s
  AND o.sent_at < {_ms("%(received_ms)s")}
  AND o.expires_at > now()
  AND o.outcome IS NULL
"""

# Requested holes whose resend is over: the device sent its final ack (or the command expired
# unanswered) at least a reorder window ago, so whatever it replayed is stored by now.
SETTLED_GAPS: Final = """
SELECT g.device_id, g.boot, g.from_seq, g.to_seq, g.resend_cmd_id,
       (SELECT count(*) FROM message_keys k
        WHERE k.device_id = g.device_id AND k.boot = g.boot
          AND k.seq BETWEEN g.from_seq AND g.to_seq) AS present,
       a.status AS final_status
FROM sequence_gaps g
LEFT JOIN command_outbox o ON o.cmd_id = g.resend_cmd_id
LEFT JOIN LATERAL (
    SELECT status, received_at FROM command_acks
    WHERE cmd_id = g.resend_cmd_id AND device_id = g.device_id AND status <> 'in_progress'
    ORDER BY received_at LIMIT 1
) a ON true
WHERE g.state = 'requested'
  AND (a.received_at < now() - make_interval(secs => %(window)s)
       OR o.expires_at < now() - make_interval(secs => %(window)s))
ORDER BY g.requested_at
LIMIT 500
FOR UPDATE OF g SKIP LOCKED
"""

MAKE_GAP_PERMANENT: Final = """
UPDATE sequence_gaps SET state = 'permanent', missing = %s, settled_at = now()
WHERE device_id = %s AND boot = %s AND from_seq = %s
"""

MARK_GAP_FILLED: Final = """
UPDATE sequence_gaps SET state = 'filled', filled_at = now()
WHERE device_id = %s AND boot = %s AND from_seq = %s
"""

RAISE_GAP_FAULT: Final = f"""
INSERT INTO cloud_faults (device_id, code, severity, subject, source, detail)
SELECT %(device_id)s, %(code)s, %(severity)s,
       {_gap_subject("%(boot)s::bigint", "%(from_seq)s::bigint", "%(to_seq)s::bigint")},
       'ingest', %(detail)s::jsonb
ON CONFLICT (device_id, code, subject) WHERE cleared_at IS NULL DO NOTHING
"""

# -- the command relay ----------------------------------------------------------------------------

# With the seconds each has left: the MQTT message expiry it is published with.
PENDING_COMMANDS: Final = """
SELECT cmd_id, topic, payload, ceil(extract(epoch FROM expires_at - now()))::bigint
FROM command_outbox
WHERE sent_at IS NULL AND expires_at > now()
ORDER BY created_at
LIMIT %s
FOR UPDATE SKIP LOCKED
"""

MARK_SENT: Final = "UPDATE command_outbox SET sent_at = now() WHERE cmd_id = ANY(%s)"

-- What ingest needs besides the readings themselves: the message key that makes every write
-- idempotent, the quarantine, the current state of each device, sequence gaps and the commands
-- ingest asks devices to run (resends).

-- One row per stored message of the kinds that carry a sequence number (birth, telemetry, event,
-- ack). This is the (device, boot, seq) key that telemetry and device_events cannot hold as
-- hypertables (TimescaleDB wants the time column in every unique index): a message whose key is
-- already here is not stored again. The kind and device time are kept to tell a redelivery
-- (same kind, same time: dropped and counted) from a device reusing a sequence number for another
-- message (quarantined as duplicate).
CREATE TABLE message_keys (
    device_id   text NOT NULL,
    boot        bigint NOT NULL,
    seq         bigint NOT NULL,
    kind        text NOT NULL,
    time        timestamptz NOT NULL,          -- device time of the message
    received_at timestamptz NOT NULL,
    PRIMARY KEY (device_id, boot, seq)
);
-- retention deletes by age
CREATE INDEX message_keys_time_idx ON message_keys (time);

-- Messages refused by ingest, with the reason (firmware_protocol.RejectReason values). The raw
-- payload is kept up to a bound so a hostile sender cannot fill the disk through it.
CREATE TABLE quarantine (
    id            bigserial PRIMARY KEY,
    received_at   timestamptz NOT NULL,
    topic         text NOT NULL,
    device_id     text,                        -- from the topic, when it had one
    reason        text NOT NULL,
    detail        text NOT NULL,
    payload       bytea NOT NULL,              -- the first bytes of the payload
    payload_bytes integer NOT NULL             -- the size of the whole payload
);
CREATE INDEX quarantine_received_idx ON quarantine (received_at);
CREATE INDEX quarantine_reason_idx ON quarantine (reason, received_at);

-- The current state of each device, kept by ingest. Presence follows the retained status topic
-- and the Will; (presence_boot, presence_conn) orders connections so that a Will left by an
-- earlier connection cannot mark a device lost that has since come back.
CREATE TABLE device_state (
    device_id       text PRIMARY KEY,
    last_seen_at    timestamptz,               -- receive time of the newest message
    last_ts         timestamptz,               -- device time of the newest message
    presence        text NOT NULL DEFAULT 'unknown'
                    CHECK (presence IN ('unknown', 'online', 'offline', 'lost')),
    presence_boot   bigint,
    presence_conn   bigint,
    presence_rank   smallint,                  -- online 0, offline/lost 1: the end of a connection wins
    presence_at     timestamptz,               -- device time of the status that set it
    boot            bigint,                    -- from the newest birth
    conn            bigint,
    birth_at        timestamptz,
    firmware        text,
    hardware        text,
    model           text,
    machine_class   text,
    serial          text,
    config_version  bigint,
    config          jsonb,
    stages          jsonb,
    faults          text[],
    serves          text[],                    -- gateways: the machines of the latest status
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Every presence change a device announced (status messages and Wills), for flapping and
-- power-loss analysis. A retained status is delivered again at every subscription; the key makes
-- that harmless.
CREATE TABLE device_presence (
    time        timestamptz NOT NULL,
    device_id   text NOT NULL,
    boot        bigint NOT NULL,
    conn        bigint NOT NULL,
    state       text NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (device_id, boot, conn, state)
);
CREATE INDEX device_presence_time_idx ON device_presence (time);

-- Acknowledgements of commands, as devices sent them.
CREATE TABLE command_acks (
    time        timestamptz NOT NULL,
    device_id   text NOT NULL,
    boot        bigint NOT NULL,
    seq         bigint NOT NULL,
    received_at timestamptz NOT NULL,
    historical  boolean NOT NULL DEFAULT false,
    cmd_id      text NOT NULL,
    status      text NOT NULL,
    error       text,
    detail      text,
    PRIMARY KEY (device_id, boot, seq)
);
CREATE INDEX command_acks_cmd_idx ON command_acks (cmd_id);

-- Holes in a device's sequence within one boot. Messages split over several ingest workers are
-- stored out of order, so holes are looked for only among messages older than a reorder window,
-- by a background scan (never on the write path). A hole found is 'suspected'; still missing when
-- judged, a resend is asked for ('requested'); filled by the replay, it is 'filled'.
CREATE TABLE sequence_gaps (
    device_id     text NOT NULL,
    boot          bigint NOT NULL,
    from_seq      bigint NOT NULL,
    to_seq        bigint NOT NULL,
    detected_at   timestamptz NOT NULL,
    state         text NOT NULL DEFAULT 'suspected'
                  CHECK (state IN ('suspected', 'requested', 'filled')),
    resend_cmd_id text,
    requested_at  timestamptz,
    filled_at     timestamptz,
    PRIMARY KEY (device_id, boot, from_seq),
    CHECK (from_seq <= to_seq)
);
CREATE INDEX sequence_gaps_open_idx ON sequence_gaps (state, detected_at)
    WHERE state <> 'filled';

-- How far (in device time) the gap scan has looked; one row, shared by all ingest workers.
CREATE TABLE gap_scan_state (
    id          integer PRIMARY KEY CHECK (id = 1),
    scanned_to  timestamptz NOT NULL
);

-- Commands waiting to be published to devices (transactional outbox): written in the same
-- transaction as what caused them, published by the command relay with the account allowed to
-- write command topics, then marked sent.
CREATE TABLE command_outbox (
    cmd_id      text PRIMARY KEY,
    device_id   text NOT NULL,
    topic       text NOT NULL,
    payload     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    sent_at     timestamptz
);
CREATE INDEX command_outbox_pending_idx ON command_outbox (created_at) WHERE sent_at IS NULL;

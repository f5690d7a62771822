-- SPEC 7.1: a range still missing after the device's final ack to its resend (or after the resend
-- expired unanswered) is a permanent gap, and raises the cloud fault telemetry_gap.
ALTER TABLE sequence_gaps DROP CONSTRAINT sequence_gaps_state_check;
ALTER TABLE sequence_gaps ADD CONSTRAINT sequence_gaps_state_check
    CHECK (state IN ('suspected', 'requested', 'filled', 'permanent'));
ALTER TABLE sequence_gaps
    ADD COLUMN missing    bigint,          -- numbers of the range still missing when it settled
    ADD COLUMN settled_at timestamptz;     -- when it was found permanent
-- Only gaps still being worked on are looked at again; settled ones would grow the index forever.
DROP INDEX sequence_gaps_open_idx;
CREATE INDEX sequence_gaps_open_idx ON sequence_gaps (state, detected_at)
    WHERE state IN ('suspected', 'requested');
CREATE INDEX sequence_gaps_settled_idx ON sequence_gaps (settled_at) WHERE state = 'permanent';

-- Faults the cloud detects (SPEC 9, "raised by" cloud or both), as opposed to the fault events a
-- device sends (device_events). At most one open fault per device, code and subject; the subject
-- says what within the device it is about (a sequence range, a cartridge slot), '' for the whole
-- machine.
CREATE TABLE cloud_faults (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   text NOT NULL,
    code        text NOT NULL,
    severity    text NOT NULL CHECK (severity IN ('info', 'warning', 'major', 'critical')),
    subject     text NOT NULL DEFAULT '',
    raised_at   timestamptz NOT NULL DEFAULT now(),
    cleared_at  timestamptz,
    source      text NOT NULL,                -- the component that raised it: ingest, rules
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX cloud_faults_open_key ON cloud_faults (device_id, code, subject)
    WHERE cleared_at IS NULL;
CREATE INDEX cloud_faults_device_idx ON cloud_faults (device_id, raised_at DESC);

-- SPEC 7.1: a birth whose boot is below the highest the device has used, with a device time after
-- the newest birth, means the boot counter was lost (flash erased or replaced). The birth is
-- accepted as the device's current state and the device is flagged for service.
ALTER TABLE device_state
    ADD COLUMN highest_boot         bigint,       -- the highest boot ever seen in a birth
    ADD COLUMN boot_counter_lost_at timestamptz;  -- device time of the birth that went backwards
COMMENT ON COLUMN device_state.boot_counter_lost_at IS
    'set when a birth came with a boot below highest_boot: the device needs service';
UPDATE device_state SET highest_boot = boot;

-- SPEC 6.4: a birth sends the device's unanswered commands again; found by device.
CREATE INDEX command_outbox_device_idx ON command_outbox (device_id);
-- SPEC 6.4: how each command ended: the status of the device's final ack, or 'expired' when it
-- expired unanswered; NULL while it may still be answered.
ALTER TABLE command_outbox
    ADD COLUMN outcome    text CHECK (outcome IN ('succeeded', 'failed', 'rejected', 'expired')),
    ADD COLUMN outcome_at timestamptz;
CREATE INDEX command_outbox_open_idx ON command_outbox (expires_at) WHERE outcome IS NULL;

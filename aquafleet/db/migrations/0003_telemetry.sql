-- Raw telemetry and device events, as devices sent them (firmware-protocol/ v1).
--
-- One row per message; metrics are columns, not a JSON blob, so the rule engine reads them
-- as arrays and COPY stays cheap. (device_id, boot, seq) identifies a message; the time column is
-- part of the unique key because TimescaleDB requires the partitioning column in every unique
-- index. A device resending a message resends its original timestamp, so redelivery and
-- store-and-forward replays still collide on the key and are dropped.
--
-- Chunk interval, 1 day: a fleet of 10 000 machines reporting once a minute writes about
-- 14 million rows a day, a few GB with the index, which keeps the current chunk and its index
-- in memory on a modest server (TimescaleDB's advice: recent chunks within ~25 % of RAM). Rules
-- read the last hours to days, so most queries touch one or two chunks, and retention drops
-- whole days. A far larger fleet would want a shorter interval (set_chunk_time_interval).

CREATE TABLE telemetry (
    time            timestamptz NOT NULL,          -- device time of the reading
    device_id       text NOT NULL,
    boot            bigint NOT NULL,
    seq             bigint NOT NULL,
    received_at     timestamptz NOT NULL,          -- when ingest took it from the broker
    historical      boolean NOT NULL DEFAULT false, -- sent late from the device's store-and-forward
    -- The metric columns below follow firmware_protocol.METRIC_NAMES, in that order and with
    -- those types, so a decoded reading is a row as it is.
    tds_in          double precision,              -- ppm
    tds_out         double precision,              -- ppm
    feed_temp       double precision,              -- degC
    inlet_pressure  double precision,              -- kPa
    prefilter_dp    double precision,              -- kPa
    permeate_flow   double precision,              -- L/min
    dispense_flow   double precision,              -- L/min
    volume_total    double precision,              -- L, monotonic per device
    tank_level      double precision,              -- %
    pump_current    double precision,              -- A
    hot_temp        double precision,              -- degC
    cold_temp       double precision,              -- degC
    uv_intensity    double precision,              -- %
    uv_hours        double precision,              -- h
    leak            boolean,
    door_open       boolean,
    mains_ok        boolean,
    heater_on       boolean,
    compressor_on   boolean,
    pump_on         boolean,
    uv_on           boolean,
    payment_ok      boolean,                       -- vending: payment module healthy
    payment_error   integer,                       -- vending: payment module error code, 0..65535
    sales_count     bigint,                        -- vending: sales since boot
    sales_amount    bigint,                        -- vending: minor currency units since boot
    rssi            integer,                       -- dBm
    uptime          bigint,                        -- s
    stages          jsonb,                         -- per cartridge slot: litres used, days in service
    CONSTRAINT telemetry_message_key UNIQUE (device_id, time, boot, seq)
);

CREATE TABLE device_events (
    time        timestamptz NOT NULL,
    device_id   text NOT NULL,
    boot        bigint NOT NULL,
    seq         bigint NOT NULL,
    received_at timestamptz NOT NULL,
    historical  boolean NOT NULL DEFAULT false,
    kind        text NOT NULL,                     -- firmware_protocol.EventKind
    code        text,                              -- fault code of fault_raised / fault_cleared
    value       double precision,                  -- the reading that raised or cleared the fault
    detail      text,                              -- the device's free text, if any
    body        jsonb NOT NULL DEFAULT '{}'::jsonb, -- the other fields of the event's kind
    CONSTRAINT device_events_message_key UNIQUE (device_id, time, boot, seq)
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        -- The unique keys above lead with device_id, which also serves per-device time ranges;
        -- TimescaleDB's default time index is kept for fleet-wide "last N minutes" scans.
        PERFORM create_hypertable('telemetry', 'time', chunk_time_interval => INTERVAL '1 day');
        PERFORM create_hypertable('device_events', 'time', chunk_time_interval => INTERVAL '7 days');
    ELSE
        CREATE INDEX telemetry_time_idx ON telemetry (time DESC);
        CREATE INDEX device_events_time_idx ON device_events (time DESC);
    END IF;
END
$$;

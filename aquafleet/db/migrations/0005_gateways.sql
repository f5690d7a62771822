-- Machines that reach the broker through a gateway (one connection multiplexing the machines on
-- a local bus, firmware-protocol/ section 12). Production records which gateway serves which
-- machine; the broker ACL lets a gateway publish for exactly those machines, and ingest accepts a
-- gateway's own status (and applies its Will to its machines) only for a gateway known here.
ALTER TABLE devices ADD COLUMN gateway_id text;

CREATE INDEX devices_gateway_idx ON devices (gateway_id) WHERE gateway_id IS NOT NULL;

-- The gap scan walks messages in the order ingest received them, not by device time: traffic
-- stamped in the past (store-and-forward, a replayed recording, a device whose clock is behind)
-- arrives after the scan has moved past its device time and would never be looked at. Receive
-- time is also what the reorder window is about: how long after a message its predecessors,
-- taken by other workers, are committed too.
CREATE INDEX message_keys_received_idx ON message_keys (received_at);

COMMENT ON COLUMN gap_scan_state.scanned_to IS
    'receive time up to which message_keys have been scanned for sequence gaps';

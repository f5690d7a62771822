"""Retiring an ingest worker's broker session, so scaling down loses nothing.

Each worker has a persistent session (kept for days) and is a member of the shared subscription.
A broker goes on giving a member that is offline its share of the messages, queued in its
session (Mosquitto does), so after ``--workers 3`` became ``--workers 2`` a third of the fleet's
messages would wait for ``...-2`` and be lost when its session expires. Retiring resumes that
session, stores what was queued for it like any worker, and then ends the session, which also
ends its membership of the group.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from aquafleet.db import Database
from ingest.config import IngestConfig, Protocol
from ingest.errors import IngestError
from ingest.metrics import IngestCounters
from ingest.worker import IngestWorker

log = logging.getLogger(__name__)


def retire_session(
    config: IngestConfig,
    database: Database,
    *,
    idle_s: float = 2.0,
    timeout_s: float = 600.0,
) -> IngestCounters:
    """Drain the session of ``config.client_id`` into the database, then end it.

    Returns once nothing has arrived for ``idle_s`` and all received is committed; raises
    `IngestError` (leaving the session in place, nothing lost) when that takes over ``timeout_s``.
    """
    if config.protocol is Protocol.V311:
        raise IngestError("retiring a session needs MQTT 5 (3.1.1 cannot end a session)")
    worker = IngestWorker(replace(config, protocol=Protocol.V5), database)
    worker.start()
    ended = False
    try:
        deadline = time.monotonic() + timeout_s
        last = -1
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            c = worker.counters()
            settled = c.inflight == 0 and c.stored + c.duplicates + c.quarantined >= c.received
            if c.received != last:
                last, quiet_since = c.received, time.monotonic()
            elif settled and time.monotonic() - quiet_since >= idle_s:
                worker.stop(end_session=True)
                ended = True
                break
            time.sleep(0.1)
        else:
            raise IngestError(
                f"session {config.client_id} still delivering after {timeout_s:.0f} s; "
                "it is kept, run the retirement again"
            )
    finally:
        if not ended:
            worker.stop()
    counters = worker.counters()
    log.info(
        "retired session %s: %d received, %d stored",
        config.client_id,
        counters.received,
        counters.stored,
        extra={"event": "session_retired", "client_id": config.client_id},
    )
    return counters

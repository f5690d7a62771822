"""Lossless MQTT ingest into TimescaleDB.

Every message a device had acknowledged by the broker is stored exactly once, or quarantined
with its reason. Run it with ``aquafleet ingest``; embed it with `IngestWorker`::

    worker = IngestWorker(IngestConfig(host="127.0.0.1", port=1883), Database(url=...))
    worker.start()          # returns once the broker accepted the session
                            # (writer_process=True: decode and write in a child process, as
                            # `aquafleet ingest` does; the default, a thread, starts faster)
    worker.counters()       # received, stored, duplicates, quarantined, ...
    worker.stop()           # stores and acknowledges what it holds, then disconnects
"""

from ingest.config import IngestConfig, Protocol
from ingest.errors import BrokerRefused, BrokerUnavailable, CredentialsError, IngestError
from ingest.metrics import IngestCounters, IngestMetrics
from ingest.runner import RunOptions, run_ingest
from ingest.worker import IngestWorker

__all__ = [
    "BrokerRefused",
    "BrokerUnavailable",
    "CredentialsError",
    "IngestConfig",
    "IngestCounters",
    "IngestError",
    "IngestMetrics",
    "IngestWorker",
    "Protocol",
    "RunOptions",
    "run_ingest",
]

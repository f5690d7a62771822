"""The command relay: publishes what waits in the command outbox, then marks it sent.

Ingest writes resend requests into the outbox in the transaction that found the gap; the relay
delivers them at QoS 1 with a message expiry (the time the command has left), so a device that
comes back late does not act on a stale request. A birth puts the device's unanswered commands
back in the outbox (SPEC 6.4), and the relay sends them again. A command is marked sent only
after the broker acknowledged it; a crash in between sends it again, which a device treats as
the same command (same id).

Under the production ACL the ingest account may not publish: the relay runs under the command
account (``aquafleet broker relay``), or inside ingest (``--relay-commands``) where the broker
allows it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from aquafleet.db import Database
from aquafleet.errors import DatabaseUnavailable
from ingest import _sql
from ingest.config import IngestConfig

log = logging.getLogger("ingest.relay")

_BATCH = 100
_PUBACK_TIMEOUT_S = 10.0


class CommandRelay:
    def __init__(self, config: IngestConfig, database: Database, *, every_s: float = 1.0) -> None:
        self._config = config
        self._database = database
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{config.client_id[:58]}-relay",
            protocol=mqtt.MQTTv5,
        )
        if config.username is not None:
            self._client.username_pw_set(config.username, config.password)
        if config.tls:
            self._client.tls_set()
        self._refused: dict[int, str] = {}
        self._client.on_publish = self._on_publish

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self._refused[mid] = reason.getName()

    def start(self) -> None:
        self._client.connect(self._config.host, self._config.port)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="ingest-relay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._client.loop_stop()
        self._client.disconnect()

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self.relay_once()
            except (psycopg.Error, DatabaseUnavailable, OSError, RuntimeError) as exc:
                log.warning("command relay: %s", exc, extra={"event": "relay_failed"})

    def relay_once(self) -> int:
        """Publish one batch of pending commands; returns how many were sent."""
        if not self._client.is_connected():
            return 0
        with self._database.connection() as conn, conn.transaction():
            rows = conn.execute(_sql.PENDING_COMMANDS, (_BATCH,)).fetchall()
            sent: list[str] = []
            for cmd_id, topic, payload, seconds_left in rows:
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.MessageExpiryInterval = max(1, int(str(seconds_left)))
                assert isinstance(payload, bytes)
                info = self._client.publish(str(topic), payload, qos=1, properties=props)
                info.wait_for_publish(_PUBACK_TIMEOUT_S)
                refused = self._refused.pop(info.mid, None)
                if refused is not None:
                    log.error(
                        "the broker refused command %s on %s: %s",
                        cmd_id,
                        topic,
                        refused,
                        extra={"event": "relay_refused"},
                    )
                    break
                if not info.is_published():
                    break
                sent.append(str(cmd_id))
            if sent:
                conn.execute(_sql.MARK_SENT, (sent,))
        if sent:
            self.sent += len(sent)
            log.info("relayed %d command(s)", len(sent), extra={"event": "relayed"})
        return len(sent)

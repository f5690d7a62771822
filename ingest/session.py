"""The broker side of a worker: one paho-mqtt client, its network loop, and acknowledgements.

The session runs paho's network loop in a thread of its own and hands every message to a sink
(the batcher) together with its packet id and the connection it came on. Nothing is acknowledged
here on receipt (``manual_ack``): the writer calls `acknowledge` after the commit, and the loop
thread sends the PUBACKs, in arrival order, between two network reads, all of one turn in one
``send`` (see `IngestClient`). Sending them from the loop thread keeps paho single-threaded.
A message delivered at QoS 0 (a device may publish so) is stored like any other and never
acknowledged.

Each (re)connection gets a new generation number. Acknowledgements of an earlier generation are
dropped: after a reconnect the broker redelivers what was not acknowledged, and a packet id of
the old connection may already name another message on the new one.

Backpressure: the broker sends at most ``max_inflight`` unacknowledged messages (MQTT 5 Receive
Maximum; on 3.1.1 its own in-flight limit), and the loop stops reading from the socket while
``2 * max_inflight`` messages wait in this process (room for one earlier connection's messages
still being written), so memory stays bounded while the database is slow or down.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from ingest.client import IngestClient
from ingest.config import IngestConfig, Protocol
from ingest.errors import BrokerRefused, BrokerUnavailable
from ingest.metrics import IngestMetrics

log = logging.getLogger("ingest.session")

_LOOP_TIMEOUT_S = 0.01
_CONNECT_TIMEOUT_S = 10.0
# Some 3.1.1-only brokers never answer an MQTT 5 CONNECT; protocol detection gives up this soon.
_DETECT_TIMEOUT_S = 3.0
_TIMED_OUT = "timed out waiting for the broker"
# MQTT 5 CONNACK reason codes that no retry will change, and their 3.1.1 counterparts.
_FATAL_CONNACK = {
    "Unsupported protocol version",
    "Client identifier not valid",
    "Bad user name or password",
    "Not authorized",
    "Banned",
    "Bad authentication method",
}
_V311_FATAL_RC = {2: "Client identifier not valid", 4: "Bad user name or password",
                  5: "Not authorized"}  # fmt: skip


# One message as it came off the broker, before any decoding:
# (generation, mid, topic, payload, received_ms). A plain tuple: one is built per message on
# the MQTT client's thread, the throughput ceiling, and a tuple is the cheapest record there is.
# mid is 0 for a message delivered at QoS 0, which is never acknowledged.
Inbound = tuple[int, int, str, bytes, int]


Sink = Callable[[Inbound], None]


class MqttSession:
    """A persistent-session subscriber that acknowledges only when told to."""

    def __init__(self, config: IngestConfig, sink: Sink, metrics: IngestMetrics) -> None:
        self._config = config
        self._sink = sink
        self._metrics = metrics
        self._protocol: int = mqtt.MQTTv5 if config.protocol != Protocol.V311 else mqtt.MQTTv311
        self._client = self._make_client()
        self._generation = 0
        self._connected = False
        self._ever_connected = False
        self._connack: tuple[bool, str | None] | None = None  # (accepted, reason when refused)
        self._suback_failures: list[str] = []
        self._acks: deque[list[tuple[int, int]]] = deque()
        self._inflight = 0  # received on the current connection, not yet acknowledged
        # handed to the sink, not yet acknowledged or given up (any connection); changed only by
        # the loop thread
        self._waiting = 0
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()
        self.failure: BaseException | None = None

    # -- public face, any thread ------------------------------------------------------------

    @property
    def protocol_name(self) -> str:
        return "5" if self._protocol == mqtt.MQTTv5 else "3.1.1"

    @property
    def generation(self) -> int:
        return self._generation

    def start(self) -> None:
        """Connect (raising if the broker refuses us for good), then run the loop in a thread."""
        self._connect_first()
        self._thread = threading.Thread(target=self._run, name="ingest-mqtt", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0, *, end_session: bool = False) -> None:
        """Disconnect; with ``end_session`` the broker also drops the session (MQTT 5 only)
        and with it this client's membership of the shared subscription."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        properties = None
        if end_session and self._protocol == mqtt.MQTTv5:
            properties = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 0
        with contextlib.suppress(OSError, ValueError):
            self._client.disconnect(properties=properties)

    def acknowledge(self, messages: list[tuple[int, int]]) -> None:
        """Acknowledge (generation, mid) pairs once they are durable; sent by the loop thread."""
        if messages:
            self._acks.append(messages)

    def pause(self) -> None:
        """Stop reading messages; acknowledgements still go out."""
        self._paused.set()

    def flush_acks(self, timeout: float) -> None:
        """Wait until the loop thread has sent the acknowledgements handed to it."""
        deadline = time.monotonic() + timeout
        while self._acks and time.monotonic() < deadline and self._thread_alive():
            time.sleep(0.01)

    def _thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def release(self, count: int) -> None:
        """``count`` messages left the pipeline without an acknowledgement (stale connection)."""
        # Counted down by the loop thread like acknowledgements; generation -1 matches none.
        if count:
            self._acks.append([(-1, 0)] * count)

    def is_connected(self) -> bool:
        return self._connected

    # -- client set-up -----------------------------------------------------------------------

    def _make_client(self) -> IngestClient:
        cfg = self._config
        if self._protocol == mqtt.MQTTv5:
            client = IngestClient(
                CallbackAPIVersion.VERSION2,
                client_id=cfg.client_id,
                protocol=mqtt.MQTTv5,
                manual_ack=True,
            )
        else:
            client = IngestClient(
                CallbackAPIVersion.VERSION2,
                client_id=cfg.client_id,
                protocol=mqtt.MQTTv311,
                clean_session=False,
                manual_ack=True,
            )
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls:
            client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish_fast = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    def _connect_properties(self) -> Properties | None:
        if self._protocol != mqtt.MQTTv5:
            return None
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._config.session_expiry_s
        props.ReceiveMaximum = self._config.max_inflight
        return props

    def _connect_first(self) -> None:
        """The first connection: protocol detection and refusals that should stop start-up."""
        cfg = self._config
        delay = cfg.reconnect_min_s
        attempts = 0
        while not self._stop.is_set():
            attempts += 1
            detecting = cfg.protocol == Protocol.AUTO and self._protocol == mqtt.MQTTv5
            try:
                accepted, reason = self._handshake(
                    _DETECT_TIMEOUT_S if detecting else _CONNECT_TIMEOUT_S
                )
            except OSError as exc:
                if attempts >= 3:
                    log.warning(
                        "broker %s:%s not reachable (%s); retrying",
                        cfg.host,
                        cfg.port,
                        exc,
                        extra={"event": "broker_unreachable"},
                    )
                if attempts >= 50:
                    raise BrokerUnavailable(
                        f"cannot reach the broker at {cfg.host}:{cfg.port}: {exc}"
                    ) from exc
                self._stop.wait(delay)
                delay = min(delay * 2, cfg.reconnect_max_s)
                continue
            if accepted:
                return
            if detecting and reason in (None, "Unsupported protocol version", _TIMED_OUT):
                # A 3.1.1-only broker refuses, drops or ignores an MQTT 5 CONNECT.
                log.info("broker does not speak MQTT 5; using 3.1.1", extra={"event": "mqtt311"})
                with contextlib.suppress(OSError, ValueError):
                    self._client.disconnect()
                self._protocol = mqtt.MQTTv311
                self._client = self._make_client()
                continue
            if reason in _FATAL_CONNACK:
                raise BrokerRefused(f"the broker refused the connection: {reason}")
            self._stop.wait(delay)
            delay = min(delay * 2, cfg.reconnect_max_s)
        raise BrokerUnavailable("stopped before the broker accepted the connection")

    def _handshake(self, timeout: float = _CONNECT_TIMEOUT_S) -> tuple[bool, str | None]:
        """Connect and wait for CONNACK and SUBACK; (accepted, refusal reason)."""
        cfg = self._config
        self._connack = None
        self._suback_failures = []
        self.ready.clear()
        if self._protocol == mqtt.MQTTv5:
            self._client.connect(
                cfg.host,
                cfg.port,
                keepalive=cfg.keepalive_s,
                clean_start=False,
                properties=self._connect_properties(),
            )
        else:
            self._client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            try:
                rc = self._client.loop(0.05)
            except OSError:
                # The broker closed the socket under paho (after refusing the CONNECT, say).
                rc = MQTTErrorCode.MQTT_ERR_CONN_LOST
            if self._connack is not None and not self._connack[0]:
                return self._connack
            if self.ready.is_set():
                if self._suback_failures:
                    raise BrokerRefused(
                        "the broker refused the subscription: "
                        + ", ".join(self._suback_failures)
                        + (
                            " (a broker without shared subscriptions needs --no-shared)"
                            if cfg.shared
                            else ""
                        )
                    )
                return True, None
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return False, self._connack[1] if self._connack else None
        return False, _TIMED_OUT

    # -- paho callbacks (loop thread) -----------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            name = _reason_name(reason_code, self._protocol)
            self._connack = (False, name)
            log.error("broker refused the connection: %s", name, extra={"event": "connack"})
            return
        self._connack = (True, None)
        self._generation += 1
        self._inflight = 0
        self._connected = True
        if self._ever_connected:
            self._metrics.reconnected()
        self._ever_connected = True
        log.info(
            "connected to %s:%s as %s (MQTT %s, session %s)",
            self._config.host,
            self._config.port,
            self._config.client_id,
            self.protocol_name,
            "resumed" if flags.session_present else "new",
            extra={"event": "connected", "session_present": flags.session_present},
        )
        topics = self._config.subscriptions()
        if self._protocol == mqtt.MQTTv5:
            # retainHandling 1: retained messages only for a new subscription, not at every
            # reconnect of a resumed session.
            options = SubscribeOptions(qos=1, retainHandling=1)
            client.subscribe([(t, options) for t in topics])
        else:
            client.subscribe([(t, 1) for t in topics])

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        for topic, rc in zip(self._config.subscriptions(), reason_codes, strict=False):
            if rc.is_failure:
                self._suback_failures.append(f"{topic}: {_reason_name(rc, self._protocol)}")
        if self._suback_failures:
            log.error(
                "subscription refused: %s",
                "; ".join(self._suback_failures),
                extra={"event": "suback"},
            )
        self.ready.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected = self._connected
        self._connected = False
        self.ready.clear()
        # Everything of the old connection still unacknowledged will be redelivered.
        self._inflight = 0
        self._metrics.set_inflight(0)
        if was_connected and not self._stop.is_set():
            log.warning(
                "disconnected from the broker: %s",
                reason_code,
                extra={"event": "disconnected"},
            )

    def _on_publish(self, mid: int, topic: str, payload: bytes, received_ms: int) -> None:
        # The hot path (see IngestClient): no decoding here, only the handover.
        if mid:
            self._inflight += 1
        self._waiting += 1
        self._sink((self._generation, mid, topic, payload, received_ms))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # What IngestClient leaves to paho: a PUBLISH with properties, say.
        try:
            topic = message.topic
        except UnicodeDecodeError:
            # A broker that forwards a topic that is not UTF-8: quarantined by its topic.
            topic = bytes(message._topic).decode("utf-8", "replace")
        self._on_publish(
            message.mid if message.qos else 0,
            topic,
            # paho hands a slice of the packet, always bytes in practice
            cast(bytes, message.payload),
            int(time.time() * 1000),
        )

    # -- the loop (its own thread) ---------------------------------------------------------------

    def _run(self) -> None:
        cfg = self._config
        client = self._client
        delay = cfg.reconnect_min_s
        last_gauge = 0.0
        try:
            while not self._stop.is_set():
                if not self._connected:
                    self._drop_stale_acks()
                    if self._stop.wait(delay):
                        break
                    try:
                        accepted, reason = self._handshake()
                    except (OSError, BrokerRefused) as exc:
                        accepted, reason = False, str(exc)
                    if not accepted:
                        log.warning(
                            "reconnect failed: %s",
                            reason,
                            extra={"event": "reconnect_failed"},
                        )
                        delay = min(delay * 2, cfg.reconnect_max_s)
                        continue
                    delay = cfg.reconnect_min_s
                    continue
                if self._paused.is_set() or self._waiting >= 2 * cfg.max_inflight:
                    # Backpressure: do not read; keep the connection alive until acks come.
                    client.loop_misc()
                    self._send_acks()
                    time.sleep(_LOOP_TIMEOUT_S)
                else:
                    try:
                        rc = client.loop(_LOOP_TIMEOUT_S)
                        # What one read brought holds many messages: take them without a
                        # select each, while there is room.
                        room = 2 * cfg.max_inflight - self._waiting
                        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and room > 0:
                            rc = client.read_buffered(room)
                    except OSError:
                        rc = MQTTErrorCode.MQTT_ERR_CONN_LOST
                    self._send_acks()
                    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS and self._connected:
                        self._connected = False
                now = time.monotonic()
                if now - last_gauge > 0.5:
                    self._metrics.set_inflight(self._inflight)
                    last_gauge = now
        except BaseException as exc:  # surfaced by the worker; the thread must not die silently
            self.failure = exc
            log.exception("MQTT loop failed", extra={"event": "loop_failed"})

    def _send_acks(self) -> None:
        acks = self._acks
        client = self._client
        generation = self._generation
        connected = self._connected
        client.flush()  # what an earlier turn could not send
        if not acks:
            return
        # Every acknowledgement of this turn leaves in one write.
        mids: list[int] = []
        while acks:
            batch = acks.popleft()
            if connected:
                mids.extend([mid for gen, mid in batch if gen == generation and mid])
            self._waiting -= len(batch)
        self._inflight -= len(mids)
        client.ack_all(mids)

    def _drop_stale_acks(self) -> None:
        # While disconnected every pending acknowledgement is void.
        while self._acks:
            batch = self._acks.popleft()
            self._waiting -= len(batch)


def _reason_name(rc: ReasonCode | int, protocol: int) -> str:
    if isinstance(rc, ReasonCode):
        if protocol == mqtt.MQTTv311 and rc.value in _V311_FATAL_RC and rc.is_failure:
            return _V311_FATAL_RC[rc.value]
        return rc.getName()
    return str(rc)

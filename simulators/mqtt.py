"""Publishing the simulator's stream to a real MQTT broker (MQTT 5, QoS 1).

Two shapes of connection, as the fleet size asks:

* ``per-device``: one connection per machine, client id and username the device id, its Will the
  retained ``status`` ``lost`` of that connection, and a subscription to its own ``cmd`` topic.
  An unclean drop disconnects with reason 0x04 ("disconnect with Will message"), so the broker
  itself publishes the Will, exactly as for a machine whose network fails. Per-device ACLs
  (``pattern write aquafleet/v1/%u/#``) apply as they would in the field.
* ``multiplexed``: a few gateway connections carry many machines, whose identities stay in topics
  and payloads (firmware-protocol section 12). A machine the ledger puts behind a gateway is
  carried by that gateway (client id, username and status topic the gateway's id, ``serves`` the
  machines the ledger assigns it), so ingest and the broker ACL, which know the ledger, accept
  it. Machines the ledger puts behind none are spread round-robin over generated gateways
  ``{gateway_prefix}-00`` ...: a load-generation transport, not a modelled device, so they
  publish no status or Will of their own (the ledger does not know them, and ingest would rightly
  quarantine a status from an unknown id). A gateway subscribes to the ``cmd`` topic of each
  machine it carries and publishes a machine's Will itself when that machine drops; a ledger
  gateway's own Will is its ``status`` ``lost`` (with ``serves`` when the list fits the schema).
  Gateways speak MQTT through `simulators._mqtt_wire`, which batches publishes into few socket
  writes (paho's per-message cost would cap a gateway near 11 000 messages/s).

Ordering is kept per machine (one machine always uses one connection). `send` waits for the
broker's acknowledgements before it returns, so memory stays bounded at any speed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import paho.mqtt.client as mqtt
from firmware_protocol import MessageKind as Kind
from firmware_protocol import PresenceState, Status, encode, topic_of
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from simulators._mqtt_wire import WireConnection, WireError, topic_bytes
from simulators.errors import PublishError
from simulators.sinks import Action, Connect, Outgoing

__all__ = ["BrokerAddress", "MqttSink"]

_CONNECT_TIMEOUT_S: Final = 10.0
_ACK_TIMEOUT_S: Final = 60.0
_WAIT_EVERY: Final = 2000  # messages per connection between waits for the broker's acks
_MAX_SERVES: Final = 256  # the status schema's limit on a gateway's list


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False


class _Conn:
    """One paho client with its network thread, connected synchronously."""

    def __init__(
        self,
        broker: BrokerAddress,
        client_id: str,
        *,
        username: str | None,
        will: Outgoing | None,
        subscribe: str,
        inbox: list[tuple[str, bytes]],
        inbox_lock: threading.Lock,
    ) -> None:
        self.client_id = client_id
        self._connected = threading.Event()
        self._failure: str | None = None
        self._subscribe = subscribe
        self._inbox = inbox
        self._inbox_lock = inbox_lock
        self.last: mqtt.MQTTMessageInfo | None = None
        self.unacked = 0
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if username is not None:
            client.username_pw_set(username, broker.password)
        if broker.tls:
            client.tls_set()
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        self.client = client
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        # A persistent session: the broker keeps commands (QoS 1) while the machine is away.
        props.SessionExpiryInterval = 3600
        try:
            client.connect(
                broker.host, broker.port, keepalive=60, clean_start=False, properties=props
            )
        except OSError as exc:
            raise PublishError(
                f"{client_id}: cannot connect to {broker.host}:{broker.port}: {exc}"
            ) from exc
        client.loop_start()
        if not self._connected.wait(_CONNECT_TIMEOUT_S) or self._failure:
            client.loop_stop()
            raise PublishError(f"{client_id}: broker refused the connection: {self._failure}")

    def _on_connect(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if reason.is_failure:
            self._failure = str(reason)
        else:
            client.subscribe(self._subscribe, qos=1)
        self._connected.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._inbox_lock:
            self._inbox.append((message.topic, bytes(message.payload)))

    def publish(self, m: Outgoing) -> None:
        self.last = self.client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
        self.unacked += 1
        if self.unacked >= _WAIT_EVERY:
            self.wait()

    def wait(self) -> None:
        if self.last is not None and self.unacked:
            try:
                self.last.wait_for_publish(_ACK_TIMEOUT_S)
            except (RuntimeError, ValueError) as exc:
                raise PublishError(f"{self.client_id}: publish failed: {exc}") from exc
        self.unacked = 0

    def close(self, *, send_will: bool = False) -> None:
        self.wait()
        if send_will:
            self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
        else:
            self.client.disconnect()
        self.client.loop_stop()


@dataclass(frozen=True, slots=True)
class _Gateway:
    conn: WireConnection
    serves: tuple[str, ...]  # as its status says: empty when the list exceeds the schema's limit
    announced: bool  # a ledger gateway publishes its status; a generated one does not


class MqttSink:
    """Sends the simulator's actions to a broker; see the module docstring for the two modes.

    ``gateway_of`` maps machine id -> gateway id as the ledger records it
    (`simulators.ledger.gateway_assignment`); ``gateways`` and ``gateway_prefix`` shape the
    generated gateways for the machines it leaves out. Both matter in ``multiplexed`` mode only.
    """

    def __init__(
        self,
        broker: BrokerAddress,
        *,
        mode: str = "per-device",
        gateways: int = 4,
        gateway_prefix: str = "simgw",
        start_ms: int = 0,
        gateway_of: Mapping[str, str] | None = None,
    ) -> None:
        if mode not in ("per-device", "multiplexed"):
            raise ValueError(f"unknown connection mode {mode!r}")
        self.broker = broker
        self.mode = mode
        self._inbox: list[tuple[str, bytes]] = []
        self._inbox_lock = threading.Lock()
        self._devices: dict[str, _Conn] = {}
        self._ledger_gateway_of = dict(gateway_of or {})
        self._gateways: dict[str, _Gateway] = {}
        self._route: dict[str, WireConnection] = {}  # machine id -> the gateway carrying it
        self._generated: list[WireConnection] = []
        self._generated_assigned = 0
        self._wills: dict[str, Outgoing] = {}
        self._gateway_prefix = gateway_prefix
        self._start_ms = start_ms
        self._n_generated = max(1, gateways)
        self._started = False

    # The gateways connect at the first send, once the machines they serve are known: the
    # ledger's from the start, the generated ones with the machines connecting in that batch.
    def _ensure_gateways(self, actions: Sequence[Action]) -> None:
        if self._started:
            return
        self._started = True
        by_gateway: dict[str, list[str]] = {}
        for machine, gw_id in sorted(self._ledger_gateway_of.items()):
            by_gateway.setdefault(gw_id, []).append(machine)
        for gw_id, machines in sorted(by_gateway.items()):
            # the username is the gateway's id, as the broker ACL of section 2.2 expects
            self._connect_gateway(gw_id, machines, username=gw_id, announced=True)
        connecting = (a.device_id for a in actions if isinstance(a, Connect))
        unrouted = dict.fromkeys(m for m in connecting if m not in self._route)
        if unrouted or not self._ledger_gateway_of:
            self._connect_generated(list(unrouted))

    def _connect_generated(self, machines: list[str]) -> None:
        n = self._n_generated
        for k in range(n):
            self._generated.append(
                self._connect_gateway(
                    f"{self._gateway_prefix}-{k:02d}",
                    machines[k::n],
                    username=self.broker.username,
                    announced=False,
                )
            )
        self._generated_assigned = len(machines)

    def _connect_gateway(
        self, gw_id: str, machines: Sequence[str], *, username: str | None, announced: bool
    ) -> WireConnection:
        serves = tuple(machines) if len(machines) <= _MAX_SERVES else ()
        will = self._gateway_status(gw_id, PresenceState.LOST, serves)
        try:
            conn = WireConnection(
                self.broker.host,
                self.broker.port,
                client_id=gw_id,
                username=username,
                password=self.broker.password,
                will=(will.topic, will.payload) if announced else None,
                # its own commands, as any device, and those of each machine it serves; what
                # the broker ACL allows a gateway, and each command reaches one gateway only
                subscribe=_cmd_topics([gw_id, *machines]),
                on_message=self._receive,
                tls=self.broker.tls,
            )
            if announced:
                online = self._gateway_status(gw_id, PresenceState.ONLINE, serves)
                conn.publish(topic_bytes(online.topic), online.payload, retain=True)
        except WireError as exc:
            raise PublishError(f"gateway {gw_id}: {exc}") from exc
        self._gateways[gw_id] = _Gateway(conn, serves, announced)
        for machine in machines:
            self._route[machine] = conn
        return conn

    def _gateway_status(
        self, gw_id: str, state: PresenceState, serves: tuple[str, ...]
    ) -> Outgoing:
        status = Status(
            device_id=gw_id, boot=1, conn=1, ts=self._start_ms, state=state, serves=serves
        )
        return Outgoing(
            topic_of(gw_id, Kind.STATUS), encode(status), gw_id, self._start_ms, 1, True
        )

    def _receive(self, topic: str, payload: bytes) -> None:
        with self._inbox_lock:
            self._inbox.append((topic, payload))

    def _open(self, client_id: str, username: str | None, will: Outgoing, sub: str) -> _Conn:
        return _Conn(
            self.broker,
            client_id,
            username=username,
            will=will,
            subscribe=sub,
            inbox=self._inbox,
            inbox_lock=self._inbox_lock,
        )

    def _gateway(self, device_id: str) -> WireConnection:
        conn = self._route.get(device_id)
        if conn is not None:
            return conn
        # A machine first connecting after the start, and in no gateway's ledger list: the next
        # generated gateway carries it from now on (its status's serves stays as it was).
        if not self._generated:
            self._connect_generated([device_id])
            return self._route[device_id]
        conn = self._generated[self._generated_assigned % len(self._generated)]
        self._generated_assigned += 1
        conn.subscribe(_cmd_topics([device_id]))
        self._route[device_id] = conn
        return conn

    def send(self, actions: Sequence[Action]) -> None:
        if self.mode == "multiplexed":
            self._send_multiplexed(actions)
            return
        for a in actions:
            if isinstance(a, Outgoing):
                conn = self._devices.get(a.device_id)
                if conn is None:
                    raise PublishError(f"{a.device_id}: publish without a connection")
                conn.publish(a)
            elif isinstance(a, Connect):
                old = self._devices.pop(a.device_id, None)
                if old is not None:
                    old.close()
                cmd = topic_of(a.device_id, Kind.CMD)
                self._devices[a.device_id] = self._open(a.device_id, a.device_id, a.will, cmd)
            else:
                conn = self._devices.pop(a.device_id, None)
                if conn is not None:
                    conn.close(send_will=a.send_will)
        for conn in self._devices.values():
            conn.wait()

    def _send_multiplexed(self, actions: Sequence[Action]) -> None:
        self._ensure_gateways(actions)
        try:
            for a in actions:
                if isinstance(a, Outgoing):
                    self._gateway(a.device_id).publish(
                        topic_bytes(a.topic), a.payload, retain=a.retain
                    )
                elif isinstance(a, Connect):
                    self._wills[a.device_id] = a.will
                else:
                    will = self._wills.pop(a.device_id, None)
                    if a.send_will and will is not None:
                        # the gateway notices the machine is gone and says so for it
                        self._gateway(a.device_id).publish(
                            topic_bytes(will.topic), will.payload, retain=True
                        )
            for gw in self._gateways.values():
                gw.conn.wait()
        except WireError as exc:
            raise PublishError(f"gateway connection: {exc}") from exc

    def commands(self) -> list[tuple[str, bytes]]:
        with self._inbox_lock:
            out, self._inbox[:] = list(self._inbox), []
        return out

    def close(self) -> None:
        for conn in self._devices.values():
            conn.close()
        self._devices.clear()
        for gw_id, gw in self._gateways.items():
            if gw.announced:
                offline = self._gateway_status(gw_id, PresenceState.OFFLINE, gw.serves)
                with contextlib.suppress(WireError):
                    gw.conn.publish(topic_bytes(offline.topic), offline.payload, retain=True)
            gw.conn.close()
        self._gateways.clear()
        self._route.clear()
        self._generated.clear()


def _cmd_topics(device_ids: Iterable[str]) -> list[str]:
    return [topic_of(device_id, Kind.CMD) for device_id in device_ids]

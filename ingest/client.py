"""paho-mqtt's client, with the receive path of a busy subscriber made cheap.

Profiling a draining backlog shows paho spending most of each message on work a subscriber of
plain QoS 1 messages does not need: four ``recv`` system calls per packet (command byte, each
remaining-length byte, the body), an MQTT 5 ``Properties`` object built and cleared per message
(tens of string operations even when the packet carries no property), an ``MQTTMessage`` and
the topic-filter match for callbacks, and one ``send`` per acknowledgement.

`IngestClient` keeps paho for everything that makes the protocol: connecting, sessions,
keepalive, subscriptions, reconnects, and every packet it does not recognise as the common
case. It changes three things:

- the socket is read in large chunks (`BufferedSocket`); paho's per-byte reads are answered
  from memory, and ``pending()`` tells paho's loop not to wait in ``select`` while data is
  buffered (the same contract as an SSL socket's);
- a PUBLISH at QoS 0 or 1 without MQTT 5 properties (what the broker sends a subscriber that
  asked for no topic aliases) is handed to ``on_publish_fast`` as ``(mid, topic, payload,
  received_ms)`` without building paho's message objects; anything else (QoS 2, properties
  present, a topic that is not UTF-8, a malformed packet) takes paho's own path;
- `ack_all` writes the acknowledgements of many messages in one ``send``, the same bytes
  paho would write one system call each.

paho-mqtt is pinned to the 2.1 and 2.2 releases whose internals this relies on (``_create_socket``,
``_handle_publish``, ``_in_packet``); tests run every ingest behaviour through this client
against a real Mosquitto.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

# One read takes what the kernel holds, up to this much.
_READ_CHUNK = 1 << 18

# (mid, topic, payload, received_ms); mid 0 for a QoS 0 message, which needs no acknowledgement
FastPublishHandler = Callable[[int, str, bytes, int], None]

# PUBACK: type 4, remaining length 2, the packet id. With no reason code it means success, in
# MQTT 5 as in 3.1.1 (paho sends exactly these bytes).
_PUBACK = struct.Struct("!BBH")


class BufferedSocket:
    """A socket read in chunks, with writes kept in order when the kernel cannot take them.

    paho reads a packet as several small ``recv`` calls; each is answered from the last chunk
    read, and a new chunk is read only when that one is used up. ``received_ms`` is the wall
    time of the last chunk read, the moment its messages reached this process.
    """

    def __init__(self, sock: socket.socket | ssl.SSLSocket) -> None:
        self._sock = sock
        self._ssl = isinstance(sock, ssl.SSLSocket)
        self._chunk = b""
        self._pos = 0
        self._outgoing = bytearray()
        self.received_ms = 0

    # -- what paho calls -------------------------------------------------------------------

    def recv(self, size: int) -> bytes:
        pos = self._pos
        if pos >= len(self._chunk):
            chunk = self._sock.recv(_READ_CHUNK)  # raises BlockingIOError when nothing is there
            if not chunk:
                return b""
            self.received_ms = int(time.time() * 1000)
            self._chunk = chunk
            pos = 0
        end = min(pos + size, len(self._chunk))
        self._pos = end
        return self._chunk[pos:end]

    def pending(self) -> int:
        """Bytes already read and not yet handed to paho (plus an SSL socket's own)."""
        own = len(self._chunk) - self._pos
        if self._ssl:
            return own + self._sock.pending()  # type: ignore[union-attr]
        return own

    def send(self, data: bytes | bytearray | memoryview) -> int:
        if self._outgoing:
            # Keep the order: once anything waits, everything after it waits behind it.
            self.write(data)
            return len(data)
        return self._sock.send(data)

    def close(self) -> None:
        # The connection is going anyway; unsent acknowledgements are delivered again.
        with contextlib.suppress(OSError):
            self.flush()
        self._sock.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def __getattr__(self, name: str) -> Any:
        # Anything else paho or a caller asks of a socket (getpeername, settimeout...).
        return getattr(self._sock, name)

    # -- writes of our own ---------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``: what the socket does not take now waits for `flush`."""
        self._outgoing += data
        self.flush()

    def flush(self) -> None:
        """Send what waits, as far as the socket takes it now; the rest goes on the next call."""
        while self._outgoing:
            try:
                sent = self._sock.send(self._outgoing)
            except (BlockingIOError, ssl.SSLWantWriteError):
                return
            del self._outgoing[:sent]

    @property
    def unsent(self) -> int:
        return len(self._outgoing)


class IngestClient(mqtt.Client):
    """``mqtt.Client`` with a buffered socket and a direct path for plain PUBLISH packets."""

    on_publish_fast: FastPublishHandler | None = None
    buffered: BufferedSocket | None = None

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        if not isinstance(sock, socket.socket):
            self.buffered = None  # a websocket transport: paho's own path throughout
            return sock
        self.buffered = BufferedSocket(sock)
        return self.buffered

    def read_buffered(self, max_packets: int) -> MQTTErrorCode:
        """Handle up to ``max_packets`` packets already read from the socket, without waiting
        in ``select`` for each (paho's ``loop`` handles one packet a call)."""
        buffered = self.buffered
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        if buffered is None:
            return rc
        loop_read = self.loop_read
        pending = buffered.pending
        for _ in range(max_packets):
            if self._sock is None or not pending():
                break
            rc = loop_read()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        return rc

    def ack_all(self, mids: Iterable[int]) -> None:
        """Acknowledge QoS 1 messages (``manual_ack``), in this order, in one write."""
        buffered = self.buffered
        if buffered is None or self._sock is None or self._out_packet:
            # Something of paho's waits to be written (perhaps half a packet): queue behind it.
            for mid in mids:
                self.ack(mid, 1)
            return
        pack = _PUBACK.pack
        data = b"".join([pack(0x40, 2, mid) for mid in mids])
        if not data:
            return
        # paho notices a broken connection on its next read or write.
        with contextlib.suppress(OSError):
            buffered.write(data)
        with self._msgtime_mutex:
            self._last_msg_out = mqtt.time_func()

    def flush(self) -> None:
        """Send what `ack_all` could not send at once."""
        if self.buffered is not None and self._sock is not None:
            with contextlib.suppress(OSError):
                self.buffered.flush()

    def _handle_publish(self) -> MQTTErrorCode:
        handler = self.on_publish_fast
        buffered = self.buffered
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if handler is None or buffered is None or qos == 2:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        try:
            end = 2 + ((packet[0] << 8) | packet[1])
            topic = packet[2:end].decode("utf-8")
            mid = 0
            if qos:
                mid = (packet[end] << 8) | packet[end + 1]
                end += 2
            if self._protocol == mqtt.MQTTv5:
                if packet[end] != 0:
                    return super()._handle_publish()
                end += 1
        except (IndexError, UnicodeDecodeError):
            return super()._handle_publish()
        if not topic or end > len(packet) or (qos and mid == 0):
            return super()._handle_publish()
        handler(mid, topic, bytes(packet[end:]), buffered.received_ms)
        if qos and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

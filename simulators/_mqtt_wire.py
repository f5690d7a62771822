"""A minimal MQTT 5 publishing connection for the simulator's gateways.

paho-mqtt costs about 40 us per publish (a wake-up write to its loop thread for every message),
which caps a gateway at about 11 000 messages/s. A gateway only needs CONNECT with a Will,
QoS 1 PUBLISH, PUBACK, SUBSCRIBE for commands and PINGREQ, so this module speaks exactly that:
PUBLISH packets are built into one buffer and written with one ``sendall`` per batch, a reader
thread counts PUBACKs, and the broker's Receive Maximum bounds what is in flight.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

__all__ = ["WireConnection", "WireError"]

_CONNECT: Final = 0x10
_CONNACK: Final = 0x20
_PUBLISH: Final = 0x30
_PUBACK: Final = 0x40
_SUBSCRIBE: Final = 0x82
_SUBACK: Final = 0x90
_PINGREQ: Final = b"\xc0\x00"
_PINGRESP: Final = 0xD0
_DISCONNECT: Final = 0xE0
_FLUSH_BYTES: Final = 64 * 1024
_KEEPALIVE_S: Final = 60
# A gateway subscribes to the command topic of each machine it serves (tens of thousands in a
# large fleet); 1024 filters (at most 84 bytes each) per SUBSCRIBE keep a packet under 100 KB.
_FILTERS_PER_SUBSCRIBE: Final = 1024
# CONNACK property identifiers and the size of their values (-1: UTF-8 string or binary,
# -2: string pair, -4: variable byte integer).
_PROPERTY_SIZES: Final = {
    0x11: 4, 0x12: -1, 0x13: 2, 0x15: -1, 0x16: -1, 0x17: 1, 0x19: 1, 0x1A: -1, 0x1C: -1,
    0x1F: -1, 0x21: 2, 0x22: 2, 0x24: 1, 0x25: 1, 0x26: -2, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1,
    0x0B: -4,
}  # fmt: skip


class WireError(Exception):
    """The connection failed or the broker refused it."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _str(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


def _bin(raw: bytes) -> bytes:
    return struct.pack(">H", len(raw)) + raw


class WireConnection:
    """One MQTT 5 connection that publishes at QoS 1 and receives commands on its filters."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        username: str | None,
        password: str | None,
        will: tuple[str, bytes] | None,
        subscribe: Sequence[str],
        on_message: Callable[[str, bytes], None],
        tls: bool = False,
        timeout: float = 10.0,
    ) -> None:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            if tls:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        except OSError as exc:
            raise WireError(f"cannot connect to {host}:{port}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._on_message = on_message
        self._write_lock = threading.Lock()
        self._buffer = bytearray()
        self._next_id = 0
        self._inflight = 0
        self._cond = threading.Condition()
        self._closed = False
        self._error: str | None = None
        self._last_write = time.monotonic()
        self._send_connect(client_id, username, password, will)
        self.receive_maximum = self._read_connack()
        self._reader = threading.Thread(
            target=self._read_loop, name=f"mqtt-{client_id}", daemon=True
        )
        sock.settimeout(_KEEPALIVE_S / 3)
        self._reader.start()
        self.subscribe(subscribe)

    def subscribe(self, filters: Sequence[str]) -> None:
        """Subscribe to ``filters`` at QoS 1 (the SUBACK is not awaited)."""
        for start in range(0, len(filters), _FILTERS_PER_SUBSCRIBE):
            # publishes and subscriptions share the packet identifiers of the session
            self._next_id = self._next_id % 65535 + 1
            chunk = filters[start : start + _FILTERS_PER_SUBSCRIBE]
            body = struct.pack(">H", self._next_id) + b"\x00"
            body += b"".join(_str(f) + b"\x01" for f in chunk)
            self._write(bytes([_SUBSCRIBE]) + _varint(len(body)) + body)

    # ------------------------------------------------------------------ connect

    def _send_connect(
        self, client_id: str, username: str | None, password: str | None,
        will: tuple[str, bytes] | None,
    ) -> None:  # fmt: skip
        flags = 0  # clean start off: the broker keeps commands while a gateway is away
        if will is not None:
            flags |= 0x04 | (1 << 3) | 0x20  # will, will QoS 1, will retain
        if username is not None:
            flags |= 0x80
        if password is not None:
            flags |= 0x40
        props = b"\x11" + struct.pack(">I", 3600)  # session expiry
        header = _str("MQTT") + bytes([5, flags]) + struct.pack(">H", _KEEPALIVE_S)
        header += _varint(len(props)) + props
        payload = _str(client_id)
        if will is not None:
            payload += b"\x00" + _str(will[0]) + _bin(will[1])
        if username is not None:
            payload += _str(username)
        if password is not None:
            payload += _bin(password.encode())
        body = header + payload
        self._sock.sendall(bytes([_CONNECT]) + _varint(len(body)) + body)

    def _read_exact(self, n: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < n:
            try:
                chunk = self._sock.recv(n - len(chunks))
            except TimeoutError:
                if self._closed:
                    raise
                self._ping()
                continue
            if not chunk:
                raise WireError("the broker closed the connection")
            chunks += chunk
        return bytes(chunks)

    def _read_packet(self) -> tuple[int, bytes]:
        first = self._read_exact(1)[0]
        length, shift = 0, 0
        while True:
            byte = self._read_exact(1)[0]
            length += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first, self._read_exact(length) if length else b""

    def _read_connack(self) -> int:
        kind, body = self._read_packet()
        if kind & 0xF0 != _CONNACK or len(body) < 2:
            raise WireError("the broker did not answer CONNECT")
        if body[1] != 0:
            raise WireError(f"the broker refused the connection (reason 0x{body[1]:02x})")
        receive_maximum = 65535
        pos, end = 2, len(body)
        length, pos = _read_varint(body, pos)
        end = pos + length
        while pos < end:
            ident = body[pos]
            pos += 1
            size = _PROPERTY_SIZES.get(ident)
            if size is None:
                break
            if ident == 0x21:
                receive_maximum = struct.unpack_from(">H", body, pos)[0]
            if size > 0:
                pos += size
            elif size == -4:
                _v, pos = _read_varint(body, pos)
            else:
                for _ in range(-size):
                    (n,) = struct.unpack_from(">H", body, pos)
                    pos += 2 + n
        return max(1, receive_maximum)

    # ------------------------------------------------------------------ reading

    def _read_loop(self) -> None:
        try:
            while not self._closed:
                kind, body = self._read_packet()
                t = kind & 0xF0
                if t == _PUBACK:
                    with self._cond:
                        self._inflight -= 1
                        self._cond.notify_all()
                elif t == _PUBLISH:
                    self._incoming(kind, body)
        except (OSError, WireError, ValueError) as exc:
            if not self._closed:
                self._error = str(exc) or type(exc).__name__
        finally:
            with self._cond:
                self._cond.notify_all()

    def _incoming(self, kind: int, body: bytes) -> None:
        (n,) = struct.unpack_from(">H", body, 0)
        topic = body[2 : 2 + n].decode()
        pos = 2 + n
        qos = (kind >> 1) & 0x03
        packet_id = None
        if qos:
            (packet_id,) = struct.unpack_from(">H", body, pos)
            pos += 2
        props, pos = _read_varint(body, pos)
        pos += props
        self._on_message(topic, body[pos:])
        if packet_id is not None:
            self._write(bytes([_PUBACK, 2]) + struct.pack(">H", packet_id))

    def _ping(self) -> None:
        if time.monotonic() - self._last_write > _KEEPALIVE_S / 3:
            self._write(_PINGREQ)

    def _write(self, data: bytes) -> None:
        with self._write_lock:
            self._sock.sendall(data)
            self._last_write = time.monotonic()

    # ------------------------------------------------------------------ publishing

    def publish(self, topic: bytes, payload: bytes, *, retain: bool = False) -> None:
        """Queue a QoS 1 publish; ``topic`` is the UTF-8 topic with its 2-byte length prefix."""
        while True:
            with self._cond:
                if self._error:
                    raise WireError(self._error)
                if self._inflight < self.receive_maximum:
                    self._inflight += 1
                    break
                if not self._buffer:
                    self._cond.wait(1.0)
                    continue
            self.flush()  # the window is full: what is buffered must go out to be acknowledged
        self._next_id = self._next_id % 65535 + 1
        remaining = len(topic) + 3 + len(payload)  # packet id (2) and empty properties (1)
        buffer = self._buffer
        buffer.append(0x33 if retain else 0x32)
        buffer += _varint(remaining)
        buffer += topic
        buffer += struct.pack(">HB", self._next_id, 0)
        buffer += payload
        if len(buffer) >= _FLUSH_BYTES:
            self.flush()

    def _flush_locked(self) -> None:
        data = bytes(self._buffer)
        self._buffer.clear()
        self._write(data)

    def flush(self) -> None:
        if self._buffer:
            self._flush_locked()

    def wait(self, timeout: float = 60.0) -> None:
        """Send what is buffered and wait until the broker acknowledged everything."""
        self.flush()
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._inflight > 0:
                if self._error:
                    raise WireError(self._error)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WireError(f"{self._inflight} publishes not acknowledged in {timeout} s")
                self._cond.wait(min(left, 1.0))

    def close(self, *, send_will: bool = False) -> None:
        try:
            if not self._error:
                self.wait()
                reason = 0x04 if send_will else 0x00
                self._write(bytes([_DISCONNECT, 1, reason]))
        finally:
            self._closed = True
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._reader.join(timeout=5)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def topic_bytes(topic: str) -> bytes:
    return _str(topic)

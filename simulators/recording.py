"""Recordings of fleet traffic: the file format, and the recorder that writes one from a broker.

A recording is a stream, written as messages arrive and readable while it grows::

    aquafleet-recording/1 {"created": "...", "filters": ["aquafleet/v1/#"]}\\n   header line
    frame*                                                                          to the end

    frame = length:u32  crc32(body):u32  body                    (big-endian)
    body  = offset_us:u64  flags:u8  topic_len:u16  topic(UTF-8)  payload

``offset_us`` is the time since the recording started, in microseconds; it is absolute (not a
delta from the previous frame) so that rounding never accumulates over a long recording.
``flags`` holds the QoS in bits 0-1 and the retain flag in bit 2. The header line carries the
format version in its first word and a JSON object of facts about the recording.

The whole stream may be gzip-compressed (a file named ``*.gz``, or ``compress=True``); readers
recognise gzip by its magic bytes. The writer flushes at least every `FLUSH_INTERVAL_S`, with a
gzip sync flush, so a recording cut by a crash or a kill holds everything up to shortly before.
A reader then stops at the last whole frame whose checksum matches and says so in a warning: the
frames before are as good as ever.
"""

from __future__ import annotations

import gzip
import json
import logging
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import ValidationError

from aquafleet.config import Settings
from aquafleet.errors import AquaFleetError, UsageError

__all__ = [
    "DEFAULT_FILTERS",
    "FORMAT_VERSION",
    "MAGIC",
    "BrokerConnectionError",
    "Frame",
    "Recorder",
    "RecordingError",
    "RecordingFormatError",
    "RecordingHeader",
    "RecordingReader",
    "RecordingWriter",
    "connect_client",
    "with_broker_url",
]

log = logging.getLogger(__name__)

MAGIC: Final = b"aquafleet-recording/"
FORMAT_VERSION: Final = 1
DEFAULT_FILTERS: Final = ("aquafleet/v1/#",)

#: Upper bound on what a crash can lose from the end of a recording.
FLUSH_INTERVAL_S: Final = 0.5

_GZIP_MAGIC: Final = b"\x1f\x8b"
_FRAME_HEAD = struct.Struct(">II")  # body length, crc32 of the body
_BODY_HEAD = struct.Struct(">QBH")  # offset_us, flags, topic length
_MAX_HEADER_LINE: Final = 64 * 1024
# Far above any MQTT message the fleet sends (64 KiB births): a larger length is a torn frame.
_MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
_QOS_MASK: Final = 0b011
_RETAIN_BIT: Final = 0b100


class RecordingError(AquaFleetError):
    """A recording could not be written, read or replayed."""


class RecordingFormatError(RecordingError):
    """The file is not a recording this build can read."""


class BrokerConnectionError(RecordingError):
    """The broker refused or dropped the connection."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One message as the broker delivered it, and when (seconds since the recording began)."""

    offset_s: float
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False

    def __post_init__(self) -> None:
        if self.qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {self.qos}")
        if self.offset_s < 0:
            raise ValueError(f"offset must not be negative, got {self.offset_s}")
        if not self.topic or len(self.topic.encode()) > 0xFFFF:
            raise ValueError("topic must be 1-65535 bytes")


@dataclass(frozen=True)
class RecordingHeader:
    version: int
    created: str | None = None
    filters: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# writing


class RecordingWriter:
    """Appends frames to a new recording file; use it as a context manager.

    ``compress=None`` compresses when the file name ends with ``.gz``.
    """

    def __init__(
        self,
        path: Path,
        *,
        compress: bool | None = None,
        filters: Sequence[str] = DEFAULT_FILTERS,
        extra: dict[str, Any] | None = None,
        flush_interval_s: float = FLUSH_INTERVAL_S,
    ) -> None:
        self.path = path
        self.frames = 0
        self._flush_interval = flush_interval_s
        self._last_flush = time.monotonic()
        if compress is None:
            compress = path.suffix == ".gz"
        try:
            self._raw: IO[bytes] = path.open("wb")
        except OSError as exc:
            raise RecordingError(f"cannot write {path}: {exc.strerror}") from exc
        self._gzip: gzip.GzipFile | None = None
        if compress:
            # mtime=0 keeps the bytes of two identical recordings identical
            self._gzip = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6, mtime=0)
        meta: dict[str, Any] = {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "filters": list(filters),
        }
        meta.update(extra or {})
        header = MAGIC + f"{FORMAT_VERSION} ".encode() + json.dumps(meta).encode() + b"\n"
        self._write(header)
        self.flush()

    def write(self, frame: Frame) -> None:
        topic = frame.topic.encode()
        flags = frame.qos | (_RETAIN_BIT if frame.retain else 0)
        body = (
            _BODY_HEAD.pack(round(frame.offset_s * 1_000_000), flags, len(topic))
            + topic
            + frame.payload
        )
        self._write(_FRAME_HEAD.pack(len(body), zlib.crc32(body)) + body)
        self.frames += 1
        now = time.monotonic()
        if now - self._last_flush >= self._flush_interval:
            self.flush()

    def flush(self) -> None:
        """Make everything written so far readable by another process, and survive a crash."""
        try:
            if self._gzip is not None:
                self._gzip.flush(zlib.Z_SYNC_FLUSH)
            self._raw.flush()
        except OSError as exc:
            raise RecordingError(f"cannot write {self.path}: {exc.strerror}") from exc
        self._last_flush = time.monotonic()

    @property
    def closed(self) -> bool:
        return self._raw.closed

    def close(self) -> None:
        if self._raw.closed:
            return
        try:
            if self._gzip is not None:
                self._gzip.close()
            self._raw.close()
        except OSError as exc:
            raise RecordingError(f"cannot write {self.path}: {exc.strerror}") from exc

    def _write(self, data: bytes) -> None:
        try:
            if self._gzip is not None:
                self._gzip.write(data)
            else:
                self._raw.write(data)
        except OSError as exc:
            raise RecordingError(f"cannot write {self.path}: {exc.strerror}") from exc

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# reading


class _ByteSource:
    """The recording's bytes, decompressed when gzip, without reading past a cut.

    The standard library's buffered gzip reader fills its buffer ahead and, when the stream
    ends early, raises and drops what it had already decompressed; this one hands out every
    byte that is there and notes the cut instead.
    """

    _CHUNK = 64 * 1024

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._buffer = bytearray()
        self._decompressor: Any = None
        self.cut: str | None = None
        self._eof = False
        if raw.read(2) == _GZIP_MAGIC:
            self._decompressor = zlib.decompressobj(wbits=31)
        raw.seek(0)

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at the end of the data."""
        while len(self._buffer) < size and self._fill():
            pass
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def readline(self, limit: int) -> bytes:
        while b"\n" not in self._buffer and len(self._buffer) < limit and self._fill():
            pass
        end = self._buffer.find(b"\n")
        size = min(limit, end + 1 if end >= 0 else len(self._buffer))
        return self.read(size)

    def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = self._raw.read(self._CHUNK)
        if self._decompressor is None:
            if not chunk:
                self._eof = True
                return False
            self._buffer += chunk
            return True
        if not chunk:
            self._eof = True
            if not self._decompressor.eof:
                self.cut = "the compressed stream ends early"
            return False
        try:
            self._buffer += self._decompressor.decompress(chunk)
            # a second gzip member (files concatenated with cat) continues the stream
            while self._decompressor.eof and self._decompressor.unused_data:
                rest = self._decompressor.unused_data
                self._decompressor = zlib.decompressobj(wbits=31)
                self._buffer += self._decompressor.decompress(rest)
        except zlib.error as exc:
            self._eof = True
            self.cut = f"the compressed stream is damaged ({exc})"
            return False
        return True


class RecordingReader:
    """Reads a recording frame by frame; use it as a context manager and iterate it.

    A foreign or unreadable file raises `RecordingFormatError` when opened. A cut tail ends the
    iteration at the last whole frame; ``truncated`` then says why, and a warning is logged.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.truncated: str | None = None
        self.frames = 0
        try:
            self._raw: IO[bytes] = path.open("rb")
        except OSError as exc:
            raise RecordingFormatError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            self._in = _ByteSource(self._raw)
            self.header = self._read_header()
        except BaseException:
            self._raw.close()
            raise

    def _read_header(self) -> RecordingHeader:
        try:
            line = self._in.readline(_MAX_HEADER_LINE)
        except OSError as exc:
            raise RecordingFormatError(f"cannot read {self.path}: {exc.strerror}") from exc
        if not line and self._in.cut is not None:
            raise RecordingFormatError(f"{self.path}: not a readable recording ({self._in.cut})")
        if not line.startswith(MAGIC):
            raise RecordingFormatError(f"{self.path}: not an aquafleet recording")
        if not line.endswith(b"\n"):
            raise RecordingFormatError(f"{self.path}: the recording's header is cut or malformed")
        version_text, _, meta_text = line[len(MAGIC) :].rstrip(b"\n").partition(b" ")
        try:
            version = int(version_text)
        except ValueError:
            raise RecordingFormatError(f"{self.path}: malformed recording header") from None
        if version != FORMAT_VERSION:
            raise RecordingFormatError(
                f"{self.path}: recording format version {version} is not supported "
                f"(this version reads {FORMAT_VERSION})"
            )
        try:
            meta = json.loads(meta_text) if meta_text.strip() else {}
        except ValueError:
            raise RecordingFormatError(f"{self.path}: malformed recording header") from None
        if not isinstance(meta, dict):
            raise RecordingFormatError(f"{self.path}: malformed recording header")
        created = meta.pop("created", None)
        filters = meta.pop("filters", [])
        return RecordingHeader(
            version=version,
            created=str(created) if created is not None else None,
            filters=tuple(str(f) for f in filters) if isinstance(filters, list) else (),
            extra=meta,
        )

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self._next_frame()
            if frame is None:
                return
            self.frames += 1
            yield frame

    def _next_frame(self) -> Frame | None:
        head = self._read_exactly(_FRAME_HEAD.size)
        if head is None:
            return None
        length, crc = _FRAME_HEAD.unpack(head)
        if length < _BODY_HEAD.size or length > _MAX_FRAME_BYTES:
            self._cut(f"frame {self.frames + 1} has an impossible length {length}")
            return None
        body = self._read_exactly(length)
        if body is None:
            return None
        if zlib.crc32(body) != crc:
            self._cut(f"frame {self.frames + 1} fails its checksum")
            return None
        offset_us, flags, topic_len = _BODY_HEAD.unpack_from(body)
        topic_end = _BODY_HEAD.size + topic_len
        try:
            return Frame(
                offset_s=offset_us / 1_000_000,
                topic=body[_BODY_HEAD.size : topic_end].decode(),
                payload=body[topic_end:],
                qos=flags & _QOS_MASK,
                retain=bool(flags & _RETAIN_BIT),
            )
        except (UnicodeDecodeError, ValueError) as exc:
            self._cut(f"frame {self.frames + 1} is malformed ({exc})")
            return None

    def _read_exactly(self, size: int) -> bytes | None:
        """``size`` bytes, or None at the end; a partial read marks the tail as cut."""
        try:
            data = self._in.read(size)
        except OSError as exc:
            self._cut(f"read error ({exc.strerror})")
            return None
        if len(data) == size:
            return data
        if data:
            self._cut(f"frame {self.frames + 1} is incomplete")
        elif self._in.cut is not None:
            self._cut(self._in.cut)
        return None

    def _cut(self, reason: str) -> None:
        if self.truncated is None:
            self.truncated = reason
            log.warning(
                "%s: the recording ends early (%s); using the %d whole frame(s) before it",
                self.path,
                reason,
                self.frames,
            )

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> RecordingReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# connecting to the broker


_CONNECT_TIMEOUT_S: Final = 10.0
_UNSUPPORTED_PROTOCOL: Final = 132  # MQTT 5 CONNACK reason "Unsupported protocol version"


@dataclass
class _ConnectState:
    done: threading.Event = field(default_factory=threading.Event)
    reason: ReasonCode | None = None
    error: str | None = None


def with_broker_url(settings: Settings, url: str | None) -> Settings:
    """The settings with another broker URL (a ``--broker-url``), checked like the environment's."""
    if url is None:
        return settings
    try:
        return type(settings).model_validate(settings.model_dump() | {"broker_url": url})
    except ValidationError as exc:
        reason = exc.errors()[0].get("msg", "is invalid").removeprefix("Value error, ")
        raise UsageError(f"--broker-url {reason}") from exc


def connect_client(settings: Settings, *, client_id: str, prefer_mqtt5: bool = True) -> mqtt.Client:
    """A connected, running paho client: MQTT 5 when the broker speaks it, else MQTT 3.1.1.

    Some brokers (amqtt among them) speak 3.1.1 only; record and replay need nothing that 3.1.1
    lacks, so they fall back to it rather than fail.
    """
    target = settings.broker_host_port
    if target is None:
        raise BrokerConnectionError(
            "no broker configured: set AQUAFLEET_BROKER_URL or pass --broker-url"
        )
    protocols = [mqtt.MQTTv5, mqtt.MQTTv311] if prefer_mqtt5 else [mqtt.MQTTv311]
    last_error = ""
    for protocol in protocols:
        client = _new_client(settings, client_id=client_id, protocol=protocol)
        state = _ConnectState()

        def on_connect(
            client: mqtt.Client,
            userdata: object,
            flags: object,
            reason: ReasonCode,
            properties: object = None,
            state: _ConnectState = state,
        ) -> None:
            state.reason = reason
            state.done.set()

        client.on_connect = on_connect
        try:
            client.connect(target[0], target[1], keepalive=30)
        except OSError as exc:
            raise BrokerConnectionError(
                f"cannot connect to the broker at {target[0]}:{target[1]}: {exc.strerror or exc}"
            ) from exc
        client.loop_start()
        if not state.done.wait(_CONNECT_TIMEOUT_S):
            client.loop_stop()
            client.disconnect()
            raise BrokerConnectionError(
                f"the broker at {target[0]}:{target[1]} did not answer the connection"
            )
        reason = state.reason
        assert reason is not None
        if not reason.is_failure:
            client.on_connect = None
            return client
        client.loop_stop()
        client.disconnect()
        last_error = str(reason)
        if reason.value != _UNSUPPORTED_PROTOCOL:
            break
        log.info("the broker does not speak MQTT 5; using MQTT 3.1.1")
    raise BrokerConnectionError(f"the broker refused the connection: {last_error}")


def _new_client(settings: Settings, *, client_id: str, protocol: int) -> mqtt.Client:
    kwargs: dict[str, Any] = {}
    if protocol != mqtt.MQTTv5:
        kwargs["clean_session"] = True
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,  # type: ignore[arg-type]
        **kwargs,
    )
    if settings.broker_username is not None:
        password = settings.broker_password.get_secret_value() if settings.broker_password else None
        client.username_pw_set(settings.broker_username, password)
    if settings.broker_tls:
        client.tls_set()
    # Unbounded in-flight and queue: the broker's Receive Maximum bounds what is in flight, and
    # replay waits for acknowledgements before it calls the run done.
    client.max_queued_messages_set(0)
    return client


# ---------------------------------------------------------------------------------------------
# recording


class Recorder:
    """Subscribes to the fleet's topics and writes every message it receives to a recording.

    ``start()`` returns once the broker has granted the subscriptions, so nothing published after
    it is missed; ``stop()`` disconnects and closes the file. Retained messages (the devices'
    presence) arrive first, flagged as retained.
    """

    def __init__(
        self,
        settings: Settings,
        path: Path,
        *,
        filters: Sequence[str] = DEFAULT_FILTERS,
        compress: bool | None = None,
        max_messages: int | None = None,
        client_id: str | None = None,
    ) -> None:
        self._settings = settings
        self._filters = tuple(filters)
        self._max_messages = max_messages
        self._client_id = client_id or f"aquafleet-recorder-{int(time.time() * 1000) % 10**9}"
        self._path = path
        self._compress = compress
        self._writer: RecordingWriter | None = None
        self._client: mqtt.Client | None = None
        self._t0 = 0.0
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._full = threading.Event()
        self._stopped = threading.Event()
        self._lost: str | None = None
        self._error: BaseException | None = None

    @property
    def messages(self) -> int:
        return self._writer.frames if self._writer is not None else 0

    @property
    def full(self) -> threading.Event:
        """Set once ``max_messages`` have been recorded."""
        return self._full

    def start(self) -> None:
        client = connect_client(self._settings, client_id=self._client_id)
        try:
            self._writer = RecordingWriter(
                self._path,
                compress=self._compress,
                filters=self._filters,
                extra={"tool": "aquafleet record"},
            )
        except BaseException:
            client.disconnect()
            client.loop_stop()
            raise
        self._client = client
        self._t0 = time.monotonic()
        # a quiet fleet writes nothing for a while; what was written must still reach the disk
        self._flusher = threading.Thread(target=self._flush_periodically, daemon=True)
        self._flusher.start()
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        if client.protocol == mqtt.MQTTv5:
            # retain_as_published: keep the retain flag on live messages, as the devices set it
            options = SubscribeOptions(qos=1, retainAsPublished=True)
            result, _ = client.subscribe([(f, options) for f in self._filters])
        else:
            result, _ = client.subscribe([(f, 1) for f in self._filters])
        if result != mqtt.MQTT_ERR_SUCCESS or not self._subscribed.wait(_CONNECT_TIMEOUT_S):
            self.stop()
            raise BrokerConnectionError("the broker did not grant the subscription")
        if self._error is not None:
            self.stop()
            raise BrokerConnectionError(str(self._error))

    def _flush_periodically(self) -> None:
        while not self._stopped.wait(FLUSH_INTERVAL_S):
            with self._lock:
                writer = self._writer
                if writer is None or writer.closed:
                    return
                try:
                    writer.flush()
                except RecordingError as exc:
                    self._error = exc
                    self._full.set()
                    return

    def check(self) -> None:
        """Raise what went wrong on the client's thread, if anything."""
        if self._error is not None:
            raise RecordingError(str(self._error)) from self._error
        if self._lost is not None:
            raise BrokerConnectionError(f"lost the broker: {self._lost}")

    def stop(self) -> None:
        self._stopped.set()
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
        with self._lock:
            if self._writer is not None:
                self._writer.close()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: object = None,
    ) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:
            self._error = RecordingError(f"the broker refused the subscription: {refused[0]}")
        self._subscribed.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason: ReasonCode,
        properties: object = None,
    ) -> None:
        if self._client is not None and reason.is_failure:
            self._lost = str(reason)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if self._full.is_set():
            return
        topic = message.topic
        # a broker may hand out retained messages its subscriptions do not match (amqtt does)
        if not any(mqtt.topic_matches_sub(f, topic) for f in self._filters):
            return
        frame = Frame(
            offset_s=time.monotonic() - self._t0,
            topic=topic,
            payload=bytes(message.payload),
            qos=message.qos,
            retain=bool(message.retain),
        )
        writer = self._writer
        if writer is None:
            return
        try:
            with self._lock:
                writer.write(frame)
        except (RecordingError, ValueError) as exc:
            # ValueError: written after stop() closed the file, as the client thread ended
            self._error = exc
            self._full.set()
            return
        if self._max_messages is not None and writer.frames >= self._max_messages:
            self._full.set()

    def __enter__(self) -> Recorder:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

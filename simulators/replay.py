"""Republishing a recording: same topics, payloads, QoS and retain flags, with its timing scaled.

Payloads go out byte for byte, device timestamps included, so ingest stores the rows the
original run stored; ``retime=True`` moves the device times onto the replay's clock instead (see
`simulators.retime`), for a recording older than ingest accepts as live data. Time is counted
from the first frame, so a recorder left waiting before the fleet started adds no idle time.
``speed=None`` publishes as fast as the broker acknowledges.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from aquafleet.config import Settings
from simulators.recording import (
    BrokerConnectionError,
    RecordingReader,
    connect_client,
)
from simulators.retime import Retimer

__all__ = ["ReplayResult", "Replayer"]

log = logging.getLogger(__name__)

#: Messages published but not yet acknowledged; bounds memory when replaying as fast as possible.
DEFAULT_WINDOW: Final = 1000
_DRAIN_TIMEOUT_S: Final = 60.0
# A sleep shorter than this is not worth a system call; the next frames catch up.
_MIN_SLEEP_S: Final = 0.002


@dataclass(frozen=True)
class ReplayResult:
    published: int
    elapsed_s: float
    recorded_s: float  # the span of the recording, first frame to last
    truncated: str | None  # why the recording ended early, if it did


Progress = Callable[[int], None]


class Replayer:
    """Replays one recording to the configured broker."""

    def __init__(
        self,
        settings: Settings,
        path: Path,
        *,
        speed: float | None = 1.0,
        window: int = DEFAULT_WINDOW,
        client_id: str | None = None,
        retime: bool = False,
    ) -> None:
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be greater than 0, got {speed}")
        self._settings = settings
        self._path = path
        self._speed = speed
        self._retime = retime
        self._window = threading.BoundedSemaphore(window)
        self._window_size = window
        self._client_id = client_id or f"aquafleet-replay-{int(time.time() * 1000) % 10**9}"
        self._lost: str | None = None

    def run(
        self, *, stop: threading.Event | None = None, progress: Progress | None = None
    ) -> ReplayResult:
        stop = stop or threading.Event()
        # Open the file first: a foreign file is refused before anything is published.
        with RecordingReader(self._path) as reader:
            client = connect_client(self._settings, client_id=self._client_id)
            client.on_publish = self._on_publish
            client.on_disconnect = self._on_disconnect
            try:
                published, first, last, started = self._publish_all(client, reader, stop, progress)
                self._drain(stop)
            finally:
                client.on_disconnect = None
                client.disconnect()
                client.loop_stop()
            truncated = reader.truncated
        return ReplayResult(
            published=published,
            elapsed_s=time.monotonic() - started,
            recorded_s=max(0.0, last - first),
            truncated=truncated,
        )

    def _publish_all(
        self,
        client: mqtt.Client,
        reader: RecordingReader,
        stop: threading.Event,
        progress: Progress | None,
    ) -> tuple[int, float, float, float]:
        published = 0
        first: float | None = None
        last = 0.0
        started = time.monotonic()
        retimer = Retimer(reader.header) if self._retime else None
        for frame in reader:
            if stop.is_set():
                break
            if first is None:
                first = frame.offset_s
                started = time.monotonic()
            last = frame.offset_s
            if self._speed is not None:
                due = started + (frame.offset_s - first) / self._speed
                wait = due - time.monotonic()
                if wait > _MIN_SLEEP_S and stop.wait(wait):
                    break
            if not self._acquire(stop):
                break
            payload = frame.payload
            if retimer is not None:
                payload = retimer.payload(frame, int(time.time() * 1000))
            info = client.publish(frame.topic, payload, qos=frame.qos, retain=frame.retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
                raise BrokerConnectionError(f"publish failed: {mqtt.error_string(info.rc)}")
            published += 1
            if progress is not None:
                progress(published)
        return published, first or 0.0, last, started

    def _acquire(self, stop: threading.Event) -> bool:
        """Take a place in the window of unacknowledged messages; False when stopped."""
        while not self._window.acquire(timeout=0.5):
            self._check()
            if stop.is_set():
                return False
        self._check()
        return True

    def _drain(self, stop: threading.Event) -> None:
        """Wait until the broker has acknowledged everything published."""
        deadline = time.monotonic() + _DRAIN_TIMEOUT_S
        taken = 0
        while taken < self._window_size:
            if self._window.acquire(timeout=0.2):
                taken += 1
                continue
            self._check()
            if stop.is_set():
                return
            if time.monotonic() > deadline:
                raise BrokerConnectionError("the broker did not acknowledge every message in time")
        for _ in range(taken):
            self._window.release()

    def _check(self) -> None:
        if self._lost is not None:
            raise BrokerConnectionError(f"lost the broker during the replay: {self._lost}")

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: object = None,
    ) -> None:
        self._window.release()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason: ReasonCode,
        properties: object = None,
    ) -> None:
        self._lost = str(reason)

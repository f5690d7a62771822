"""The simulator's output seam: where its messages go.

The simulator produces one ordered stream of actions: `Connect` (a machine's connection comes up,
with its Will), `Outgoing` (one MQTT publish) and `Disconnect` (the connection goes down, cleanly
or not). A `Sink` carries them out. `MemorySink` keeps them, behaving like a broker would for the
Will (published on an unclean disconnect) and retained messages, so unit tests and recorders see
exactly the bytes an MQTT subscriber would; the MQTT sinks in `simulators.mqtt` publish for real.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias, runtime_checkable

__all__ = ["Action", "Connect", "Disconnect", "MemorySink", "Outgoing", "Sink"]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One publish: topic, payload bytes, QoS, retain; ``sim_ms`` is the simulated true time."""

    topic: str
    payload: bytes
    device_id: str
    sim_ms: int
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Connect:
    """A machine connects; the broker will publish ``will`` if the connection is lost."""

    device_id: str
    will: Outgoing
    sim_ms: int


@dataclass(frozen=True, slots=True)
class Disconnect:
    """A machine's connection ends; ``send_will``: uncleanly, so its Will is published."""

    device_id: str
    send_will: bool
    sim_ms: int


Action: TypeAlias = Outgoing | Connect | Disconnect


@runtime_checkable
class Sink(Protocol):
    def send(self, actions: Sequence[Action]) -> None:
        """Carry out the actions in order."""

    def commands(self) -> list[tuple[str, bytes]]:
        """Downlink messages (topic, payload) received since the last call."""

    def close(self) -> None:
        """Flush and release connections; machines still connected disconnect cleanly."""


class MemorySink:
    """Keeps every publish in order, as a subscriber to everything would receive it.

    ``messages`` holds the publishes (the Will of an unclean disconnect included, as the broker
    sends it); ``actions`` the raw stream; ``retained`` the last retained payload per topic.
    Commands for the simulated machines are queued with `inject_command`.
    """

    def __init__(self, *, keep_actions: bool = False) -> None:
        self.messages: list[Outgoing] = []
        self.actions: list[Action] = []
        self.retained: dict[str, bytes] = {}
        self._keep_actions = keep_actions
        self._wills: dict[str, Outgoing] = {}
        self._commands: list[tuple[str, bytes]] = []

    def send(self, actions: Sequence[Action]) -> None:
        if self._keep_actions:
            self.actions.extend(actions)
        for action in actions:
            if isinstance(action, Outgoing):
                self._publish(action)
            elif isinstance(action, Connect):
                self._wills[action.device_id] = action.will
            else:
                will = self._wills.pop(action.device_id, None)
                if action.send_will and will is not None:
                    self._publish(will)

    def _publish(self, message: Outgoing) -> None:
        self.messages.append(message)
        if message.retain:
            self.retained[message.topic] = message.payload

    def inject_command(self, topic: str, payload: bytes) -> None:
        self._commands.append((topic, payload))

    def commands(self) -> list[tuple[str, bytes]]:
        out, self._commands = self._commands, []
        return out

    def close(self) -> None:
        self._wills.clear()

    def __iter__(self) -> Iterator[Outgoing]:
        return iter(self.messages)

    def stream_bytes(self) -> bytes:
        """The whole stream as one byte string (topic, payload, flags), for equality tests."""
        parts = []
        for m in self.messages:
            parts.append(f"{m.topic}|{m.qos}|{int(m.retain)}|".encode() + m.payload + b"\n")
        return b"".join(parts)

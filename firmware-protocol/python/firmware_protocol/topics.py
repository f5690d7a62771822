"""Topic layout of protocol v1: ``aquafleet/v1/{device_id}/{kind}``."""

from __future__ import annotations

import re
from enum import StrEnum
from functools import lru_cache
from typing import Final

from .errors import Rejected, RejectReason

__all__ = [
    "DEVICE_ID_PATTERN",
    "TOPIC_ROOT",
    "UPLINK_KINDS",
    "UPLINK_SUBSCRIPTIONS",
    "MessageKind",
    "is_valid_device_id",
    "parse_topic",
    "topic_of",
]

TOPIC_ROOT: Final = "aquafleet"
DEVICE_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{2,63}$"
# fullmatch on the body: "$" would also accept a trailing newline.
_DEVICE_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{2,63}")
_VERSION_RE: Final = re.compile(r"v[0-9]{1,4}")


class MessageKind(StrEnum):
    """The last topic level; also the schema file name stem."""

    BIRTH = "birth"
    TELEMETRY = "telemetry"
    EVENT = "event"
    STATUS = "status"
    ACK = "ack"
    CMD = "cmd"


UPLINK_KINDS: Final = (
    MessageKind.BIRTH,
    MessageKind.TELEMETRY,
    MessageKind.EVENT,
    MessageKind.STATUS,
    MessageKind.ACK,
)

#: What ingest subscribes to. One filter per kind rather than ``+/+`` so the
#: cloud's own commands on ``.../cmd`` are never read back as uplink.
UPLINK_SUBSCRIPTIONS: Final = tuple(f"{TOPIC_ROOT}/v1/+/{k.value}" for k in UPLINK_KINDS)


def is_valid_device_id(device_id: str) -> bool:
    return _DEVICE_ID_RE.fullmatch(device_id) is not None


def topic_of(device_id: str, kind: MessageKind) -> str:
    if not is_valid_device_id(device_id):
        raise ValueError(f"invalid device id {device_id!r}")
    return f"{TOPIC_ROOT}/v1/{device_id}/{kind.value}"


@lru_cache(maxsize=65536)
def parse_topic(topic: str) -> tuple[str, MessageKind]:
    """Split a v1 topic into (device_id, kind).

    Raises Rejected(bad_topic), or Rejected(unsupported_version) for a
    well-formed topic of another major version. Cached: a fleet reuses a
    bounded set of topics and this sits on the ingest hot path.
    """
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != TOPIC_ROOT:
        raise Rejected(
            RejectReason.BAD_TOPIC, f"not aquafleet/v1/{{device_id}}/{{kind}}: {topic!r}"
        )
    _, version, device_id, kind = parts
    if version != "v1":
        if _VERSION_RE.fullmatch(version):
            raise Rejected(RejectReason.UNSUPPORTED_VERSION, f"topic version {version!r}")
        raise Rejected(RejectReason.BAD_TOPIC, f"bad version level {version!r}")
    if _DEVICE_ID_RE.fullmatch(device_id) is None:
        raise Rejected(RejectReason.BAD_TOPIC, f"bad device id {device_id!r}")
    try:
        return device_id, MessageKind(kind)
    except ValueError:
        raise Rejected(RejectReason.BAD_TOPIC, f"unknown kind {kind!r}") from None

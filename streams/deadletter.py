"""The one decode → dead-letter path every reader of the log shares (``EventConsumer``, the processors' agents).

``decode_for_topic`` decodes a record and checks that it belongs where it was found; anything else raises
``DecodeError`` whose ``reason`` becomes the dead-letter header. ``dead_letter_headers`` is what a dead letter
carries: the record's own headers plus ``esper.dlq.reason``, ``detail``, ``source`` (topic/partition/offset),
``consumer`` and ``at`` (ms). The record itself goes to ``esper.deadletter`` unchanged, so nothing is lost.
"""

from __future__ import annotations

import time
from typing import Any

from streams.exceptions import DecodeError
from streams.serde import Decoded, Serde
from streams.topics import TopicRegistry

__all__ = ["DLQ_HEADERS", "decode_for_topic", "frame_for_topic", "dead_letter_headers"]

DLQ_HEADERS = ("esper.dlq.reason", "esper.dlq.detail", "esper.dlq.source", "esper.dlq.consumer", "esper.dlq.at")


def decode_for_topic(serde: Serde, registry: TopicRegistry, value: bytes | None, topic: str,
                     typed: bool = False) -> Decoded | Any:
    """The record decoded (``Decoded``), checked to be an event its topic may carry; with ``typed``, the generated
    event itself, for a record this version has a type for. Raises DecodeError (``bad-magic``, ``truncated``, ``too-large``, ``unknown-fingerprint``,
    ``schema-mismatch``, ``wrong-topic``, ``untyped``...) otherwise."""
    decoded = serde.decode(value, topic)
    if decoded.name not in registry.spec(topic).events:
        raise DecodeError("wrong-topic", f"{decoded.name} does not belong on {topic}")
    return decoded.typed() if typed else decoded


def frame_for_topic(serde: Serde, registry: TopicRegistry, value: bytes | None, topic: str):
    """``decode_for_topic``'s checks on the header alone (``Serde.frame``: writer schema, body offset, whether the
    writer is current), for a reader that hands the body on undecoded; the body's own checks are then the
    reader's (the sink's native path: ClickHouse's Avro reader, and a decode of each record when it refuses)."""
    writer, offset, current = serde.frame(value)
    if writer.name not in registry.spec(topic).events:
        raise DecodeError("wrong-topic", f"{writer.name} does not belong on {topic}")
    return writer, offset, current


def dead_letter_headers(headers, reason: str, detail: str, source: str, consumer: str) -> list[tuple[str, bytes]]:
    """The record's headers plus why and where from (``source``: topic/partition/offset; ``consumer``: who)."""
    return list(headers or []) + [
        ("esper.dlq.reason", reason.encode()),
        ("esper.dlq.detail", detail.encode()[:4000]),
        ("esper.dlq.source", source.encode()),
        ("esper.dlq.consumer", consumer.encode()),
        ("esper.dlq.at", str(int(time.time() * 1000)).encode()),
    ]

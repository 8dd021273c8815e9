"""Reading a compacted state topic to its end: the latest value of every key, tombstones removed.

Values are Avro records, single-object encoded (the topic's ``value_schema`` in the registry, ``schemas/state/``);
they come back as plain dicts (enums as their symbols). A value written as JSON by an Esper before the state topics
were Avro is still read, as the dict it holds, so a home from then keeps its state.

What a process that needs the materialized state does at start (the Urza materializer after a restart, Urabrask
for its peers, ``esper replay --verify``, the REST API): no consumer group, every partition from offset 0 to the
high watermark taken when the read began.
"""

from __future__ import annotations

import json
import time
from typing import Any

from streams.exceptions import EsperError

__all__ = ["read_state_topic", "encode_state_value", "decode_state_value"]


def encode_state_value(serde, spec, value: dict) -> bytes:
    """A state topic's value for ``value`` (a dict of the topic's ``value_schema``), single-object encoded."""
    return serde.encode(value, schema_name=spec.value_schema)


def decode_state_value(serde, raw: bytes) -> dict:
    """The dict a state topic's value holds (Avro; JSON from before the state topics were Avro)."""
    if raw[:1] == b"{":
        return json.loads(raw)
    return serde.decode(raw).record


def read_state_topic(backbone, name: str, timeout: float = 60.0) -> dict[str, Any]:
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    topic = backbone.resolve_topic(name)
    consumer = Consumer({"bootstrap.servers": backbone.bootstrap, "group.id": "esper-state-reader",
                         "enable.auto.commit": False, "enable.partition.eof": False})
    try:
        meta = consumer.list_topics(topic, timeout=10)
        if meta.topics[topic].error is not None:
            raise EsperError(f"state topic {topic} is not there: {meta.topics[topic].error} (start `esper processors`)")
        ends: dict[int, int] = {}
        assign = []
        for p in meta.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
                assign.append(TopicPartition(topic, p, low))
        state: dict[str, Any] = {}
        if not assign:
            return state
        consumer.assign(assign)
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=5000, timeout=0.5):
                if msg.error() is not None:
                    continue
                key = msg.key().decode()
                value = None if msg.value() is None else decode_state_value(backbone.serde, msg.value())
                if value is None:  # a tombstone (or JSON null): the entry is gone
                    state.pop(key, None)
                else:
                    state[key] = value
                if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                    ends.pop(msg.partition(), None)
        if ends:
            raise EsperError(f"reading {topic} timed out with partitions {sorted(ends)} unfinished")
        return state
    except KafkaException as exc:
        raise EsperError(f"cannot read {topic}: {exc}") from None
    finally:
        consumer.close()

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

from streams.exceptions import EsperError, StateLayoutError
from streams.retry import retrying

__all__ = ["read_state_topic", "encode_state_value", "decode_state_value", "LAYOUT_HEADER",
           "BY_SOURCE_PARTITION", "StateLayoutError", "check_layout", "keep"]

LAYOUT_HEADER = "esper.state.layout"
# an entry lives in the partition number of the input record it was folded from: a worker that owns input
# partition p restores state partition p and nothing else
BY_SOURCE_PARTITION = "source-partition"




def encode_state_value(serde, spec, value: dict) -> bytes:
    """A state topic's value for ``value`` (a dict of the topic's ``value_schema``), single-object encoded."""
    return serde.encode(value, schema_name=spec.value_schema)


def decode_state_value(serde, raw: bytes) -> dict:
    """The dict a state topic's value holds (Avro; JSON from before the state topics were Avro)."""
    if raw[:1] == b"{":
        return json.loads(raw)
    return serde.decode(raw).record


# A seed's entry never goes back to an older version, whatever order writes landed in: a worker that lost a
# partition in a rebalance may still finish its batch and write after the partition's new owner did.
_NEWER = {"esper.state.SeedStateEntry": lambda old, new: int(new.get("version", 0)) >= int(old.get("version", 0))}


def keep(state: dict[str, Any], key: str, value: dict | None, schema: str | None) -> None:
    """Fold one state record into ``state``: a tombstone (None) removes the key; otherwise the value replaces the
    key's unless the schema's rule (``_NEWER``) says it is older than what is there."""
    if value is None:
        state.pop(key, None)
        return
    current = state.get(key)
    newer = _NEWER.get(schema or "")
    if current is None or newer is None or newer(current, value):
        state[key] = value


def read_state_topic(backbone, name: str, timeout: float = 60.0, partitions: set[int] | None = None,
                     layout: str | None = None) -> dict[str, Any]:
    """The latest value of every key of a state topic (only of ``partitions``, when given). With ``layout``, every
    record must carry that ``esper.state.layout`` header (how its partition was chosen); one without it was
    written by an older Esper and raises ``StateLayoutError``."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    topic = backbone.resolve_topic(name)
    spec = backbone.registry.spec(topic)
    consumer = Consumer({"bootstrap.servers": backbone.bootstrap, "group.id": "esper-state-reader",
                         "enable.auto.commit": False, "enable.partition.eof": False})
    try:
        meta = retrying(lambda: consumer.list_topics(topic, timeout=10))
        if meta.topics[topic].error is not None:
            raise EsperError(f"state topic {topic} is not there: {meta.topics[topic].error} (start `esper processors`)")
        ends: dict[int, int] = {}
        assign = []
        for p in meta.topics[topic].partitions:
            if partitions is not None and p not in partitions:
                continue
            low, high = retrying(lambda: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10))
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
                if layout is not None and dict(msg.headers() or []).get(LAYOUT_HEADER) != layout.encode():
                    raise StateLayoutError(
                        f"{topic} holds entries written by an older Esper (key {key!r} in partition "
                        f"{msg.partition()} has no {LAYOUT_HEADER}={layout} header): stop the processors and run "
                        "`esper processors --rebuild`, which folds the state again from the log")
                value = None if msg.value() is None else decode_state_value(backbone.serde, msg.value())
                keep(state, key, value, spec.value_schema)
                if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                    ends.pop(msg.partition(), None)
        if ends:
            raise EsperError(f"reading {topic} timed out with partitions {sorted(ends)} unfinished")
        return state
    except KafkaException as exc:
        raise EsperError(f"cannot read {topic}: {exc}") from None
    finally:
        consumer.close()


def check_layout(backbone, name: str, layout: str, timeout: float = 30.0) -> None:
    """Raise ``StateLayoutError`` if the first record of any partition of a state topic lacks the ``layout``
    header: the topic was written by an Esper that placed entries another way (its entries sit first, as nothing
    since has overwritten them in those partitions). Reads one record per partition."""
    from confluent_kafka import Consumer, TopicPartition

    topic = backbone.resolve_topic(name)
    consumer = Consumer({"bootstrap.servers": backbone.bootstrap, "group.id": "esper-state-reader",
                         "enable.auto.commit": False})
    try:
        meta = retrying(lambda: consumer.list_topics(topic, timeout=10))
        if meta.topics[topic].error is not None:
            return  # not created yet: nothing written the old way
        for p in meta.topics[topic].partitions:
            low, high = retrying(lambda: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10))
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            deadline = time.monotonic() + timeout
            msg = None
            while msg is None and time.monotonic() < deadline:
                got = consumer.consume(num_messages=1, timeout=0.5)
                msg = next((m for m in got if m.error() is None), None)
            if msg is None:
                raise EsperError(f"reading {topic} partition {p} timed out")
            if dict(msg.headers() or []).get(LAYOUT_HEADER) != layout.encode():
                raise StateLayoutError(
                    f"{topic} holds entries written by an older Esper (partition {p} starts with one that has no "
                    f"{LAYOUT_HEADER}={layout} header): stop the processors and run `esper processors --rebuild`, "
                    "which folds the state again from the log")
    finally:
        consumer.close()

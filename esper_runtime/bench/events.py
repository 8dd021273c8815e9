"""``esper bench events``: Avro encode rate, produce rate to the broker, consume+decode rate, in one run."""

from __future__ import annotations

import time
import uuid

from streams import Backbone, EnvelopeFactory, SingleObjectSerde
from streams.contracts import SeedLifecycleTransition, SeedState
from streams.publisher import KafkaPublisher
from streams.replay import ReplayReader
from streams.topics import ensure_topics

TOPIC = "kasmina.lifecycle.transitions"


def _events(n: int) -> list[SeedLifecycleTransition]:
    envs = EnvelopeFactory(run_id="bench", producer="bench/events")
    states = list(SeedState)
    return [
        SeedLifecycleTransition(
            envelope=envs.next(f"seed/{i % 8}/{i % 64}"),
            layer_id=i % 8,
            seed_id=i % 64,
            from_state=states[i % 11],
            to_state=states[(i + 1) % 11],
            epoch=i // 1000,
            kernel_artifact_id=None,
        )
        for i in range(n)
    ]


def run(events: int = 300_000, encode_events: int = 100_000) -> dict:
    bb = Backbone()
    registry = bb.registry.with_prefix(f"bench-{uuid.uuid4().hex[:8]}.")
    topic = registry.prefix + TOPIC
    admin = bb.admin()
    ensure_topics(admin, _only(registry, topic))
    serde = SingleObjectSerde(bb.catalog)
    try:
        sample = _events(encode_events)
        encode_s, fastavro_s = _encode_against_fastavro(serde, sample, topic)

        payloads = [serde.encode(ev, topic) for ev in sample]
        keys = [ev.envelope.originator_id.encode() for ev in sample]
        pub = KafkaPublisher(bb.bootstrap, serde, registry)
        t0 = time.perf_counter()
        m = len(payloads)
        for i in range(events):
            pub.publish_raw(topic, payloads[i % m], keys[i % m])
        pub.flush(120)
        produce_s = time.perf_counter() - t0

        n_pub = min(events, 100_000)
        t0 = time.perf_counter()
        for ev in sample[:n_pub]:
            pub.publish(ev, topic=topic)
        pub.flush(120)
        publish_s = time.perf_counter() - t0
        total = events + n_pub

        source = bb.source()
        reader = ReplayReader(source, serde)
        t0 = time.perf_counter()
        consumed = bad = 0
        for ev in reader.events([topic]):
            consumed += 1
            bad += ev.error is not None
        consume_s = time.perf_counter() - t0
        if consumed != total or bad:
            raise RuntimeError(f"read back {consumed} records ({bad} undecodable), expected {total}")
        publish_limit = 1 / (1 / (encode_events / encode_s) + 1 / (events / produce_s))
        return {
            "bench": "events",
            "encode_events_per_s": round(encode_events / encode_s),
            "fastavro_events_per_s": round(encode_events / fastavro_s),
            "encode_over_fastavro": round(encode_s / fastavro_s, 3),
            "produce_events_per_s": round(events / produce_s),
            "publish_events_per_s": round(n_pub / publish_s),
            "publish_limit_events_per_s": round(publish_limit),
            "publish_over_limit": round(n_pub / publish_s / publish_limit, 3),
            "consume_events_per_s": round(consumed / consume_s),
            "events": events,
            "event_bytes": len(payloads[0]),
            "partitions": registry.spec(topic).partitions,
            "bootstrap": bb.bootstrap,
            "notes": "encode = typed event -> single-object bytes (SingleObjectSerde.encode); fastavro = "
                     "schemaless_writer alone on the same records, already dicts (its limit); encode_over_fastavro = "
                     "time ratio, best of 5 rounds each, interleaved; produce = pre-encoded records through "
                     "KafkaPublisher.publish_raw (idempotent, acks=all, lz4); publish = encode + produce through "
                     "KafkaPublisher.publish, its limit = encoding and producing one after the other at the rates "
                     "measured; consume = replay reader, decode included",
        }
    finally:
        admin.delete_topics([topic], operation_timeout=30)
        bb.close()


def _encode_against_fastavro(serde, sample, topic: str, rounds: int = 5) -> tuple[float, float]:
    """Seconds to encode ``sample`` through the serde, and through fastavro's ``schemaless_writer`` alone on the
    same records (made into Avro dicts beforehand, the schema parsed once: the best fastavro can do); the best of
    ``rounds`` interleaved rounds each, so a noisy neighbour hits both alike."""
    import io

    from fastavro import schemaless_writer

    schema = serde.catalog.get(sample[0].AVRO_NAME).parsed
    records = [ev.to_avro() for ev in sample]
    ours, theirs = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for ev in sample:
            serde.encode(ev, topic)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for record in records:
            buf = io.BytesIO()
            schemaless_writer(buf, schema, record)
            buf.getvalue()
        theirs.append(time.perf_counter() - t0)
    return min(ours), min(theirs)


def _only(registry, name):
    from streams.topics import TopicRegistry

    return TopicRegistry([registry.spec(name)], prefix=registry.prefix)

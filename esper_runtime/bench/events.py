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


def run(events: int = 300_000, encode_events: int = 100_000, rounds: int = 5) -> dict:
    """``events`` records produced pre-encoded and as many published typed, in ``rounds`` alternating rounds of
    each: the best round of each is reported (as for encoding, best of its rounds), every round's rate beside it."""
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
        m = len(payloads)
        per_round = max(1, events // rounds)
        produce_rates, publish_rates = [], []
        for _ in range(rounds):
            # a round of each, one after the other, so a busy moment of the machine (or of the broker, which
            # shares it) falls on both alike; each round ends when the broker has acknowledged all of it
            t0 = time.perf_counter()
            for i in range(per_round):
                pub.publish_raw(topic, payloads[i % m], keys[i % m])
            pub.flush(120)
            produce_rates.append(per_round / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for i in range(per_round):
                pub.publish(sample[i % m], topic=topic)
            pub.flush(120)
            publish_rates.append(per_round / (time.perf_counter() - t0))
        total = 2 * rounds * per_round

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
        produce_rate, publish_rate = max(produce_rates), max(publish_rates)
        publish_limit = 1 / (1 / (encode_events / encode_s) + 1 / produce_rate)
        return {
            "bench": "events",
            "encode_events_per_s": round(encode_events / encode_s),
            "fastavro_events_per_s": round(encode_events / fastavro_s),
            "encode_over_fastavro": round(encode_s / fastavro_s, 3),
            "produce_events_per_s": round(produce_rate),
            "publish_events_per_s": round(publish_rate),
            "publish_limit_events_per_s": round(publish_limit),
            "publish_over_limit": round(publish_rate / publish_limit, 3),
            "produce_rounds_events_per_s": [round(r) for r in produce_rates],
            "publish_rounds_events_per_s": [round(r) for r in publish_rates],
            "consume_events_per_s": round(consumed / consume_s),
            "events": rounds * per_round,
            "records_read": consumed,
            "rounds": rounds,
            "event_bytes": len(payloads[0]),
            "partitions": registry.spec(topic).partitions,
            "bootstrap": bb.bootstrap,
            "notes": "encode = typed event -> single-object bytes (SingleObjectSerde.encode); fastavro = "
                     "schemaless_writer alone on the same records, already dicts (its limit); encode_over_fastavro = "
                     "time ratio, best of 5 rounds each, interleaved; produce = pre-encoded records through "
                     "KafkaPublisher.publish_raw (idempotent, acks=all, lz4); publish = encode + produce through "
                     "KafkaPublisher.publish; produce and publish alternate in rounds, each round ending with the "
                     "broker's acknowledgement of all of it, the best round of each reported (every round in "
                     "*_rounds_events_per_s); publish's limit = encoding and producing one after the other at the "
                     "best rates measured; consume = replay reader, decode included, all records of the run",
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

"""The backbone against the real broker: infra, topics, dead letters, the schema-catalog topic, tail, bench."""

from __future__ import annotations

import copy
import gc
import io
import json
import os
import subprocess
import sys
import time
import uuid
import weakref

import pytest
from confluent_kafka import Producer
from fastavro import schemaless_writer

from esper_runtime.infra import LocalKafka
from streams import (Backbone, EnvelopeFactory, KafkaPublisher, NamedSchema, PublishError, SingleObjectSerde,
                     load_settings)
from streams.catalog import CatalogResolver, catalog_entry, publish_catalog
from streams.contracts import FieldReport
from streams.replay import KafkaSource, ReplayReader
from streams.serde import MAGIC
from streams.topics import ensure_topics

pytestmark = pytest.mark.integration


def _report(envs, i):
    return FieldReport(envelope=envs.next(f"blueprint/b{i % 3}"), blueprint_id=f"b{i % 3}", seed_id=f"0/{i}",
                       pre_metric=0.5, post_metric=0.5 + i / 100, outcome="FOSSILIZED", eval_metrics={"acc": 0.9})


def test_infra_up_is_idempotent(kafka_bootstrap):
    broker = LocalKafka(load_settings())
    if not broker.settings.uses_local_broker:
        pytest.skip("ESPER_KAFKA_BOOTSTRAP points at an external cluster")
    pid = broker.pid()
    status = broker.up()
    assert status.reachable and status.pid == pid  # a second `up` reuses the running broker


def test_topics_are_never_created_by_accident(kafka_bootstrap, kafka_admin):
    if not load_settings().uses_local_broker:
        pytest.skip("auto-creation is a property of the local broker's config")
    errors = []
    typo = f"typo-{uuid.uuid4().hex}"
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.timeout.ms": 3000})
    producer.produce(typo, b"x", on_delivery=lambda err, msg: errors.append(err))
    producer.flush(10)
    assert len(errors) == 1 and errors[0] is not None  # never delivered...
    assert typo not in kafka_admin.list_topics(timeout=10).topics  # ...and the broker did not create it


def test_ensure_topics_is_idempotent_and_applies_the_registry(kafka_admin, topic_registry):
    from confluent_kafka.admin import ConfigResource

    registry = topic_registry()
    assert ensure_topics(kafka_admin, registry) == []  # second call creates nothing
    meta = kafka_admin.list_topics(timeout=10).topics
    for spec in registry:
        assert len(meta[spec.name].partitions) == spec.partitions
    res = ConfigResource("topic", registry.schema_catalog)
    cfg = kafka_admin.describe_configs([res])[res].result()
    assert cfg["cleanup.policy"].value == "compact"


def test_undecodable_records_go_to_the_dead_letter_topic_and_the_consumer_keeps_going(
        topic_registry, kafka_bootstrap, catalog):
    registry = topic_registry()
    bb = Backbone(load_settings(kafka_bootstrap=kafka_bootstrap), registry=registry, catalog=catalog)
    topic = registry.for_event("esper.innovation.FieldReport")
    envs = EnvelopeFactory("run-dlq", "test")
    with bb.publisher() as pub:
        pub.publish(_report(envs, 0))
        pub.publish_raw(topic, b"\x00\x01 not avro at all", b"blueprint/b0", [("origin", b"fuzzer")])
        pub.publish_raw(topic, MAGIC + b"\xde\xad\xbe\xef" * 2 + b"\x02", b"blueprint/b1")  # unknown fingerprint
        pub.publish(_report(envs, 1))
    consumer = bb.consumer([topic], group_id=f"g-{uuid.uuid4().hex}", name="test-consumer")
    good = []
    for _ in range(40):
        good += consumer.poll(timeout=0.5)
        if len(good) == 2 and consumer.dead_lettered == 2:
            break
    consumer.close()
    with pytest.raises(PublishError):  # the dead-letter publisher the backbone made for it was closed with it
        consumer.deadletter.publisher.publish_raw(registry.deadletter, b"late", b"k")
    assert sorted(e.decoded.typed().seed_id for e in good) == ["0/0", "0/1"]  # two partitions: no order between them
    dead = list(ReplayReader(bb.source(), bb.serde).records([registry.deadletter]))
    bb.close()
    reasons = sorted(r.header("esper.dlq.reason").decode() for r in dead)
    assert reasons == ["bad-magic", "unknown-fingerprint"]
    fuzzed = next(r for r in dead if r.header("esper.dlq.reason") == b"bad-magic")
    assert fuzzed.value == b"\x00\x01 not avro at all"  # kept byte for byte
    assert fuzzed.header("origin") == b"fuzzer"  # original headers kept
    assert fuzzed.header("esper.dlq.source").decode().startswith(topic + "/")
    assert fuzzed.header("esper.dlq.consumer") == b"test-consumer"


def test_a_closed_publisher_lets_go_of_its_producer(topic_registry, kafka_bootstrap, catalog):
    registry = topic_registry()
    envs = EnvelopeFactory("run-close", "test")
    pub = KafkaPublisher(kafka_bootstrap, SingleObjectSerde(catalog), registry)
    pub.publish(_report(envs, 0))
    pub.close()  # flushed, then librdkafka's handle released
    assert list(pub.positions().values()) == [0]  # what it delivered before closing is still known
    with pytest.raises(PublishError, match="closed"):
        pub.publish(_report(envs, 1))
    pub.close()
    pub.flush()  # both do nothing now

    # a publisher nobody closed goes as soon as its last reference does, not when the garbage collector looks:
    # nothing it holds points back at it (its librdkafka threads would retry a stopped broker until then)
    other = KafkaPublisher(kafka_bootstrap, SingleObjectSerde(catalog), registry)
    other.publish(_report(envs, 2))
    other.flush()
    gone = weakref.ref(other)
    gc.disable()
    try:
        del other
        assert gone() is None
    finally:
        gc.enable()


def test_a_run_publisher_gathers_events_until_its_linger_or_a_flush(topic_registry, kafka_bootstrap, catalog):
    """A training run's publisher holds its events for ``run_linger_ms`` (one produce request instead of one an
    epoch); a flush, as at a checkpoint, delivers them at once."""
    registry = topic_registry()
    bb = Backbone(load_settings().model_copy(update={"run_linger_ms": 10_000}), registry=registry, catalog=catalog)
    topic = bb.resolve_topic("innovation.field_reports")
    source = KafkaSource(kafka_bootstrap)
    with bb.run_publisher() as pub:
        envs = EnvelopeFactory("run-linger", "test")
        for i in range(3):
            pub.publish(_report(envs, i))
        time.sleep(1.0)  # long enough for a publisher without the linger to deliver them
        held = sum(source.watermarks(topic, p)[1] for p in range(source.partitions(topic)))
        pub.flush()
        delivered = sum(source.watermarks(topic, p)[1] for p in range(source.partitions(topic)))
    source.close()
    bb.close()
    assert (held, delivered) == (0, 3)


def test_a_read_whose_records_never_come_says_so_instead_of_waiting_for_ever(topic_registry, kafka_bootstrap,
                                                                             catalog):
    """Bounds past what the partition holds (records deleted, a broker gone): after ``stall_seconds`` with nothing
    delivered, both ways of reading raise, naming the partition and the offset they waited for."""
    from streams.exceptions import TopicError
    from streams.replay import Bounds

    registry = topic_registry()
    bb = Backbone(load_settings(), registry=registry, catalog=catalog)
    topic = bb.resolve_topic("innovation.field_reports")
    with bb.publisher() as pub:
        envs = EnvelopeFactory("run-stall", "test")
        for i in range(3):
            pub.publish(_report(envs, i), key="one-key")
        pub.flush()
    bb.close()
    source = KafkaSource(kafka_bootstrap, stall_seconds=2)
    [(partition, end)] = [(p, source.watermarks(topic, p)[1]) for p in range(source.partitions(topic))
                          if source.watermarks(topic, p)[1]]
    assert end == 3
    got = []
    t0 = time.monotonic()
    with pytest.raises(TopicError, match=f"{topic}\\[{partition}\\].*below offset 8"):
        for rec in source.iter_partition(topic, partition, 0, 8):
            got.append(rec.offset)
    assert got == [0, 1, 2] and time.monotonic() - t0 < 60
    source.close()
    source = KafkaSource(kafka_bootstrap, stall_seconds=2)
    values = []
    with pytest.raises(TopicError, match="below offset 5"):
        for batch in source.values([Bounds(topic, partition, 1, 5)]):
            values.extend(batch)
    assert len(values) == 2
    source.close()


def test_a_consumer_group_resumes_after_its_committed_offset(topic_registry, kafka_bootstrap, catalog):
    registry = topic_registry()
    bb = Backbone(load_settings(kafka_bootstrap=kafka_bootstrap), registry=registry, catalog=catalog)
    topic = registry.for_event("esper.innovation.FieldReport")
    envs = EnvelopeFactory("run-g", "test")
    with bb.publisher() as pub:
        for i in range(6):
            pub.publish(_report(envs, i))
    group = f"g-{uuid.uuid4().hex}"

    def drain(expected):
        c = bb.consumer([topic], group_id=group)
        seen = []
        for _ in range(40):
            seen += c.poll(timeout=0.5)
            if len(seen) >= expected:
                break
        c.close()  # commits what was handled
        return seen

    assert len(drain(6)) == 6
    with bb.publisher() as pub:
        for i in range(6, 9):
            pub.publish(_report(envs, i))
    again = drain(3)
    bb.close()
    assert sorted(e.decoded.typed().seed_id for e in again) == ["0/6", "0/7", "0/8"]


def test_a_schema_unknown_locally_is_resolved_from_the_catalog_topic(topic_registry, kafka_bootstrap, catalog):
    registry = topic_registry()
    # A newer writer added a field; this process's schemas/ has never seen that version.
    newer_doc = copy.deepcopy(catalog.get("FieldReport").schema)
    newer_doc["fields"].append({"name": "region", "type": "string", "default": "eu"})
    newer = NamedSchema(newer_doc["name"], newer_doc, None)
    pub = KafkaPublisher(kafka_bootstrap, SingleObjectSerde(catalog), registry)
    publish_catalog(pub, catalog)
    pub.publish_raw(registry.schema_catalog, catalog_entry(newer), newer.fingerprint_hex)
    forged = json.loads(catalog_entry(newer))
    forged["fingerprint"] = "00" * 8
    pub.publish_raw(registry.schema_catalog, json.dumps(forged).encode(), "00" * 8)  # must not be trusted
    record = _report(EnvelopeFactory("r", "future"), 0).to_avro() | {"region": "us"}
    buf = io.BytesIO(MAGIC + newer.fingerprint)
    buf.seek(10)
    schemaless_writer(buf, newer.parsed, record)
    pub.publish_raw(registry.for_event(newer.name), buf.getvalue(), "blueprint/b0")
    pub.flush()

    src = KafkaSource(kafka_bootstrap)
    resolver = CatalogResolver(src, registry.schema_catalog)
    serde = SingleObjectSerde(catalog, resolver=resolver)
    [ev] = list(ReplayReader(src, serde).events([registry.for_event(newer.name)]))
    assert ev.error is None
    assert ev.decoded.typed().blueprint_id == "b0"  # read with today's schema: the new field is dropped
    assert bytes(8) not in resolver._known
    src.close()


def _cli(args, env_extra, timeout=120):
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-m", "esper_runtime.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_esper_tail_shows_decoded_events(topic_registry, kafka_bootstrap, catalog):
    registry = topic_registry()
    pub = KafkaPublisher(kafka_bootstrap, SingleObjectSerde(catalog), registry)
    envs = EnvelopeFactory("run-tail", "test")
    for i in range(3):
        pub.publish(_report(envs, i))
    pub.publish_raw(registry.for_event("esper.innovation.FieldReport"), b"junk bytes here!", "k")
    pub.flush()
    env = {"ESPER_KAFKA_BOOTSTRAP": kafka_bootstrap, "ESPER_TOPIC_PREFIX": registry.prefix}
    res = _cli(["tail", "innovation.field_reports", "--from-beginning", "--max", "4", "--json"], env)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    decoded = [line for line in lines if "event" in line]
    assert sorted(line["event"]["seed_id"] for line in decoded) == ["0/0", "0/1", "0/2"]
    assert all(line["type"] == "esper.innovation.FieldReport" for line in decoded)
    assert [line["error"] for line in lines if "error" in line] == ["bad-magic"]

    res = _cli(["tail", "innovation.field_reports", "--from-beginning", "--max", "1"], env)
    assert res.returncode == 0 and "FieldReport" in res.stdout and "run=run-tail" in res.stdout

    res = _cli(["tail", "no.such.topic", "--max", "1"], env)
    assert res.returncode == 1 and "unknown topic" in res.stderr


def test_bench_events_prints_its_figures_as_json(kafka_bootstrap):
    res = _cli(["bench", "events", "--json", "--events", "20000"], {"ESPER_KAFKA_BOOTSTRAP": kafka_bootstrap},
               timeout=300)
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    for name in ("encode_events_per_s", "fastavro_events_per_s", "produce_events_per_s", "publish_events_per_s",
                 "publish_limit_events_per_s", "consume_events_per_s"):
        assert result[name] > 0
    # each result beside its limit, as a ratio (time ratio for the encoder: ours over fastavro's)
    assert result["encode_over_fastavro"] == round(result["fastavro_events_per_s"] / result["encode_events_per_s"], 3) \
        or abs(result["encode_over_fastavro"] - result["fastavro_events_per_s"] / result["encode_events_per_s"]) < 0.01
    assert 0 < result["publish_over_limit"]
    # produce and publish alternate in rounds; the best round of each is the figure, every round is beside it
    assert len(result["publish_rounds_events_per_s"]) == len(result["produce_rounds_events_per_s"]) == result["rounds"]
    assert result["publish_events_per_s"] == max(result["publish_rounds_events_per_s"])
    assert result["produce_events_per_s"] == max(result["produce_rounds_events_per_s"])
    assert result["records_read"] == 2 * result["events"]


def test_confluent_wire_format_through_the_broker(topic_registry, kafka_bootstrap, catalog):
    registry = topic_registry()
    settings = load_settings(kafka_bootstrap=kafka_bootstrap, schema_registry_url=f"mock://{uuid.uuid4().hex}")
    bb = Backbone(settings, registry=registry, catalog=catalog)
    envs = EnvelopeFactory("run-cf", "test")
    sent = [_report(envs, i) for i in range(5)]
    with bb.publisher() as pub:
        for ev in sent:
            pub.publish(ev)
    got = list(bb.replay_reader().events([registry.for_event("esper.innovation.FieldReport")]))
    bb.close()
    assert all(e.record.value[0] == 0 for e in got)  # Confluent framing on the wire
    assert sorted((e.decoded.typed() for e in got), key=lambda e: e.seed_id) == sorted(sent, key=lambda e: e.seed_id)


def test_infra_status_cli_reports_a_running_broker(kafka_bootstrap):
    res = _cli(["infra", "status"], {"ESPER_KAFKA_BOOTSTRAP": kafka_bootstrap} if not load_settings().uses_local_broker else {})
    assert res.returncode == 0, res.stderr
    assert "up" in res.stderr

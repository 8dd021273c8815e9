"""The replay contract: log order, bounds by offset and by time, undecodable records surfaced. Both backends."""

import time

from streams import EnvelopeFactory
from streams.contracts import SeedLifecycleTransition, SeedState


def _publish(backend, n, originators=4, run="run-r"):
    envs = EnvelopeFactory(run, "test")
    topic = backend.topic("kasmina.lifecycle.transitions")
    for i in range(n):
        o = i % originators
        backend.publisher.publish(SeedLifecycleTransition(
            envelope=envs.next(f"seed/0/{o}"), layer_id=0, seed_id=o, from_state=SeedState.DORMANT,
            to_state=SeedState.GERMINATED, epoch=i), topic=topic)
    backend.publisher.flush()
    return topic


def test_replay_keeps_partition_order_and_is_deterministic(backend):
    topic = _publish(backend, 400)
    first = [(r.topic, r.partition, r.offset) for r in backend.make_reader().records([topic])]
    second = [(r.topic, r.partition, r.offset) for r in backend.make_reader().records([topic])]
    assert first == second and len(first) == 400
    last: dict[int, int] = {}
    for _, p, off in first:
        assert off > last.get(p, -1)
        last[p] = off


def test_a_reader_with_a_small_buffer_pauses_partitions_and_still_reads_everything_in_order(backend):
    """KafkaSource pauses a partition whose buffer is full while the merge waits on another, and asks librdkafka
    only for what is left of the partitions it is reading: neither may lose, repeat or reorder a record."""
    topic = _publish(backend, 300)
    other = backend.topic("control.kasmina.commands")
    for i in range(50):
        backend.publisher.publish_raw(other, b"raw %d" % i, b"seed/0/%d" % (i % 5))
    backend.publisher.flush()
    expected = [(r.topic, r.partition, r.offset) for r in backend.make_reader().records([topic, other])]
    small = [(r.topic, r.partition, r.offset) for r in backend.make_reader(buffer_records=3).records([topic, other])]
    assert small == expected and len(small) == 350
    bounded = list(backend.make_reader(buffer_records=3).records([topic], until_offset=7))
    assert len(bounded) == sum(min(7, n) for n in _partition_sizes(backend, topic).values())


def test_replay_stops_at_the_given_offset(backend):
    topic = _publish(backend, 90)
    reader = backend.make_reader()
    records = list(reader.records([topic], until_offset=5))
    parts = {r.partition for r in records}
    assert all(r.offset < 5 for r in records)
    assert len(records) == sum(min(5, n) for n in _partition_sizes(backend, topic).values())
    assert parts


def test_replay_by_time_window(backend):
    topic = _publish(backend, 20, run="early")
    time.sleep(0.05)
    cut = int(time.time() * 1000)
    time.sleep(0.05)
    _publish(backend, 30, run="late")
    reader = backend.make_reader()
    before = [ev.decoded.typed().envelope.run_id for ev in reader.events([topic], until_time_ms=cut)]
    after = [ev.decoded.typed().envelope.run_id for ev in backend.make_reader().events([topic], since_time_ms=cut)]
    assert before == ["early"] * 20
    assert after == ["late"] * 30


def test_undecodable_records_are_surfaced_not_dropped(backend):
    topic = _publish(backend, 3)
    backend.publisher.publish_raw(topic, b"garbage that is not avro", b"seed/0/0")
    backend.publisher.flush()
    events = list(backend.make_reader().events([topic]))
    assert len(events) == 4
    bad = [e for e in events if e.error is not None]
    assert len(bad) == 1 and bad[0].error.reason == "bad-magic" and bad[0].record.value == b"garbage that is not avro"


def _partition_sizes(backend, topic):
    sizes: dict[int, int] = {}
    for r in backend.make_reader().records([topic]):
        sizes[r.partition] = sizes.get(r.partition, 0) + 1
    return sizes


def test_one_reader_reads_a_topic_again_and_again(backend):
    """What the schema-catalog resolver does in a long-lived process: the same source re-reads a topic, after a
    full read and after one abandoned half-way."""
    topic = _publish(backend, 40)
    reader = backend.make_reader()
    first = list(reader.records([topic]))
    abandoned = reader.records([topic])
    next(abandoned)
    del abandoned
    again = list(reader.records([topic]))
    third = list(reader.records([topic]))
    assert len(first) == len(again) == len(third) == 40

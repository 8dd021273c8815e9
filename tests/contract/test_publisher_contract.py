"""The publisher contract, run against the in-memory twin and the real broker alike."""

import pytest

from streams import EncodeError, EnvelopeFactory, PublishError, TopicError
from streams.contracts import FieldReport, SeedLifecycleTransition, SeedState
from streams.samples import sample_event


def _transition(envs, layer, seed, epoch):
    return SeedLifecycleTransition(envelope=envs.next(f"seed/{layer}/{seed}"), layer_id=layer, seed_id=seed,
                                   from_state=SeedState.DORMANT, to_state=SeedState.GERMINATED, epoch=epoch)


def test_every_event_type_round_trips_through_its_home_topic(backend, catalog):
    sent = {}
    for schema in catalog.events:
        event = sample_event(schema, 11)
        backend.publisher.publish(event, topic=backend.registry.for_event(schema.name))
        sent[schema.name] = event
    backend.publisher.flush()
    got = {}
    for ev in backend.make_reader().events(backend.registry.names()):
        if ev.record.topic.endswith("esper.schemas"):
            continue
        assert ev.error is None, ev.error
        got[ev.decoded.name] = ev.decoded.typed()
        assert ev.record.topic == backend.registry.for_event(ev.decoded.name)
        assert ev.record.key == got[ev.decoded.name].envelope.originator_id.encode()
    assert got == sent


def test_one_originators_events_stay_in_order(backend):
    envs = EnvelopeFactory("run-order", "test")
    topic = backend.topic("kasmina.lifecycle.transitions")
    for epoch in range(200):
        for seed in range(5):
            backend.publisher.publish(_transition(envs, 0, seed, epoch), topic=topic)
    backend.publisher.flush()
    versions: dict[str, list[int]] = {}
    for ev in backend.make_reader().events([topic]):
        env = ev.decoded.typed().envelope
        versions.setdefault(env.originator_id, []).append(env.originator_version)
    assert len(versions) == 5
    for seq in versions.values():
        assert seq == list(range(1, 201))


def test_an_unknown_topic_or_a_foreign_event_is_refused_and_nothing_is_sent(backend):
    envs = EnvelopeFactory("run-x", "test")
    with pytest.raises(TopicError, match="unknown topic"):
        backend.publisher.publish(_transition(envs, 0, 0, 0), topic=backend.topic("kasmina.lifecycle.transitoins"))
    with pytest.raises(TopicError, match="may not be published"):
        backend.publisher.publish(_transition(envs, 0, 0, 0), topic=backend.topic("innovation.field_reports"))
    with pytest.raises(TopicError, match="unknown topic"):
        backend.publisher.publish_raw(backend.topic("no.such.topic"), b"x")
    backend.publisher.flush()
    assert list(backend.make_reader().records([backend.topic("innovation.field_reports"),
                                               backend.topic("kasmina.lifecycle.transitions")])) == []


def test_an_invalid_record_raises_before_anything_is_sent(backend):
    bad = FieldReport(envelope=EnvelopeFactory("r", "t").next("blueprint/b"), blueprint_id="b", seed_id="s",
                      pre_metric="not a number", post_metric=0.1, outcome="CULLED", eval_metrics={})
    with pytest.raises(EncodeError):
        backend.publisher.publish(bad)
    backend.publisher.flush()
    assert list(backend.make_reader().records([backend.topic("innovation.field_reports")])) == []


def test_published_count_tracks_accepted_records(backend):
    envs = EnvelopeFactory("run-c", "test")
    before = backend.publisher.published
    for i in range(7):
        backend.publisher.publish(_transition(envs, 1, i, 0), topic=backend.topic("kasmina.lifecycle.transitions"))
    backend.publisher.flush()
    assert backend.publisher.published - before == 7
    assert len(list(backend.make_reader().records([backend.topic("kasmina.lifecycle.transitions")]))) == 7


@pytest.mark.integration
def test_the_broker_refuses_a_record_over_its_size_limit(topic_registry, kafka_bootstrap, catalog):
    from streams import KafkaPublisher, SingleObjectSerde

    registry = topic_registry()
    pub = KafkaPublisher(kafka_bootstrap, SingleObjectSerde(catalog), registry)
    with pytest.raises(PublishError, match="(?i)too large"):
        pub.publish_raw(registry.deadletter, b"x" * 5_000_000)
        pub.flush(30)


def test_a_raw_record_goes_to_the_partition_it_names_and_a_missing_one_is_refused(backend):
    topic = backend.topic("state.kasmina.seeds")
    partitions = backend.registry.spec(topic).partitions
    for p in range(partitions):
        backend.publisher.publish_raw(topic, f"v{p}".encode(), b"the-same-key", partition=p)
    with pytest.raises(PublishError, match="no partition"):
        backend.publisher.publish_raw(topic, b"x", b"k", partition=partitions)
    backend.publisher.flush()
    got = {r.value: r.partition for r in backend.make_reader().records([topic])}
    assert got == {f"v{p}".encode(): p for p in range(partitions)}  # one key, every partition: as named

"""The run fold split in two (``views.folds.fold_runs(split=True)``): the records the views only count read in a
forked process, unordered (``LogSource.values``), the rest folded in log order here. Both backends: the split must
give exactly what one ordered pass gives, and fall back to one ordered pass wherever it might not."""

from __future__ import annotations

import dataclasses
import os
import time

import pytest

from streams import EnvelopeFactory
from streams.contracts import SeedLifecycleTransition, SeedState, SeedTelemetry
from streams.synthetic import synthetic_run
from views import folds


class _LogBackbone:
    """What ``fold_runs`` uses of a Backbone, over a contract backend."""

    def __init__(self, backend):
        self.backend = backend
        self.serde = backend.make_reader().serde

    def resolve_topic(self, name: str) -> str:
        return self.backend.topic(name)

    def replay_reader(self):
        return self.backend.make_reader()

    def source(self):
        return self.backend.make_reader().source


def _publish_runs(backend, runs=("run-a", "run-b"), epochs=30):
    for i, run_id in enumerate(runs):
        for topic, key, ev in synthetic_run(run_id, layers=2, seeds_per_layer=4, epochs=epochs, seed=i):
            backend.publisher.publish(ev, topic=backend.topic(topic), key=key)
    backend.publisher.flush()
    return list(runs)


def _state(view) -> dict:
    return dataclasses.asdict(view)


def _both(bb, run_ids, **bounds):
    ordered, bad_ordered = folds.fold_runs(bb, run_ids, split=False, **bounds)
    split, bad_split = folds.fold_runs(bb, run_ids, split=True, **bounds)
    return ({r: _state(v) for r, v in ordered.items()}, bad_ordered), ({r: _state(v) for r, v in split.items()}, bad_split)


@pytest.fixture
def passes(monkeypatch):
    """How many ordered passes each fold made: 1 when the split's counts were used, 2 when it fell back."""
    calls = []
    real = folds._fold_ordered

    def counting(reader, spans, *args):
        calls.append(len(spans))
        return real(reader, spans, *args)

    monkeypatch.setattr(folds, "_fold_ordered", counting)
    return calls


def test_the_split_fold_is_the_ordered_fold(backend, passes):
    bb = _LogBackbone(backend)
    run_ids = _publish_runs(backend) + ["run-absent"]
    ordered, split = _both(bb, run_ids)
    assert split == ordered
    assert ordered[0]["run-a"]["events"] > 100 and ordered[0]["run-a"]["story"]
    assert passes == [passes[0], passes[1]] and passes[1] < passes[0]  # the split's one pass read fewer partitions


def test_values_reads_every_record_once_within_the_bounds(backend):
    _publish_runs(backend, runs=("run-v",), epochs=20)
    reader = backend.make_reader()
    topics = [backend.topic(t) for t in folds.COUNTED_TOPICS]
    for bounds in ({}, {"until_offset": 11}):
        expected = sorted(r.value for r in reader.records(topics, **bounds))
        got = [v for batch in backend.make_reader().source.values(reader.bounds(topics, **bounds)) for v in batch]
        assert sorted(got) == expected and len(expected) > 20


def test_repeats_and_undecodable_records_on_counted_topics_count_as_in_one_pass(backend, passes):
    bb = _LogBackbone(backend)
    run_ids = _publish_runs(backend, runs=("run-r",))
    telemetry = backend.topic("kasmina.telemetry.seeds")
    again = list(backend.make_reader().records([telemetry]))[:7]
    for rec in again:  # a producer's retry: the same event twice
        backend.publisher.publish_raw(telemetry, rec.value, rec.key)
    backend.publisher.publish_raw(telemetry, b"not avro at all", b"layer/0")
    backend.publisher.flush()
    ordered, split = _both(bb, run_ids)
    assert split == ordered and ordered[1] == 1 and ordered[0]["run-r"]["duplicates"] == 7
    assert len(passes) == 2  # no fallback


def _forged_telemetry(event_id: str, run_id: str) -> SeedTelemetry:
    env = EnvelopeFactory(run_id, "forger").next("layer/0")
    return SeedTelemetry(envelope=dataclasses.replace(env, event_id=event_id), epoch=0, layer_id=0, layer_name="l0",
                         seeds=[])


def test_an_event_id_on_both_sides_falls_back_to_one_ordered_pass(backend, passes):
    """Which of two records with one event id is counted depends on which came first: only the ordered pass
    knows, so the split is dropped."""
    bb = _LogBackbone(backend)
    run_ids = _publish_runs(backend, runs=("run-c",))
    transitions = backend.make_reader().events([backend.topic("kasmina.lifecycle.transitions")])
    taken = next(item.decoded.typed() for item in transitions).envelope.event_id
    backend.publisher.publish(_forged_telemetry(taken, "run-c"), topic=backend.topic("kasmina.telemetry.seeds"),
                              key="layer/0")
    backend.publisher.flush()
    ordered, split = _both(bb, run_ids)
    assert split == ordered and ordered[0]["run-c"]["duplicates"] == 1
    assert len(passes) == 3  # ordered; split's pass, then the pass it fell back to


def test_an_applied_event_on_a_counted_topic_falls_back(backend, passes):
    """A seed transition where only commands belong: one ordered pass applies it, so the split may not count it."""
    bb = _LogBackbone(backend)
    run_ids = _publish_runs(backend, runs=("run-m",))
    stray = SeedLifecycleTransition(envelope=EnvelopeFactory("run-m", "stray").next("seed/1/3"), layer_id=1,
                                    seed_id=3, from_state=SeedState.DORMANT, to_state=SeedState.GERMINATED, epoch=2)
    backend.publisher.publish_raw(backend.topic("control.kasmina.commands"), bb.serde.encode(stray), b"seed/1/3")
    backend.publisher.flush()
    ordered, split = _both(bb, run_ids)
    assert split == ordered and ordered[0]["run-m"]["seed_states"]["seed/1/3"] and len(passes) == 3


def test_a_writer_only_the_parents_resolver_knows_falls_back(backend, passes, catalog):
    """The child reads without the serde's resolver (it reads through the parent's consumer): a record whose
    writer only that resolver knows is left to the ordered pass, which counts it."""
    bb = _LogBackbone(backend)
    run_ids = _publish_runs(backend, runs=("run-u",))
    fake = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    telemetry = catalog.get(SeedTelemetry.AVRO_NAME)
    bb.serde.resolver = lambda fp: telemetry if fp == fake else None
    data = bb.serde.encode(_forged_telemetry("unseen-id", "run-u"))
    backend.publisher.publish_raw(backend.topic("kasmina.telemetry.seeds"), data[:2] + fake + data[10:], b"layer/0")
    backend.publisher.flush()
    ordered, split = _both(bb, run_ids)
    assert split == ordered and "unseen-id" in ordered[0]["run-u"]["seen"] and len(passes) == 3


def test_a_child_that_dies_without_an_answer_falls_back(backend, passes, monkeypatch):
    bb = _LogBackbone(backend)
    run_ids = _publish_runs(backend, runs=("run-d",))
    monkeypatch.setattr(folds, "_count", lambda *args: os._exit(3))
    ordered, split = _both(bb, run_ids)
    assert split == ordered and len(passes) == 3


def test_the_split_keeps_the_bounds(backend):
    bb = _LogBackbone(backend)
    run_ids = _publish_runs(backend, runs=("run-b1", "run-b2"))
    ordered, split = _both(bb, run_ids, until_offset=40)
    assert split == ordered and 0 < ordered[0]["run-b1"]["events"] < 200


def test_a_fold_that_fails_here_stops_its_child(backend, monkeypatch):
    """An error in the ordered half (a broker gone, say) is raised, and the child counting the other half is not
    left behind waiting to be read."""
    bb = _LogBackbone(backend)
    run_ids = _publish_runs(backend, runs=("run-f",))
    started = []
    real_init = folds._Counter.__init__

    def remember(self, *args):
        real_init(self, *args)
        started.append(self._process)

    def broken(*args):
        raise RuntimeError("the ordered half failed")

    monkeypatch.setattr(folds._Counter, "__init__", remember)
    monkeypatch.setattr(folds, "_count", lambda *args: time.sleep(60))  # a child still reading
    monkeypatch.setattr(folds, "_fold_ordered", broken)
    with pytest.raises(RuntimeError, match="ordered half"):
        folds.fold_runs(bb, run_ids, split=True)
    assert len(started) == 1 and not started[0].is_alive()

"""A local KRaft cluster of three nodes (``esper infra up --brokers 3``) and the faults it must survive: topics
replicated three times with two in sync; a node killed (SIGKILL) while events flow loses none of them and the
cluster heals when it returns; two of three lost makes producers fail loudly, never silently, and it recovers when
they come back. Its own ports and home: the session's broker is not touched."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from esper_runtime.infra import LocalKafka
from streams import Backbone, EnvelopeFactory, load_settings
from streams.contracts import FieldReport
from streams.exceptions import PublishError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

TOPIC = "innovation.field_reports"


def _free_block(n: int, start: int = 19500) -> int:
    """The first port p (in steps of 10) with p .. p+n-1 all free on 127.0.0.1."""
    for base in range(start, start + 1000, 10):
        ok = True
        for port in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free block of ports")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = _free_block(6)
    settings = load_settings(home=tmp_path_factory.mktemp("cluster"), kafka_port=base, kafka_controller_port=base + 1,
                             kafka_brokers=3)
    kafka = LocalKafka(settings)
    kafka.up(timeout=180)
    bb = Backbone(settings)
    bb.ensure_topics()
    try:
        yield kafka, bb
    finally:
        bb.close()
        kafka.down()


def _reports(envs: EnvelopeFactory, n: int) -> list[FieldReport]:
    return [FieldReport(envelope=envs.next(f"blueprint/b{i % 5}"), blueprint_id=f"b{i % 5}", seed_id=f"seed/0/{i}",
                        pre_metric=0.5, post_metric=0.6, outcome="FOSSILIZED", eval_metrics={"acc": 0.9})
            for i in range(n)]


def _on_log(bb: Backbone) -> list[str]:
    return [e.decoded.typed().envelope.event_id for e in bb.replay_reader().events([bb.resolve_topic(TOPIC)])
            if e.error is None]


def _wait_healed(kafka: LocalKafka, timeout: float = 120) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            live, _, under = kafka.cluster(timeout=5)
            if live == {1, 2, 3} and under == 0:
                return time.monotonic() - t0
        except Exception:  # noqa: BLE001 - mid-election
            pass
        time.sleep(1)
    raise AssertionError(f"the cluster did not heal in {timeout:.0f}s: {kafka.status()}")


def test_topics_are_replicated_three_times_with_two_in_sync(cluster):
    from confluent_kafka.admin import ConfigResource

    kafka, bb = cluster
    st = kafka.status()
    assert st.reachable and [n.in_cluster for n in st.nodes] == [True, True, True] and st.controller in {1, 2, 3}
    topics = bb.admin().list_topics(timeout=10).topics
    for name in bb.registry.names():
        assert all(len(p.replicas) == 3 for p in topics[name].partitions.values()), name
    admin = bb.admin()
    [future] = admin.describe_configs([ConfigResource("topic", bb.resolve_topic(TOPIC))]).values()
    assert future.result()["min.insync.replicas"].value == "2"
    assert st.under_replicated == 0


def test_a_node_killed_while_events_flow_loses_none(cluster):
    kafka, bb = cluster
    topic = bb.resolve_topic(TOPIC)
    before = set(_on_log(bb))
    events = _reports(EnvelopeFactory("cluster-run", "test"), 3000)
    published: list[str] = []
    errors: list[BaseException] = []

    def produce():
        try:
            with bb.publisher() as pub:
                for i in range(0, len(events), 100):
                    for ev in events[i:i + 100]:
                        pub.publish(ev, topic=topic, key=ev.blueprint_id)
                    pub.flush()  # raises on any record not acknowledged by two replicas
                    published.extend(ev.envelope.event_id for ev in events[i:i + 100])
                    time.sleep(0.01)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    leader = bb.admin().list_topics(timeout=10).topics[topic].partitions[0].leader
    thread = threading.Thread(target=produce)
    thread.start()
    while len(published) < 600 and thread.is_alive():
        time.sleep(0.05)
    assert kafka.kill_node(leader)  # SIGKILL: a crash, mid-stream, of the partition's leader
    thread.join(timeout=300)
    assert not errors, errors
    assert len(published) == len(events)  # every flush came back acknowledged
    kafka.start_node(leader)
    healed = _wait_healed(kafka)
    got = [i for i in _on_log(bb) if i not in before]
    assert len(got) == len(events) and set(got) == set(published)  # nothing lost, nothing twice (idempotence)
    print(f"node {leader} killed at {600}+ of {len(events)} events; healed {healed:.1f} s after its restart")


def test_two_of_three_lost_fails_loudly_and_recovers(cluster):
    kafka, bb = cluster
    topic = bb.resolve_topic(TOPIC)
    envs = EnvelopeFactory("cluster-outage", "test")
    kafka.kill_node(2)
    kafka.kill_node(3)
    t0 = time.monotonic()
    pub = bb.publisher(**{"message.timeout.ms": 8000})
    lost = _reports(envs, 20)
    for ev in lost:
        pub.publish(ev, topic=topic, key=ev.blueprint_id)
    with pytest.raises(PublishError):  # one node cannot make two in-sync replicas: an error, not a silent drop
        pub.flush()
    assert time.monotonic() - t0 < 60
    kafka.up(timeout=180)  # starts the two missing nodes, waits for all three
    _wait_healed(kafka)
    after = _reports(envs, 20)
    with bb.publisher() as pub:
        for ev in after:
            pub.publish(ev, topic=topic, key=ev.blueprint_id)
        pub.flush()
    on_log = set(_on_log(bb))
    assert {ev.envelope.event_id for ev in after} <= on_log  # acknowledged after recovery: all there



CFG = {
    "kasmina": {"chunk_size": 8, "exclude": ["4"], "stats_every": 1, "reconstruction_steps": 3, "graft_steps": 4,
                "stabilize_steps": 2, "evaluate_steps": 2, "embargo_epochs": 2},
    "tamiyo": {"warmup_epochs": 1, "patience": 1, "min_delta": 0.5, "max_germinations": 6, "fine_tune_epochs": 1,
               "accept_tolerance": 1.0, "min_improvement": -1.0},
    "tolaria": {"epochs": 40, "lr": 3e-3, "batch_size": 128},
}


def test_training_goes_on_through_a_node_killed_mid_run(cluster, tmp_path):
    """A growing run publishes to the cluster, with the processors (``esper processors``) materializing beside it;
    a node is SIGKILLed at epoch 8 and restarted at epoch 20: training goes on, every event the broker acknowledged
    is on the log exactly once, and the processors' state equals the replay (``esper replay --verify``'s check)."""
    import os
    import uuid

    from esper_runtime.config import EsperConfig
    from esper_runtime.kasmina import wrap
    from esper_runtime.tamiyo import TamiyoController
    from esper_runtime.tolaria import TolariaTrainer
    from streams.topics import TOPICS
    from views.folds import fold_run
    from views.live import verify

    from tests.unit.esper_runtime.helpers import host, make_library, spirals_small

    from .test_processors import ProcessorsProcess

    kafka, _ = cluster
    prefix = f"chaos-{uuid.uuid4().hex[:6]}."
    home = tmp_path / "home"
    env = dict(os.environ, ESPER_KAFKA_BOOTSTRAP=kafka.bootstrap, ESPER_HOME=str(home), ESPER_TOPIC_PREFIX=prefix,
               ESPER_PROCESSORS_PORT=str(_free_block(1, 23000)))
    bb = Backbone(load_settings(kafka_bootstrap=kafka.bootstrap, topic_prefix=prefix, home=home),
                  TOPICS.with_prefix(prefix))
    bb.ensure_topics()
    procs = ProcessorsProcess(env, tmp_path / "processors.log")
    procs.start()
    try:
        store, view = make_library(tmp_path)
        config = EsperConfig.model_validate(CFG)
        run_id = f"chaos-{uuid.uuid4().hex[:6]}"
        pub = bb.publisher()
        model = wrap(host(), config.kasmina, artifacts=store, publisher=pub, run_id=run_id)
        tamiyo = TamiyoController(model, config.tamiyo, urza=view, publisher=pub, run_id=run_id)
        faults = []

        def on_epoch(record):
            if record["epoch"] == 8:
                faults.append(("killed", kafka.kill_node(2)))  # SIGKILL, mid-run
            elif record["epoch"] == 20:
                faults.append(("restarted", kafka.start_node(2)))

        trainer = TolariaTrainer(model, tamiyo, config.tolaria, *spirals_small(), publisher=pub, run_id=run_id,
                                 on_epoch=on_epoch)
        _, history = trainer.train()
        pub.flush()  # raises if any record was not acknowledged by two replicas
        assert [f[0] for f in faults] == ["killed", "restarted"] and faults[0][1] is True
        assert len(history.epochs) == CFG["tolaria"]["epochs"]  # training went on through the fault
        acknowledged = pub.published_by_run[run_id]
        fold, bad = fold_run(bb, run_id)
        assert bad == 0 and fold.events == acknowledged > 0 and fold.duplicates == 0  # all there, once each
        assert fold.germinated >= 1
        assert verify(bb, fold, timeout=120) == []  # the processors kept materializing through it
        _wait_healed(kafka)
    finally:
        if procs.proc.poll() is None:
            procs.stop()
        bb.close()

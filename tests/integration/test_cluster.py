"""A local KRaft cluster of three nodes (``esper infra up --brokers 3``) and the faults it must survive: topics
replicated three times with two in sync; a node killed (SIGKILL) while events flow loses none of them and the
cluster heals when it returns; two of three lost makes producers fail loudly, never silently, and it recovers when
they come back. Its own ports and home: the session's broker is not touched."""

from __future__ import annotations

import contextlib
import socket

import pytest

from esper_runtime.infra import LocalKafka
from esper_runtime.infra.chaos import CHAOS_TOPIC, node_kill, produce_latency, quorum_loss, wait_healed, worker_kill
from streams import Backbone, PublishError, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

TOPIC = CHAOS_TOPIC


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


def test_produce_latency_is_measured_with_three_replicas_and_one(cluster):
    _, bb = cluster
    rf3, rf1 = produce_latency(bb, records=200, replication=3), produce_latency(bb, records=200, replication=1)
    assert 0 < rf3["p50_ms"] <= rf3["p99_ms"] and 0 < rf1["p50_ms"] <= rf1["p99_ms"]
    print(rf3, rf1)


def test_a_node_killed_while_events_flow_loses_none(cluster):
    kafka, bb = cluster
    r = node_kill(kafka, bb, events=3000)  # the leader SIGKILLed after 20 %, back after 60 %
    assert r["acknowledged"] == r["on_log"] == r["distinct_on_log"] == 3000, r  # every flush acknowledged; all there
    assert r["lost"] == 0 and r["duplicates"] == 0 and r["ok"], r  # nothing lost, nothing twice (idempotence)
    print(r)


def test_a_processors_worker_killed_leaves_state_equal_to_the_replay(cluster):
    """``esper chaos``'s worker_kill, small: two workers on the cluster, one SIGKILLed at two random points."""
    kafka, bb = cluster
    base = _free_block(2, start=19700)
    result = worker_kill(bb, kills=2, seed=3, ports=(base, base + 1), echo=print)
    print(result)
    assert result["ok"] and result["runs_wrong_at_end"] == 0 and result["events"] > 0, str(result)


def test_two_of_three_lost_fails_loudly_and_recovers(cluster):
    kafka, bb = cluster
    r = quorum_loss(kafka, bb)
    assert r["publish_failed"] and r["failed_after_s"] < 60, r  # one node cannot make two in-sync replicas: loud
    assert r["on_log_after_recovery"] == r["published_after_recovery"] == 20 and r["ok"], r
    print(r)


CFG = {
    "kasmina": {"chunk_size": 8, "exclude": ["4"], "stats_every": 1, "reconstruction_steps": 3, "graft_steps": 4,
                "stabilize_steps": 2, "evaluate_steps": 2, "embargo_epochs": 2},
    "tamiyo": {"warmup_epochs": 1, "patience": 1, "min_delta": 0.5, "max_germinations": 6, "fine_tune_epochs": 1,
               "accept_tolerance": 1.0, "min_improvement": -1.0},
    "tolaria": {"epochs": 40, "lr": 3e-3, "batch_size": 128},
}


def _wait_started(procs, bb, timeout: float = 180) -> None:
    """Until the processors' faust app is a stable member of its consumer group: its start (topics declared,
    partitions assigned) is over. A node killed while it starts makes it exit instead (noted on #16's stop)."""
    import time

    from confluent_kafka import ConsumerGroupState

    admin = bb.admin()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert procs.proc.poll() is None, procs.log.read_text(errors="replace")[-3000:]
        status = procs.status()
        if status:
            group = admin.describe_consumer_groups([status["app_id"]], request_timeout=10)[status["app_id"]].result()
            if group.state == ConsumerGroupState.STABLE and group.members:
                return
        time.sleep(0.5)
    raise AssertionError(f"the processors did not join their consumer group within {timeout:.0f} s")


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
    pub = None
    try:
        _wait_started(procs, bb)  # the fault is to come mid-run, not in the processors' start
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
        diffs = verify(bb, fold, timeout=120)
        log_tail = (tmp_path / "processors.log").read_text(errors="replace")[-4000:]
        assert procs.proc.poll() is None, f"the processors exited ({procs.proc.returncode}):\n{log_tail}"
        assert diffs == [], f"{diffs[:4]}\nprocessors' log:\n{log_tail}"  # they kept materializing through it
        wait_healed(kafka)
    finally:
        if procs.proc.poll() is None:
            procs.stop()
        if pub is not None:  # its librdkafka handle would retry the cluster, gone after this module, until collected
            with contextlib.suppress(PublishError):  # the test has failed already if this flush fails
                pub.close()
        bb.close()

"""Faults on a local KRaft cluster, each run as a scenario that says what it did and what it measured.

What ``esper chaos`` runs at length and ``tests/integration/test_cluster.py`` runs small:

- ``node_kill``: events published in acknowledged batches while the leader of the topic's first partition is
  SIGKILLed part-way and restarted later: every batch must be acknowledged, every event on the log exactly once, and
  the cluster whole again (all nodes in, nothing under-replicated) soon after the restart.
- ``quorum_loss``: two of three nodes SIGKILLed: a publish cannot reach two in-sync replicas, so it must fail with
  a ``PublishError`` (not vanish); with the nodes back, publishing must work again.
- ``worker_kill``: two processors' workers of one group materialize seed state while runs flow; at each of
  ``kills`` random points one is SIGKILLed (no clean leave) and started again once the survivor has taken its
  partitions over; after every kill the run's state on ``state.kasmina.seeds`` must equal a replay of the run's
  events, and at the end every run's must. Reports how long each takeover took.
"""

from __future__ import annotations

import random
import threading
import time
import uuid

from esper_runtime.infra.local_kafka import LocalKafka
from streams import Backbone, EnvelopeFactory
from streams.contracts import FieldReport
from streams.exceptions import EsperError, PublishError

__all__ = ["node_kill", "quorum_loss", "produce_latency", "worker_kill", "run_cluster_scenarios", "wait_healed",
           "CHAOS_TOPIC"]

CHAOS_TOPIC = "innovation.field_reports"


def _reports(envs: EnvelopeFactory, n: int) -> list[FieldReport]:
    return [FieldReport(envelope=envs.next(f"blueprint/b{i % 5}"), blueprint_id=f"b{i % 5}", seed_id=f"seed/0/{i}",
                        pre_metric=0.5, post_metric=0.6, outcome="FOSSILIZED", eval_metrics={"acc": 0.9})
            for i in range(n)]


def _on_log(bb: Backbone, run_id: str) -> list[str]:
    """Event ids of ``run_id``'s events on the chaos topic, in log order (duplicates kept)."""
    out = []
    for e in bb.replay_reader().events([bb.resolve_topic(CHAOS_TOPIC)]):
        if e.error is None:
            env = e.decoded.record["envelope"]
            if env["run_id"] == run_id:
                out.append(env["event_id"])
    return out


def wait_healed(kafka: LocalKafka, timeout: float = 120.0) -> float:
    """Seconds until every node is in the cluster and no partition is under-replicated."""
    want = {n.node_id for n in kafka.nodes}
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            live, _, under = kafka.cluster(timeout=5)
            if live == want and under == 0:
                return round(time.monotonic() - t0, 2)
        except Exception:  # noqa: BLE001 - mid-election: ask again
            pass
        time.sleep(0.5)
    raise EsperError(f"the cluster did not heal in {timeout:.0f} s: {kafka.status()}")


def node_kill(kafka: LocalKafka, bb: Backbone, events: int = 3000, batch: int = 100, kill_at: float = 0.2,
              restart_at: float = 0.6) -> dict:
    """Publish ``events`` in acknowledged batches; SIGKILL the partition leader after ``kill_at`` of them, restart it
    after ``restart_at``. Raises if a batch is not acknowledged; reports what reached the log."""
    topic = bb.resolve_topic(CHAOS_TOPIC)
    run_id = f"chaos-{uuid.uuid4().hex[:8]}"
    reports = _reports(EnvelopeFactory(run_id, "chaos"), events)
    admin = bb.admin()
    victim = admin.list_topics(timeout=10).topics[topic].partitions[0].leader
    acknowledged: list[str] = []
    marks: dict[str, float] = {}
    t0 = time.monotonic()
    done = threading.Event()
    acked_at: list[float] = [t0]  # when each batch was acknowledged: the longest gap is the failover stall

    def faults():  # beside the publisher, so the kill lands while records are in flight
        while not done.is_set() and len(acknowledged) < kill_at * events:
            time.sleep(0.005)
        if done.is_set():
            return
        kafka.kill_node(victim)
        marks["killed"] = time.monotonic() - t0
        while not done.is_set() and len(acknowledged) < restart_at * events:
            time.sleep(0.005)
        kafka.start_node(victim)
        marks["restarted"] = time.monotonic() - t0

    killer = threading.Thread(target=faults, daemon=True)
    killer.start()
    try:
        with bb.publisher() as pub:
            for i in range(0, events, batch):
                chunk = reports[i:i + batch]
                for ev in chunk:
                    pub.publish(ev, topic=topic, key=ev.blueprint_id)
                pub.flush()  # raises PublishError if a record did not reach two in-sync replicas
                acknowledged.extend(ev.envelope.event_id for ev in chunk)
                acked_at.append(time.monotonic())
    finally:
        done.set()
        killer.join()
    publish_s = time.monotonic() - t0
    if "killed" not in marks:
        raise EsperError("node_kill: the publishing ended before the kill point; publish more events")
    healed_s = wait_healed(kafka)
    on_log = _on_log(bb, run_id)
    return {"scenario": "node_kill", "node_killed": victim, "events": events,
            "acknowledged": len(acknowledged), "on_log": len(on_log), "distinct_on_log": len(set(on_log)),
            "lost": len(set(acknowledged) - set(on_log)), "duplicates": len(on_log) - len(set(on_log)),
            "killed_at_s": round(marks["killed"], 2), "restarted_at_s": round(marks["restarted"], 2),
            "publish_events_per_s": round(events / publish_s), "healed_after_restart_s": healed_s,
            "longest_stall_s": round(max(b - a for a, b in zip(acked_at, acked_at[1:])), 2),
            "ok": len(acknowledged) == events and set(on_log) == set(acknowledged) and len(on_log) == events}


def quorum_loss(kafka: LocalKafka, bb: Backbone, events: int = 20, message_timeout_ms: int = 8000) -> dict:
    """Two of three nodes SIGKILLed, ``events`` published: the flush must fail loudly; the nodes restarted, the
    same number published again must be acknowledged and on the log."""
    if len(kafka.nodes) < 3:
        raise EsperError("quorum_loss needs a cluster of three nodes (esper infra up --brokers 3)")
    topic = bb.resolve_topic(CHAOS_TOPIC)
    run_id = f"chaos-{uuid.uuid4().hex[:8]}"
    envs = EnvelopeFactory(run_id, "chaos")
    victims = [n.node_id for n in kafka.nodes[1:3]]
    for node_id in victims:
        kafka.kill_node(node_id)
    t0 = time.monotonic()
    pub = bb.publisher(**{"message.timeout.ms": message_timeout_ms})
    for ev in _reports(envs, events):
        pub.publish(ev, topic=topic, key=ev.blueprint_id)
    error = None
    try:
        pub.flush()
    except PublishError as exc:
        error = str(exc)
    failed_after_s = round(time.monotonic() - t0, 2)
    t1 = time.monotonic()
    kafka.up(timeout=180)
    healed_s = wait_healed(kafka)
    after = _reports(envs, events)
    with bb.publisher() as pub2:
        for ev in after:
            pub2.publish(ev, topic=topic, key=ev.blueprint_id)
        pub2.flush()
    recovered_s = round(time.monotonic() - t1, 2)
    on_log = set(_on_log(bb, run_id))
    after_ids = {ev.envelope.event_id for ev in after}
    return {"scenario": "quorum_loss", "nodes_killed": victims, "publish_failed": error is not None,
            "error": (error or "")[:300], "failed_after_s": failed_after_s, "healed_s": healed_s,
            "recovered_s": recovered_s, "published_after_recovery": len(after_ids),
            "on_log_after_recovery": len(after_ids & on_log),
            "ok": error is not None and after_ids <= on_log}


def produce_latency(bb: Backbone, records: int = 2000, replication: int = 3) -> dict:
    """Produce-to-acknowledgement latency of single records (acks=all, idempotent, one in flight at a time, as a
    trainer's boundary events are) on a fresh topic with ``replication`` replicas: p50 and p99 in ms."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import NewTopic

    admin = bb.admin()
    topic = f"{bb.registry.prefix}chaos.latency.rf{replication}.{uuid.uuid4().hex[:6]}"
    config = {"min.insync.replicas": str(2 if replication >= 3 else 1)}
    admin.create_topics([NewTopic(topic, 1, replication, config=config)])[topic].result()
    producer = Producer({"bootstrap.servers": bb.bootstrap, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 0})
    latencies = []
    try:
        for i in range(records + 50):  # the first 50 warm the connection up and are not counted
            t0 = time.perf_counter()
            producer.produce(topic, value=b"x" * 200, key=str(i).encode())
            producer.flush(30)
            if i >= 50:
                latencies.append((time.perf_counter() - t0) * 1000)
    finally:
        admin.delete_topics([topic])
    latencies.sort()
    return {"replication": replication, "records": records, "p50_ms": round(latencies[len(latencies) // 2], 2),
            "p99_ms": round(latencies[int(0.99 * len(latencies))], 2)}


def _published(bb: Backbone, triples) -> list:
    events = []
    with bb.publisher() as pub:
        for topic, key, ev in triples:
            pub.publish(ev, topic=bb.resolve_topic(topic), key=key)
            events.append(ev)
    return events


def _seed_states(bb: Backbone, runs: list[str]) -> dict[str, dict]:
    from streams.state import read_state_topic

    seeds = read_state_topic(bb, "state.kasmina.seeds")
    return {run: {v["seed"]: v for v in seeds.values() if v["run_id"] == run} for run in runs}


def _replayed(run: str, events: list) -> dict:
    from views.run_view import RunView

    view = RunView(run)
    for ev in events:
        view.apply(ev)
    return view.seed_states


def worker_kill(bb: Backbone, kills: int = 20, seed: int = 0, takeover_timeout: float = 90.0,
                ports: tuple[int, int] | None = None, echo=lambda m: None) -> dict:
    """Two seed-state workers of one group (children of this process, homes beside ``bb``'s settings, web ports
    ``ports`` or the processors' port + 10 and + 11); one SIGKILLed at ``kills`` random points while a run's events
    are being materialized."""
    from esper_runtime.infra.local_processors import LocalProcessors
    from streams.synthetic import synthetic_run

    s = bb.settings
    ports = ports or (s.processors_port + 10, s.processors_port + 11)
    group = f"{s.topic_prefix}chaos-workers-{uuid.uuid4().hex[:6]}"
    workers = [LocalProcessors(s.model_copy(update={"home": s.home / f"worker-{i}",
                                                    "processors_port": ports[i],
                                                    "kafka_bootstrap": s.bootstrap_servers}),
                               agents=("seed-state",), app_id=group, loglevel="info") for i in range(2)]
    rng = random.Random(seed)
    runs, published, takeovers, wrong = [], [], [], []
    try:
        for w in workers:
            w.up(echo=echo)
        for k in range(kills):
            run = f"chaos-{uuid.uuid4().hex[:6]}"
            runs.append(run)
            triples = list(synthetic_run(run, epochs=20, seed=seed * 1000 + k))
            half = rng.randrange(1, len(triples))
            events = _published(bb, triples[:half])
            victim = rng.randrange(2)
            time.sleep(rng.uniform(0.0, 1.5))
            workers[victim].kill()
            t0 = time.monotonic()
            events += _published(bb, triples[half:])
            published += events
            want = _replayed(run, events)
            while (got := _seed_states(bb, [run])[run]) != want and time.monotonic() - t0 < takeover_timeout:
                time.sleep(0.25)
            takeovers.append(round(time.monotonic() - t0, 1))
            if got != want:
                wrong.append(run)
                for seed in sorted(set(want) | set(got)):
                    if want.get(seed) != got.get(seed):
                        w, g = want.get(seed), got.get(seed)
                        echo(f"  {run} {seed}: replay {w and (w['state'], w['version'])} != state "
                             f"{g and (g['state'], g['version'])}")
                echo(f"  survivor: {workers[1 - victim].status()}")
            echo(f"kill {k + 1}/{kills}: worker {victim} at event {half} of {len(triples)}; state equal to the "
                 f"replay after {takeovers[-1]} s" + ("" if got == want else " — NOT EQUAL"))
            workers[victim].up(echo=lambda m: None)
        final = _seed_states(bb, runs)
        differ = [run for run in runs if final[run] != _replayed(run, published)]
    finally:
        for w in workers:
            w.down()
    takeovers_sorted = sorted(takeovers)
    return {"scenario": "worker_kill", "kills": kills, "runs": len(runs), "events": len(published),
            "runs_wrong_after_kill": len(wrong), "runs_wrong_at_end": len(differ),
            "takeover_p50_s": takeovers_sorted[len(takeovers_sorted) // 2], "takeover_max_s": takeovers_sorted[-1],
            "ok": not wrong and not differ}


def run_cluster_scenarios(kafka: LocalKafka, bb: Backbone, events: int, kills: int = 20,
                          echo=lambda m: None) -> list[dict]:
    """The scenarios on a running cluster, in order."""
    echo(f"node_kill: {events:,} events, the leader killed at 20 %, restarted at 60 %")
    results = [node_kill(kafka, bb, events=events)]
    echo("produce latency: single records, acks=all, 3 replicas against 1")
    rf3, rf1 = produce_latency(bb, replication=3), produce_latency(bb, replication=1)
    results.append({"scenario": "produce_latency", "rf3_p50_ms": rf3["p50_ms"], "rf3_p99_ms": rf3["p99_ms"],
                    "rf1_p50_ms": rf1["p50_ms"], "rf1_p99_ms": rf1["p99_ms"], "ok": True})
    if kills:
        echo(f"worker_kill: two processors' workers, one SIGKILLed at {kills} random points")
        results.append(worker_kill(bb, kills=kills, echo=echo))
    echo("quorum_loss: two of three nodes killed")
    results.append(quorum_loss(kafka, bb))
    return results

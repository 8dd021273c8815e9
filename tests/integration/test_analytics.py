"""Telemetry from the real broker into real SQL on chdb: ``esper sink`` and ``esper sql``."""

import json
import os
import subprocess
import sys
import uuid

import pytest

from streams import Backbone, EnvelopeFactory, load_settings
from streams.contracts import EpochCompleted, FieldReport, SeedLifecycleTransition, SeedState

pytestmark = pytest.mark.integration


def _cli(args, env, timeout=180):
    return subprocess.run([sys.executable, "-m", "esper_runtime.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_sink_then_sql(topic_registry, kafka_bootstrap, catalog, tmp_path):
    registry = topic_registry()
    bb = Backbone(load_settings(kafka_bootstrap=kafka_bootstrap), registry=registry, catalog=catalog)
    envs = EnvelopeFactory("run-sql", "test")
    with bb.publisher() as pub:
        for epoch in range(1, 11):
            pub.publish(EpochCompleted(envelope=envs.next("run/run-sql"), epoch=epoch, train_loss=1.0 / epoch,
                                       val_loss=1.0 / epoch, val_accuracy=0.5 + epoch / 100, params=100 + epoch,
                                       learning_rate=0.01, duration_ms=5.0))
        for frm, to in [("DORMANT", "GERMINATED"), ("GERMINATED", "LOADING"), ("LOADING", "TRAINING")]:
            pub.publish(SeedLifecycleTransition(envelope=envs.next("seed/0/1"), layer_id=0, seed_id=1,
                                                from_state=SeedState(frm), to_state=SeedState(to), epoch=3))
        pub.publish(FieldReport(envelope=envs.next("blueprint/b"), blueprint_id="b", seed_id="0/1", pre_metric=0.5,
                                post_metric=0.6, outcome="FOSSILIZED", eval_metrics={}, reward=1.0))
        pub.publish_raw(registry.prefix + "tolaria.run.events", b"not an event at all", "run/run-sql")
    bb.close()
    env = dict(os.environ, ESPER_KAFKA_BOOTSTRAP=kafka_bootstrap, ESPER_HOME=str(tmp_path),
               ESPER_TOPIC_PREFIX=registry.prefix)
    res = _cli(["sink", "--idle-timeout", "3", "--group", f"sink-{uuid.uuid4().hex[:6]}"], env)
    assert res.returncode == 0, res.stderr[-2000:]

    def sql(query):
        out = _cli(["sql", query, "--format", "json"], env)
        assert out.returncode == 0, out.stderr[-2000:]
        return [json.loads(line) for line in out.stdout.splitlines()]

    [row] = sql("SELECT count() AS n, max(val_accuracy) AS best, argMax(params, epoch) AS last_params "
                "FROM esper.epochs FINAL WHERE run_id = 'run-sql'")
    assert (row["n"], row["best"], row["last_params"]) == (10, 0.6, 110)
    assert [r["to_state"] for r in sql("SELECT to_state FROM esper.lifecycle_transitions FINAL "
                                       "ORDER BY originator_version")] == ["GERMINATED", "LOADING", "TRAINING"]
    assert sql("SELECT outcome, reward FROM esper.field_reports FINAL") == [{"outcome": "FOSSILIZED", "reward": 1}]

    # Delivered again (a new consumer group reads from offset 0): still counted once.
    res = _cli(["sink", "--idle-timeout", "3", "--group", f"sink-{uuid.uuid4().hex[:6]}"], env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sql("SELECT count() AS n FROM esper.epochs FINAL") == [{"n": 10}]

    bad = _cli(["sql", "SELECT nope FROM esper.epochs"], env)
    assert bad.returncode == 1 and "SQL error" in bad.stderr


def test_a_second_process_is_told_the_store_is_busy(tmp_path):
    from processors.clickhouse import open_store

    store = open_store(load_settings(home=tmp_path))
    try:
        res = _cli(["sql", "SELECT 1"], dict(os.environ, ESPER_HOME=str(tmp_path)))
        assert res.returncode == 2 and "busy" in res.stderr and str(os.getpid()) in res.stderr
    finally:
        store.close()
    res = _cli(["sql", "SELECT 1 AS one", "--format", "json"], dict(os.environ, ESPER_HOME=str(tmp_path)))
    assert res.returncode == 0 and json.loads(res.stdout) == {"one": 1}

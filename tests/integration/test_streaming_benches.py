"""The read-side benches at small sizes against the real broker, processors and chdb: each prints its contract's
fields (ARCHITECTURE.md) as the last line, and the replay one finds the replay equal to the live state."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _bench(args, kafka_bootstrap, local: bool = False):
    env = dict(os.environ, ESPER_KAFKA_BOOTSTRAP=kafka_bootstrap)
    if local:  # the broker this checkout started, found by its home (as a user's `esper bench` finds it)
        env.pop("ESPER_KAFKA_BOOTSTRAP")
    res = subprocess.run([sys.executable, "-m", "esper_runtime.cli.main", "bench", *args, "--json"],
                         capture_output=True, text=True, timeout=500, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_replay_bench(kafka_bootstrap):
    r = _bench(["replay", "--runs", "3", "--epochs", "40"], kafka_bootstrap)
    assert r["bench"] == "replay" and r["state_matches"] is True and r["events"] > 300 and r["events_per_s"] > 0


def test_materialize_bench(kafka_bootstrap):
    r = _bench(["materialize", "--backlog", "3000", "--rate", "500", "--seconds", "2"], kafka_bootstrap)
    assert r["events_per_s"] > 0 and r["live_applied"] == r["live_events"] == 1000 and r["lag_p99_ms"] >= 0


def test_telemetry_bench(kafka_bootstrap):
    r = _bench(["telemetry", "--batches", "600", "--rows", "100000", "--sink-rounds", "2"], kafka_bootstrap)
    # the sink drained the log twice (its group forgotten between); one copy of each row is kept
    assert r["rows_from_kafka"] == 600 * 32 and r["rows"] == 600 * 32 + 100_000
    assert r["sink_rounds"] == len(r["sink_rounds_rows_per_s"]) == 2
    assert r["insert_rows_per_s"] == max((x for x in r["sink_rounds_rows_per_s"] if x), default=None)
    assert r["insert_rows_per_s"] is None or r["insert_rows_per_s"] > 0
    assert r["raw_insert_rows_per_s"] > 0  # the limit, measured in the same run
    assert r["native_insert_rows_per_s"] > 0 and r["native_insert_one_container_rows_per_s"] > 0  # beside it
    assert r["insert_over_raw"] is None or r["insert_over_raw"] == round(r["insert_rows_per_s"] /
                                                                        r["raw_insert_rows_per_s"], 3)
    assert set(r["quantiles_ms"]) == {"latency_quantiles", "per_layer_quantiles", "one_run_quantiles"}


def test_telemetry_overhead_bench(kafka_bootstrap):
    from esper_runtime.infra import LocalKafka
    from streams import load_settings

    ours = load_settings().uses_local_broker and LocalKafka(load_settings()).pid() is not None
    r = _bench(["telemetry-overhead", "--rounds", "3", "--max-rounds", "3", "--steps", "2", "--linger-ms", "20"],
               kafka_bootstrap, local=ours)
    assert r["ratio"] > 0 and r["events_published"] > 0 and r["linger_ms"] == 20
    assert r["timed_epochs_per_round"] >= 2  # and at least four lingers' worth of 2-step epochs
    assert r["rounds"] == 3 and r["aa_spread"] >= 0 and isinstance(r["aa_spread_met"], bool)
    assert r["in_memory_ratio"] > 0  # the training thread's share, in the same rounds
    assert set(r["end_epoch_ms"]) == {"published", "in_memory", "quiet", "twin"}
    # publishing builds and encodes telemetry at the boundary; the unpublished copies build nothing
    assert r["end_epoch_ms"]["in_memory"] > r["end_epoch_ms"]["quiet"]
    assert (r["broker_cpu_ms_per_s"] is not None) == ours and (not ours or r["broker_cpu_ms_per_s"] > 0)


def test_materialize_bench_with_two_workers(kafka_bootstrap):
    r = _bench(["materialize", "--backlog", "3000", "--rate", "500", "--seconds", "2", "--workers", "2"],
               kafka_bootstrap)
    assert r["workers"] == 2 and r["events_per_s"] > 0 and r["live_applied"] == r["live_events"] == 1000

"""Synthetic runs and libraries: realistic, internally consistent event histories without training anything.

The processors' restart tests and the replay / materialize / telemetry benches need many events that mean
something (seeds walking the lifecycle in version order, kernels compiled, measured, tagged and validated); these
generators make them, deterministically from a seed, as ``(topic, key, event)`` triples in publishing order.
"""

from __future__ import annotations

import json
import random
from typing import Iterator

from streams.contracts import (
    BlueprintSubmitted,
    DecisionCandidate,
    EpochCompleted,
    FieldReport,
    KernelCompiled,
    KernelStatusChanged,
    KernelTagsAssigned,
    KernelValidationReport,
    RunCompleted,
    RunStarted,
    SeedHealth,
    SeedLifecycleTransition,
    SeedState,
    SeedTelemetry,
    TamiyoDecision,
)
from streams.envelope import EnvelopeFactory

__all__ = ["synthetic_run", "synthetic_library"]

_GROW = [SeedState.GERMINATED, SeedState.TRAINING, SeedState.GRAFTING, SeedState.STABILIZATION,
         SeedState.EVALUATING, SeedState.FINE_TUNING]


def synthetic_run(run_id: str, layers: int = 4, seeds_per_layer: int = 8, epochs: int = 40, seed: int = 0,
                  kernel_ids: list[str] | None = None) -> Iterator[tuple[str, str, object]]:
    """A training run's events: start, epochs, per-layer seed telemetry, decisions, seeds walking the lifecycle
    (one germination every few epochs, ending fossilized or culled), field reports, completion."""
    rng = random.Random(seed)
    envs = EnvelopeFactory(run_id, "synthetic")
    kernels = kernel_ids or [f"k{i:03d}" for i in range(8)]
    run_key = f"run/{run_id}"
    yield "tolaria.run.events", run_key, RunStarted(envelope=envs.next(f"run/{run_id}"), task="synthetic",
                                                    config_json="{}", host_params=1000, epochs_planned=epochs)
    states = {(l, s): SeedState.DORMANT for l in range(layers) for s in range(seeds_per_layer)}
    walking: dict[tuple[int, int], list[SeedState]] = {}
    accuracy = 0.5
    for epoch in range(epochs):
        # a new seed germinates every 3 epochs, each walk advances one state an epoch
        if epoch % 3 == 0:
            dormant = [k for k, v in states.items() if v == SeedState.DORMANT]
            if dormant:
                chosen = rng.choice(dormant)
                end = SeedState.FOSSILIZED if rng.random() < 0.6 else SeedState.CULLED
                walking[chosen] = list(_GROW[: rng.randint(3, len(_GROW))]) + [end]
                kernel = rng.choice(kernels)
                yield "tamiyo.decisions", run_key, TamiyoDecision(
                    envelope=envs.next(f"tamiyo/{run_id}"), epoch=epoch, decision_id=f"{run_id}-{epoch}",
                    policy="heuristic-v1", action="request_germination", target_layer_id=chosen[0],
                    target_seed_id=chosen[1], chosen_kernel_artifact_id=kernel, query_tags=["low_memory"],
                    candidates=[DecisionCandidate(layer_id=chosen[0], seed_id=chosen[1], score=rng.random(),
                                                  kernel_artifact_id=kernel)],
                    state_features={"val_loss": rng.random()}, reason="plateau")
        for (layer, sid), path in list(walking.items()):
            to = path.pop(0)
            origin = f"seed/{layer}/{sid}"
            yield "kasmina.lifecycle.transitions", origin, SeedLifecycleTransition(
                envelope=envs.next(origin), layer_id=layer, seed_id=sid, from_state=states[(layer, sid)],
                to_state=to, epoch=epoch, command_id=None, kernel_artifact_id=rng.choice(kernels), reason="advance")
            states[(layer, sid)] = to
            if not path:
                del walking[(layer, sid)]
                yield "innovation.field_reports", f"blueprint/bp{sid}", FieldReport(
                    envelope=envs.next(f"field/{run_id}"), blueprint_id=f"bp{sid}", seed_id=origin,
                    pre_metric=accuracy, post_metric=accuracy + rng.uniform(-0.02, 0.05),
                    outcome="FOSSILIZED" if to == SeedState.FOSSILIZED else "CULLED", eval_metrics={},
                    kernel_artifact_id=rng.choice(kernels), reward=rng.uniform(-1, 1))
        accuracy = min(0.99, accuracy + rng.uniform(0, 0.01))
        for layer in range(layers):
            yield "kasmina.telemetry.seeds", f"layer/{layer}", SeedTelemetry(
                envelope=envs.next(f"layer/{run_id}/{layer}"), epoch=epoch, layer_id=layer, layer_name=f"l{layer}",
                seeds=[SeedHealth(seed_id=s, state=states[(layer, s)], alpha=rng.random(),
                                  chunk_variance=rng.random(), dead_node_ratio=rng.random(),
                                  avg_correlation=rng.random(), exec_latency_us=rng.uniform(1, 50),
                                  is_ready_for_transition=False, kernel_artifact_id=None)
                       for s in range(seeds_per_layer)])
        yield "tolaria.run.events", run_key, EpochCompleted(
            envelope=envs.next(f"run/{run_id}"), epoch=epoch, train_loss=1 - accuracy, val_loss=1.1 - accuracy,
            val_accuracy=accuracy, params=1000 + 50 * epoch, learning_rate=1e-3, duration_ms=rng.uniform(5, 20))
    yield "tolaria.run.events", run_key, RunCompleted(envelope=envs.next(f"run/{run_id}"), epochs=epochs,
                                                      final_accuracy=accuracy, final_params=1000 + 50 * epochs,
                                                      status="COMPLETED", detail="")


def synthetic_library(blueprints: int = 10, kernels_per_blueprint: int = 3, seed: int = 0,
                      run_id: str = "library") -> Iterator[tuple[str, str, object]]:
    """Blueprints submitted, compiled into kernels, measured, tagged and validated (some rejected)."""
    rng = random.Random(seed)
    envs = EnvelopeFactory(run_id, "synthetic")
    for b in range(blueprints):
        bp = f"bp-{seed}-{b:04d}"
        yield "urza.blueprints.events", f"blueprint/{bp}", BlueprintSubmitted(
            envelope=envs.next(f"blueprint/{bp}"), blueprint_id=bp, name=f"design-{b}", ir_version=1,
            ir_json=json.dumps({"ops": ["linear", "relu"], "n": b}), submitted_by="synthetic", tags=["mlp"],
            parent_ids=[], chunk_widths=[8], pipelines=["fast"])
        for k in range(kernels_per_blueprint):
            aid = f"{bp}-k{k}"
            origin = f"kernel/{aid}"
            yield "tezzeret.kernels.events", f"blueprint/{bp}", KernelCompiled(
                envelope=envs.next(origin), artifact_id=aid, blueprint_id=bp, hardware="cpu", pipeline="fast",
                toolchain_hash="t", sha256=f"{rng.getrandbits(256):064x}", size_bytes=rng.randint(1000, 9000),
                uri=f"urza://{aid}", compile_ms=rng.uniform(1000, 9000),
                signature_json=json.dumps({"inputs": [{"name": "x", "shape": [None, 8]}]}))
            passed = rng.random() < 0.85
            latency = rng.uniform(0.01, 1.0)
            yield "urabrask.kernels.reports", origin, KernelValidationReport(
                envelope=envs.next(origin), artifact_id=aid, hardware="cpu", passed=passed, latency_ms_mean=latency,
                latency_ms_p99=latency * 1.5, throughput_ops_per_sec=1000 / latency,
                memory_mb_peak=rng.uniform(0.01, 2), power_watts_avg=None, precision_drift_vs_fp32=1e-7, runs=3,
                spread={"latency_ms_mean": 0.05}, failure="" if passed else "drift")
            if passed:
                yield "urabrask.kernels.reports", origin, KernelTagsAssigned(
                    envelope=envs.next(origin), artifact_id=aid, hardware="cpu",
                    tags=rng.sample(["high_speed", "low_memory", "stable"], 2), risk_score=rng.random(),
                    conf_level="High", method="percentile", population=b * kernels_per_blueprint + k)
            yield "urza.kernels.events", origin, KernelStatusChanged(
                envelope=envs.next(origin), artifact_id=aid, blueprint_id=bp, from_status="COMPILED",
                to_status="VALIDATED" if passed else "REJECTED", reason="" if passed else "drift")

"""The telemetry sink: events from the log, decoded, mapped to rows, inserted into ClickHouse in batches.

At least once: a batch's offsets are committed only after its rows are inserted; the tables' ReplacingMergeTree
(keyed by event_id) makes a batch delivered twice count once (query with FINAL, or after merges).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

__all__ = ["TelemetrySink", "rows_for", "SINK_TOPICS"]

SINK_TOPICS = ("tolaria.run.events", "kasmina.telemetry.seeds", "kasmina.lifecycle.transitions", "tamiyo.decisions",
               "urabrask.kernels.reports", "innovation.field_reports")


def _base(ev) -> dict:
    return {"occurred_at": ev.envelope.occurred_at.replace(tzinfo=None), "event_id": ev.envelope.event_id}


def rows_for(ev: Any) -> list[tuple[str, dict]]:
    """The (table, row) pairs an event becomes; [] for events the analytics tables do not hold."""
    name = type(ev).__name__
    run = {"run_id": ev.envelope.run_id}
    if name == "EpochCompleted":
        return [("epochs", {**run, "epoch": ev.epoch, **_base(ev), "train_loss": ev.train_loss,
                            "val_loss": ev.val_loss, "val_accuracy": ev.val_accuracy, "params": ev.params,
                            "learning_rate": ev.learning_rate, "duration_ms": ev.duration_ms})]
    if name == "SeedTelemetry":
        return [("seed_telemetry", {**run, "epoch": ev.epoch, **_base(ev), "layer_id": ev.layer_id,
                                    "layer_name": ev.layer_name, "seed_id": s.seed_id, "state": s.state.value,
                                    "alpha": s.alpha, "chunk_variance": s.chunk_variance,
                                    "dead_node_ratio": s.dead_node_ratio, "avg_correlation": s.avg_correlation,
                                    "exec_latency_us": s.exec_latency_us, "is_ready": int(s.is_ready_for_transition),
                                    "kernel_artifact_id": s.kernel_artifact_id or ""})
                for s in ev.seeds]
    if name == "SeedLifecycleTransition":
        return [("lifecycle_transitions", {**run, "epoch": ev.epoch, **_base(ev), "layer_id": ev.layer_id,
                                           "seed_id": ev.seed_id, "from_state": ev.from_state.value,
                                           "to_state": ev.to_state.value,
                                           "kernel_artifact_id": ev.kernel_artifact_id or "", "reason": ev.reason,
                                           "originator_version": ev.envelope.originator_version})]
    if name == "TamiyoDecision":
        return [("decisions", {**run, "epoch": ev.epoch, **_base(ev), "policy": ev.policy, "action": ev.action,
                               "target_layer_id": -1 if ev.target_layer_id is None else ev.target_layer_id,
                               "target_seed_id": -1 if ev.target_seed_id is None else ev.target_seed_id,
                               "kernel_artifact_id": ev.chosen_kernel_artifact_id or "",
                               "candidates": len(ev.candidates), "reason": ev.reason})]
    if name == "KernelValidationReport":
        return [("kernel_measurements", {"artifact_id": ev.artifact_id, "hardware": ev.hardware, **_base(ev),
                                         "passed": int(ev.passed), "latency_ms_mean": ev.latency_ms_mean,
                                         "latency_ms_p99": ev.latency_ms_p99,
                                         "throughput_ops_per_sec": ev.throughput_ops_per_sec,
                                         "memory_mb_peak": ev.memory_mb_peak,
                                         "precision_drift_vs_fp32": ev.precision_drift_vs_fp32, "runs": ev.runs,
                                         "failure": ev.failure})]
    if name == "FieldReport":
        return [("field_reports", {**run, **_base(ev), "blueprint_id": ev.blueprint_id, "seed_id": ev.seed_id,
                                   "outcome": ev.outcome, "pre_metric": ev.pre_metric, "post_metric": ev.post_metric,
                                   "reward": ev.reward if ev.reward is not None else float("nan"),
                                   "kernel_artifact_id": ev.kernel_artifact_id or ""})]
    return []


class TelemetrySink:
    def __init__(self, store, consumer):
        self.store = store
        self.consumer = consumer
        self.inserted: dict[str, int] = defaultdict(int)

    def run(self, idle_timeout: float | None = None, batch: int = 5000) -> dict[str, int]:
        last = time.monotonic()
        while True:
            events = self.consumer.poll(timeout=0.5, max_records=batch)
            if events:
                last = time.monotonic()
                tables: dict[str, list[dict]] = defaultdict(list)
                for item in events:
                    for table, row in rows_for(item.decoded.typed()):
                        tables[table].append(row)
                for table, rows in tables.items():
                    self.inserted[table] += self.store.insert(table, rows)
            elif idle_timeout is not None and time.monotonic() - last > idle_timeout:
                break
        self.consumer.commit()  # stores the last batch's offsets: its rows are in
        return dict(self.inserted)

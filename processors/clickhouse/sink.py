"""The telemetry sink: events from the log, decoded, mapped to rows, inserted into ClickHouse in batches.

At least once: a batch's offsets are committed only after its rows are inserted; the tables' ReplacingMergeTree
(keyed by event_id) makes a batch delivered twice count once (query with FINAL, or after merges). While the store
is unavailable the sink waits and retries the same batch, backing off to ``MAX_BACKOFF_S``: nothing is skipped. A
batch the store refuses is inserted record by record and the records it still refuses are set aside (the callers
put them on the dead-letter topic, reason ``unstorable``), so one bad record never blocks the rest.

``sink_records`` is the whole path from raw records, shared by the processors' sink and ``esper sink``: telemetry
written with this version's schema goes the native way (``native``: ClickHouse reads the Avro bodies itself, no
decode in Python) when the store is embedded; everything else, and a native batch ClickHouse refuses, is decoded
here, record by record, so a bad record is dead-lettered with a decode's own reason.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

from processors.clickhouse.native import NATIVE
from processors.exceptions import StoreError, StoreUnavailable
from streams.deadletter import decode_for_topic, frame_for_topic
from streams.exceptions import DecodeError
from streams.topics import TOPICS

__all__ = ["TelemetrySink", "insert_batch", "insert_or_set_aside", "sink_records", "plan_records", "sink_plan",
           "SinkPlan", "rows_for", "rows_for_record",
           "SINK_TOPICS", "MAX_BACKOFF_S", "backoff"]

MAX_BACKOFF_S = 30.0
log = logging.getLogger("esper.sink")


def backoff(first: float = 0.5, cap: float = MAX_BACKOFF_S):
    """The waits between retries while the store is unavailable: doubling from ``first``, then ``cap`` forever."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, cap)

# the events the analytics tables hold (``rows_for_record`` maps each to rows of its table)
TABLE_OF_EVENT = {"esper.tolaria.EpochCompleted": "epochs", "esper.kasmina.SeedTelemetry": "seed_telemetry",
          "esper.kasmina.SeedLifecycleTransition": "lifecycle_transitions", "esper.tamiyo.TamiyoDecision": "decisions",
          "esper.urabrask.KernelValidationReport": "kernel_measurements", "esper.innovation.FieldReport": "field_reports",
          "esper.kasmina.KasminaControlCommand": "commands", "esper.tolaria.SystemStatePacket": "system_state",
          "esper.tolaria.AdaptationSignal": "adaptation_signals", "esper.urza.BlueprintSubmitted": "blueprints"}
SINK_TOPICS = TOPICS.carrying(*TABLE_OF_EVENT)


def _base(env: dict) -> dict:
    return {"occurred_at": env["occurred_at"].replace(tzinfo=None), "event_id": env["event_id"]}


def rows_for_record(name: str, r: dict) -> list[tuple[str, dict]]:
    """The (table, row) pairs a decoded record (Avro data: enums as strings) becomes; [] for records the analytics
    tables do not hold. Working on the decoded record, not the typed event, spares the sink a conversion per row."""
    short = name.rsplit(".", 1)[-1]
    env = r["envelope"]
    run = {"run_id": env["run_id"]}
    if short == "EpochCompleted":
        return [("epochs", {**run, "epoch": r["epoch"], **_base(env), "train_loss": r["train_loss"],
                            "val_loss": r["val_loss"], "val_accuracy": r["val_accuracy"], "params": r["params"],
                            "learning_rate": r["learning_rate"], "duration_ms": r["duration_ms"],
                            "train_flops": r.get("train_flops", 0)})]
    if short == "SeedTelemetry":
        common = {**run, "epoch": r["epoch"], **_base(env), "layer_id": r["layer_id"], "layer_name": r["layer_name"]}
        return [("seed_telemetry", {**common, "seed_id": s["seed_id"], "state": s["state"], "alpha": s["alpha"],
                                    "chunk_variance": s["chunk_variance"], "dead_node_ratio": s["dead_node_ratio"],
                                    "avg_correlation": s["avg_correlation"], "exec_latency_us": s["exec_latency_us"],
                                    "is_ready": int(s["is_ready_for_transition"]),
                                    "kernel_artifact_id": s["kernel_artifact_id"] or "",
                                    "growth_signal": s.get("growth_signal", 0.0),
                                    "growth_from_model": int(s.get("growth_from_model", False))})
                for s in r["seeds"]]
    if short == "SeedLifecycleTransition":
        return [("lifecycle_transitions", {**run, "epoch": r["epoch"], **_base(env), "layer_id": r["layer_id"],
                                           "seed_id": r["seed_id"], "from_state": r["from_state"],
                                           "to_state": r["to_state"], "kernel_artifact_id": r["kernel_artifact_id"] or "",
                                           "reason": r["reason"], "originator_version": env["originator_version"],
                                           "command_id": r.get("command_id") or ""})]
    if short == "TamiyoDecision":
        return [("decisions", {**run, "epoch": r["epoch"], **_base(env), "policy": r["policy"], "action": r["action"],
                               "target_layer_id": -1 if r["target_layer_id"] is None else r["target_layer_id"],
                               "target_seed_id": -1 if r["target_seed_id"] is None else r["target_seed_id"],
                               "kernel_artifact_id": r["chosen_kernel_artifact_id"] or "",
                               "candidates": len(r["candidates"]), "reason": r["reason"],
                               "decision_id": r["decision_id"]})]
    if short == "KasminaControlCommand":
        return [("commands", {**run, "epoch": r["epoch"], **_base(env), "layer_id": r["target_layer_id"],
                              "seed_id": r["target_seed_id"], "command": r["command"],
                              "kernel_artifact_id": r["kernel_artifact_id"], "command_id": r["command_id"],
                              "decision_id": r.get("decision_id", "")})]
    if short == "SystemStatePacket":
        return [("system_state", {**run, "epoch": r["epoch"], **_base(env), "global_step": r["global_step"],
                                  "active_seeds": r["active_seeds"], "total_seeds": r["total_seeds"],
                                  "device": (r["hardware_context"] or {}).get("device", "")})]
    if short == "AdaptationSignal":
        return [("adaptation_signals", {**run, "epoch": r["epoch"], **_base(env),
                                        "optimizer_rebuild_required": int(r["optimizer_rebuild_required"]),
                                        "emergency_rollback_required": int(r["emergency_rollback_required"]),
                                        "reason": r["reason"]})]
    if short == "KernelValidationReport":
        return [("kernel_measurements", {"artifact_id": r["artifact_id"], "hardware": r["hardware"], **_base(env),
                                         "passed": int(r["passed"]), "latency_ms_mean": r["latency_ms_mean"],
                                         "latency_ms_p99": r["latency_ms_p99"],
                                         "throughput_ops_per_sec": r["throughput_ops_per_sec"],
                                         "memory_mb_peak": r["memory_mb_peak"],
                                         "precision_drift_vs_fp32": r["precision_drift_vs_fp32"], "runs": r["runs"],
                                         "failure": r["failure"]})]
    if short == "BlueprintSubmitted":
        return [("blueprints", {"blueprint_id": r["blueprint_id"], "name": r["name"], **_base(env),
                                "submitted_by": r["submitted_by"], "mutation": r.get("mutation", ""),
                                "parent_ids": list(r["parent_ids"]), "tags": list(r["tags"])})]
    if short == "FieldReport":
        return [("field_reports", {**run, **_base(env), "blueprint_id": r["blueprint_id"], "seed_id": r["seed_id"],
                                   "outcome": r["outcome"], "pre_metric": r["pre_metric"],
                                   "post_metric": r["post_metric"],
                                   "reward": r["reward"] if r["reward"] is not None else float("nan"),
                                   "kernel_artifact_id": r["kernel_artifact_id"] or "",
                                   "decision_id": r.get("decision_id", "")})]
    return []


def rows_for(ev: Any) -> list[tuple[str, dict]]:
    """``rows_for_record`` for a typed (generated contract) event."""
    return rows_for_record(ev.AVRO_NAME, ev.to_avro())


def insert_batch(store, records: Iterable[tuple[str, dict]]) -> dict[str, int]:
    """One batch of decoded records (schema name, Avro data) into ClickHouse: their rows grouped by table, one
    insert per table. Returns the rows inserted per table. What both the processors' sink agent and ``esper sink``
    run for every batch."""
    tables: dict[str, list[dict]] = defaultdict(list)
    for name, record in records:
        for table, row in rows_for_record(name, record):
            tables[table].append(row)
    return {table: store.insert(table, rows) for table, rows in tables.items()}


def insert_or_set_aside(store, records: list[tuple[str, dict]]) -> tuple[dict[str, int], list[tuple[int, str]]]:
    """``insert_batch``, and when the store refuses the batch, record by record: the rows inserted per table, and
    (index, reason) for each record the store refused on its own. ``StoreUnavailable`` propagates: the caller
    waits and retries the whole batch (rows already in count once, by event id)."""
    try:
        return insert_batch(store, records), []
    except StoreUnavailable:
        raise
    except Exception:  # noqa: BLE001 - some record in the batch; find which, one at a time
        pass
    inserted: dict[str, int] = defaultdict(int)
    refused = []
    for i, record in enumerate(records):
        try:
            for table, n in insert_batch(store, [record]).items():
                inserted[table] += n
        except StoreUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - a StoreError, or a record the row mapping cannot read
            refused.append((i, f"{type(exc).__name__}: {exc}"[:2000]))
    return dict(inserted), refused


def sink_records(store, serde, registry, items: list[tuple[str, bytes]], native: bool = True) \
        -> tuple[dict[str, int], list[tuple[int, str, str]]]:
    """A batch of raw records, (topic, value), into the store. Returns the rows inserted per table, and (index,
    reason, detail) for each record to put on the dead-letter topic: one whose header or body does not decode (a
    decode's reason) or that the store refused on its own (``unstorable``). ``StoreUnavailable`` propagates: the
    caller waits and retries the whole batch (rows already in count once, by event id).

    Records of an event type with a native mapping, written with this version's schema, go to ClickHouse undecoded
    (``store.insert_container``, one statement per writer schema) unless ``native`` is off or the store has no such
    path (a ClickHouse server); when ClickHouse refuses such a batch it is decoded here like the rest.
    ``plan_records`` then ``sink_plan``: a reader can plan the next batch while the store inserts the last."""
    return sink_plan(store, serde, registry, plan_records(store, serde, registry, items, native))


@dataclass
class SinkPlan:
    """A batch framed and its native part staged (``plan_records``), not yet inserted (``sink_plan``)."""

    items: list[tuple[str, bytes]]
    staged: list[tuple[Any, list[int]]] = field(default_factory=list)  # (StagedContainer, the records' indices)
    to_decode: list[int] = field(default_factory=list)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)

    def discard(self) -> None:
        for staged, _ in self.staged:
            staged.discard()
        self.staged = []


def plan_records(store, serde, registry, items: list[tuple[str, bytes]], native: bool = True) -> SinkPlan:
    """``sink_records``' first half, which runs on any thread: each record's header checked, the native records'
    containers written (``store.stage_container``), the rest marked for a decode. Nothing is inserted."""
    plan = SinkPlan(items)
    by_writer: dict[bytes, tuple[Any, int, list[int]]] = {}
    native = native and hasattr(store, "stage_container")
    for i, (topic, value) in enumerate(items):
        try:
            writer, offset, current = frame_for_topic(serde, registry, value, topic)
        except DecodeError as exc:
            if exc.reason == "wrong-topic":  # a decode says it as every reader does (a bad body comes first)
                plan.to_decode.append(i)
            else:
                plan.rejected.append((i, exc.reason, exc.detail))
            continue
        if native and current and writer.name in NATIVE:
            by_writer.setdefault(writer.fingerprint, (writer, offset, []))[2].append(i)
        else:
            plan.to_decode.append(i)
    try:
        for writer, offset, indices in by_writer.values():
            try:
                staged = store.stage_container(writer, [memoryview(items[i][1])[offset:] for i in indices])
            except StoreError as exc:
                log.info("telemetry sink: could not stage %d %s records (%s); decoding them one by one",
                         len(indices), writer.name, str(exc)[:300])
                staged = None
            if staged is None:
                plan.to_decode += indices
            else:
                plan.staged.append((staged, indices))
    except BaseException:
        plan.discard()
        raise
    return plan


def sink_plan(store, serde, registry, plan: SinkPlan) -> tuple[dict[str, int], list[tuple[int, str, str]]]:
    """``sink_records``' second half, on the store's thread: the staged containers inserted, each a statement (what
    ClickHouse refuses is decoded record by record instead), then the decoded records. The plan's files are gone
    afterwards, whatever happened: a retry plans the batch again."""
    inserted: dict[str, int] = defaultdict(int)
    rejected = list(plan.rejected)
    to_decode = list(plan.to_decode)
    items = plan.items
    try:
        while plan.staged:
            staged, indices = plan.staged.pop(0)
            try:
                table, n = store.insert_staged(staged)
            except StoreUnavailable:
                raise
            except StoreError as exc:
                log.info("telemetry sink: ClickHouse refused a batch of %d %s records (%s); decoding them one by "
                         "one", len(indices), staged.name, str(exc)[:300])
                to_decode += indices
            else:
                inserted[table] += n
    finally:
        plan.discard()
    records, kept = [], []
    for i in sorted(to_decode):
        topic, value = items[i]
        try:
            decoded = decode_for_topic(serde, registry, value, topic)
        except DecodeError as exc:
            rejected.append((i, exc.reason, exc.detail))
            continue
        records.append((decoded.name, decoded.record))
        kept.append(i)
    done, refused = insert_or_set_aside(store, records)
    for table, n in done.items():
        inserted[table] += n
    rejected += [(kept[j], "unstorable", reason) for j, reason in refused]
    return dict(inserted), sorted(rejected)


class TelemetrySink:
    def __init__(self, store, consumer):
        self.store = store
        self.consumer = consumer
        self.inserted: dict[str, int] = defaultdict(int)

    def run(self, idle_timeout: float | None = None, batch: int = 5000) -> dict[str, int]:
        last = time.monotonic()
        while True:
            records = self.consumer.poll_raw(timeout=0.5, max_records=batch)
            if records:
                last = time.monotonic()
                self._store(records)
            elif idle_timeout is not None and time.monotonic() - last > idle_timeout:
                break
        self.consumer.commit()  # stores the last batch's offsets: its rows are in
        return dict(self.inserted)

    def _store(self, records) -> None:
        items = [(r.topic(), r.value()) for r in records]
        for delay in backoff():
            try:
                inserted, rejected = sink_records(self.store, self.consumer.serde, self.consumer.registry, items)
                break
            except StoreUnavailable as exc:
                log.warning("telemetry sink: %s; retrying in %.1f s", exc, delay)
                time.sleep(delay)
        for table, n in inserted.items():
            self.inserted[table] += n
        for i, reason, detail in rejected:
            self.consumer.deadletter.send(self.consumer.record_of(records[i]), reason, detail)
        self.consumer.dead_lettered += len(rejected)
        if rejected:
            self.consumer.deadletter.publisher.flush()

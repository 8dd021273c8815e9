"""Simic's experience dataset, read from the log: every germination a teacher policy decided, with what it saw.

For each ``TamiyoDecision`` with ``action = request_germination`` (by default the heuristic's) the example holds
the system graph of that epoch rebuilt from the run's ``SeedTelemetry`` (published at the same boundary, before the
command took effect), the seeds that were eligible (dormant), the chosen seed, and the kernels the teacher weighed
(its candidates) with the chosen one, each described from its Urza record and the seed's history of culled
designs (from the run's ``FieldReport``s before the decision). Outcomes (the field report that closed each
adaptation, with its C.4.1 reward) are attached for an RL fine-tune.

A dataset is versioned by the log positions it read: the end offset of every partition of every topic, hashed.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from esper_runtime.tamiyo.graph import LayerObs, observe_telemetry
from esper_runtime.tamiyo.policy import kernel_features, tag_vector
from views.folds import fold_library
from streams.backbone import Backbone

__all__ = ["Example", "ExperienceDataset", "read_experience", "experience_from_events", "end_offsets", "log_version"]

TOPICS = ("tamiyo.decisions", "kasmina.telemetry.seeds", "innovation.field_reports")


@dataclass
class Example:
    run_id: str
    epoch: int
    layers: list[LayerObs]
    eligible: list[tuple[int, int]]
    target: tuple[int, int]
    kernel_ids: list[str]
    kernel_features: torch.Tensor  # [n_candidates, KERNEL_FEATURES]
    kernel_target: int
    kernel_tags: torch.Tensor | None = None  # the chosen kernel's tags (TAGS order): what a good query asks for
    outcome: str | None = None
    reward: float | None = None


@dataclass
class ExperienceDataset:
    examples: list[Example]
    offsets: dict[str, dict[int, int]]
    teacher: str
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return log_version(self.offsets)

    def runs(self) -> list[str]:
        return sorted({e.run_id for e in self.examples})

    def split(self, holdout: float = 0.25) -> tuple[list[Example], list[Example]]:
        """Held out by run (never by example): the last ``holdout`` share of runs, at least one."""
        runs = self.runs()
        n = max(1, round(len(runs) * holdout)) if len(runs) > 1 else 0
        held = set(runs[len(runs) - n:])
        return [e for e in self.examples if e.run_id not in held], [e for e in self.examples if e.run_id in held]


def end_offsets(backbone: Backbone, topics: list[str]) -> dict[str, dict[int, int]]:
    """The log's end offset of every partition of ``topics``: the positions a dataset read up to."""
    source = backbone.source()
    try:
        return {t: {p: source.watermarks(t, p)[1] for p in range(source.partitions(t))} for t in topics}
    finally:
        source.close()


def log_version(offsets: dict[str, dict[int, int]]) -> str:
    """A dataset's version: a hash of the end offsets it read (the same log positions, the same version)."""
    return hashlib.sha256(json.dumps(offsets, sort_keys=True).encode()).hexdigest()[:16]


def read_experience(backbone: Backbone, teacher: str = "heuristic-v1", runs: set[str] | None = None) -> ExperienceDataset:
    """The dataset from the log the backbone points at (every run, or ``runs``), versioned by its end offsets."""
    topics = [backbone.resolve_topic(t) for t in TOPICS]
    offsets = end_offsets(backbone, topics)
    urza = fold_library(backbone)
    events = (item.decoded.typed() for item in backbone.replay_reader().events(topics) if item.error is None)
    return experience_from_events(events, urza, offsets, teacher, runs)


def experience_from_events(events, urza, offsets: dict, teacher: str = "heuristic-v1",
                           runs: set[str] | None = None) -> ExperienceDataset:
    """The dataset from decisions, telemetry and field reports in log order (a pure fold: no I/O)."""
    decisions = []  # (position, decision)
    telemetry: dict[tuple[str, int], list[tuple[int, dict[int, object]]]] = defaultdict(list)
    reports: dict[str, list[tuple[int, object]]] = defaultdict(list)  # run -> (position, FieldReport)
    seen = set()
    for position, ev in enumerate(events):
        env = ev.envelope
        if env.event_id in seen or (runs is not None and env.run_id not in runs):
            continue
        seen.add(env.event_id)
        name = type(ev).__name__
        if name == "TamiyoDecision" and ev.action == "request_germination" and ev.policy == teacher:
            decisions.append((position, ev))
        elif name == "SeedTelemetry":
            groups = telemetry[(env.run_id, ev.epoch)]
            if not groups or ev.layer_id in groups[-1][1]:  # a new boundary (a rolled-back epoch comes again)
                groups.append((position, {}))
            groups[-1][1][ev.layer_id] = ev
        elif name == "FieldReport":
            reports[env.run_id].append((position, ev))

    examples, skipped = [], defaultdict(int)
    for position, d in decisions:
        run = d.envelope.run_id
        after = [g for p, g in telemetry.get((run, d.epoch), []) if p > position]
        if not after:
            skipped["no telemetry for the decision's epoch"] += 1
            continue
        layers = observe_telemetry(sorted(after[0].values(), key=lambda b: b.layer_id))
        eligible = [(l.layer_id, i) for l in layers for i in range(l.num_seeds) if int(l.state[i]) == 0]
        target = (d.target_layer_id, d.target_seed_id)
        if target not in eligible:
            skipped["target not dormant in telemetry"] += 1
            continue
        kernels = [c.kernel_artifact_id for c in d.candidates if c.kernel_artifact_id]
        records = [urza.kernels.get(k) for k in kernels]
        if d.chosen_kernel_artifact_id not in kernels or any(r is None for r in records):
            skipped["kernel candidates unknown to Urza"] += 1
            continue
        width = urza.kernels[d.chosen_kernel_artifact_id].features
        names = (f"seed/{target[0]}/{target[1]}", f"{target[0]}/{target[1]}")  # the seed's id; older logs: "L/S"
        tried = {fr.blueprint_id for p, fr in reports.get(run, []) if p < position and fr.seed_id in names
                 and fr.outcome == "CULLED"}
        feats = torch.tensor([kernel_features(r, r.blueprint_id in tried, width) for r in records], dtype=torch.float32)
        closing = [fr for p, fr in reports.get(run, []) if p > position and fr.seed_id in names]
        chosen = urza.kernels[d.chosen_kernel_artifact_id]
        examples.append(Example(run, d.epoch, layers, eligible, target, kernels, feats,
                                kernels.index(d.chosen_kernel_artifact_id),
                                torch.tensor(tag_vector(chosen.tags), dtype=torch.float32),
                                closing[0].outcome if closing else None, closing[0].reward if closing else None))
    return ExperienceDataset(examples, offsets, teacher, dict(skipped))

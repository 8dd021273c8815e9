"""Fold one run's events back from the broker and compare them with what the live run holds.

The fold rebuilds, from the log alone: every seed's final lifecycle state (applying SeedLifecycleTransition in
each seed's version order, refusing gaps), the epoch history, and the counts the summary reports. ``verify``
returns the differences; an empty list means the log tells exactly what happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streams.backbone import Backbone

__all__ = ["RunFold", "fold_run", "RUN_TOPICS"]

RUN_TOPICS = ("kasmina.lifecycle.transitions", "tolaria.run.events", "innovation.field_reports", "tamiyo.decisions",
              "control.kasmina.commands", "kasmina.telemetry.seeds", "tolaria.system.state",
              "tamiyo.adaptation.signals")


@dataclass
class RunFold:
    run_id: str
    seeds: dict[str, str] = field(default_factory=dict)  # seed/L/S -> final state
    versions: dict[str, int] = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)
    epochs: dict[int, dict] = field(default_factory=dict)
    germinated: int = 0
    fossilized: int = 0
    culled: int = 0
    field_reports: int = 0
    events: int = 0
    final_accuracy: float | None = None
    final_params: int | None = None
    status: str | None = None

    def apply(self, ev) -> None:
        env = ev.envelope
        if env.run_id != self.run_id:
            return
        self.events += 1
        name = type(ev).__name__
        if name == "SeedLifecycleTransition":
            expected = self.versions.get(env.originator_id, 0) + 1
            if env.originator_version != expected:
                self.gaps.append(f"{env.originator_id}: version {env.originator_version}, expected {expected}")
                return
            self.versions[env.originator_id] = env.originator_version
            self.seeds[env.originator_id] = ev.to_state.value
            self.germinated += ev.to_state.value == "GERMINATED"
            self.fossilized += ev.to_state.value == "FOSSILIZED"
            self.culled += ev.to_state.value == "CULLED"
        elif name == "EpochCompleted":
            self.epochs[ev.epoch] = {"val_accuracy": ev.val_accuracy, "params": ev.params, "train_loss": ev.train_loss}
        elif name == "FieldReport":
            self.field_reports += 1
        elif name == "RunCompleted":
            self.final_accuracy, self.final_params, self.status = ev.final_accuracy, ev.final_params, ev.status
        elif name == "RollbackPerformed":
            for epoch in [e for e in self.epochs if e > ev.to_epoch]:
                del self.epochs[epoch]  # those epochs were trained again from the checkpoint


def fold_run(backbone: Backbone, run_id: str) -> RunFold:
    fold = RunFold(run_id)
    topics = [backbone.resolve_topic(t) for t in RUN_TOPICS]
    for item in backbone.replay_reader().events(topics):
        if item.error is None:
            fold.apply(item.decoded.typed())
    return fold

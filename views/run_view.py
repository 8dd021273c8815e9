"""A run folded from its events: every seed's state, the epochs, decisions, field reports, rollbacks, and the story.

A pure fold, like ``urza_view``: the demo's replay check, ``esper replay`` and (later) the stream processors feed it
the same events and get the same state. Seed transitions apply in each seed's ``originator_version`` order:
duplicates are skipped and counted, a version that skips ahead is a gap, reported and not applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from views.seed_state import DUPLICATE, GAP, fold_seed
from views.urza_view import Unapplicable, parse_json

__all__ = ["RunView", "TAKEN_BACK"]


_MILESTONES = {"GERMINATED": "germinated", "FOSSILIZED": "fossilized", "CULLED": "culled"}
TAKEN_BACK = "resume: taken back"  # how the reason of a resume's transition back to its checkpoint's state begins


@dataclass
class RunView:
    run_id: str
    seeds: dict[str, str] = field(default_factory=dict)  # seed/L/S -> current state
    seed_kernels: dict[str, str | None] = field(default_factory=dict)
    seed_states: dict[str, dict] = field(default_factory=dict)  # seed/L/S -> fold_seed's state
    seen: set[str] = field(default_factory=set)
    gaps: list[str] = field(default_factory=list)
    duplicates: int = 0
    epochs: dict[int, dict] = field(default_factory=dict)
    story: list[dict] = field(default_factory=list)
    germinated: int = 0
    fossilized: int = 0
    culled: int = 0
    field_reports: int = 0
    events: int = 0
    task: str | None = None
    host_params: int | None = None
    final_accuracy: float | None = None
    final_params: int | None = None
    status: str | None = None
    failure: str | None = None
    config: dict | None = None  # the run's resolved configuration, as RunStarted recorded it
    waits: dict[str, int] = field(default_factory=dict)  # Tamiyo's reasons for not acting, epochs each
    rejected: list[str] = field(default_factory=list)  # events the fold could not apply, and why (skipped)
    # (epoch, counter) of each germination, fossilization, cull and field report counted: a resume's rollback
    # uncounts those of the epochs it takes back, which the resumed run trains (and counts) again
    counted: list[tuple[int, str]] = field(default_factory=list)

    def apply(self, ev: Any, position: str = "") -> None:
        env = ev.envelope
        if env.run_id != self.run_id or not self.note(env.event_id):
            return
        handler = getattr(self, f"_on_{type(ev).__name__}", None)
        if handler is not None:
            try:
                handler(ev, position)
            except Exception as exc:  # noqa: BLE001 - one poison record must not stop the fold
                self.rejected.append(f"{type(ev).__name__} {env.event_id} at {position or '?'} skipped: "
                                     f"{type(exc).__name__}: {str(exc)[:300]}")

    def note(self, event_id: str) -> bool:
        """Count an event of this run; False for a repeated one. Events the view has no handler for (telemetry,
        system state, commands) need only this: a fold can skip decoding them past their envelope."""
        if event_id in self.seen:
            self.duplicates += 1
            return False
        self.seen.add(event_id)
        self.events += 1
        return True

    @classmethod
    def handles(cls, event_name: str) -> bool:
        """Whether ``apply`` does more than count an event of this type (short or full Avro name)."""
        return hasattr(cls, f"_on_{event_name.rsplit('.', 1)[-1]}")

    def _tell(self, ev, position: str, kind: str, text: str, **extra) -> None:
        self.story.append({"at": ev.envelope.occurred_at.isoformat(), "position": position, "kind": kind,
                           "text": text, **extra})

    def _on_SeedLifecycleTransition(self, ev, position) -> None:
        origin = ev.envelope.originator_id
        outcome, state = fold_seed(self.seed_states.get(origin), ev)
        if outcome == DUPLICATE:
            self.duplicates += 1
            return
        if outcome == GAP:
            expected = self.seed_states[origin]["version"] + 1 if origin in self.seed_states else 1
            self.gaps.append(f"{origin}: version {ev.envelope.originator_version} arrived, expected {expected}")
            return
        self.seed_states[origin] = state
        to = ev.to_state.value
        self.seeds[origin] = to
        self.seed_kernels[origin] = ev.kernel_artifact_id
        counter = _MILESTONES.get(to)
        if counter is not None and not ev.reason.startswith(TAKEN_BACK):  # a way back is no new milestone
            self._count(counter, ev.epoch)
        if to in ("GERMINATED", "FOSSILIZED", "CULLED", "ROLLED_BACK", "ERROR_RECOVERY", "CANCELLED") or \
                ev.reason.startswith(("load failed", "resume:")):
            self._tell(ev, position, "lifecycle", f"epoch {ev.epoch}: {origin} {ev.from_state.value} -> {to}"
                       + (f" ({ev.reason})" if ev.reason and ev.reason not in ("advance", "fossilize") else ""),
                       seed=origin, state=to, kernel=ev.kernel_artifact_id)

    def _on_TamiyoDecision(self, ev, position) -> None:
        if ev.action == "wait":
            reason = ev.reason.split(" (")[0] if ev.reason.startswith("improving") else ev.reason
            self.waits[reason] = self.waits.get(reason, 0) + 1
        if ev.action in ("request_germination", "emergency_rollback"):
            target = f"seed/{ev.target_layer_id}/{ev.target_seed_id}" if ev.target_layer_id is not None else "the run"
            self._tell(ev, position, "decision", f"epoch {ev.epoch}: Tamiyo chose {ev.action} for {target}: "
                       f"{ev.reason}", kernel=ev.chosen_kernel_artifact_id,
                       candidates=len(ev.candidates))

    def _on_FieldReport(self, ev, position) -> None:
        self._count("field_reports", max(self.epochs, default=0))  # sent at the boundary of the last epoch
        self._tell(ev, position, "outcome", f"seed {ev.seed_id}: {ev.outcome}, val acc {ev.pre_metric:.4f} -> "
                   f"{ev.post_metric:.4f}, reward {ev.reward if ev.reward is not None else float('nan'):.2f}",
                   blueprint=ev.blueprint_id, kernel=ev.kernel_artifact_id)

    def _on_RunStarted(self, ev, position) -> None:
        self.task, self.host_params = ev.task, ev.host_params
        try:
            self.config = parse_json(ev.config_json, "config_json") if ev.config_json else None
        except Unapplicable:
            self.config = None
        self._tell(ev, position, "run", f"run started: {ev.task}, {ev.host_params} parameters, "
                   f"{ev.epochs_planned} epochs planned")

    def _on_EpochCompleted(self, ev, position) -> None:
        self.epochs[ev.epoch] = {"val_accuracy": ev.val_accuracy, "val_loss": ev.val_loss, "params": ev.params,
                                 "train_loss": ev.train_loss, "train_flops": ev.train_flops}

    def _on_RollbackPerformed(self, ev, position) -> None:
        for epoch in [e for e in self.epochs if e > ev.to_epoch]:
            del self.epochs[epoch]  # trained again from the checkpoint
        if ev.trigger == "resume":  # the epochs past the checkpoint did not happen in the run that goes on
            for epoch, counter in [c for c in self.counted if c[0] > ev.to_epoch]:
                setattr(self, counter, getattr(self, counter) - 1)
            self.counted = [c for c in self.counted if c[0] <= ev.to_epoch]
        self._tell(ev, position, "rollback", f"epoch {ev.from_epoch}: rolled back to epoch {ev.to_epoch} "
                   f"({ev.trigger}: {ev.reason})")

    def _on_RunCompleted(self, ev, position) -> None:
        self.final_accuracy, self.final_params, self.status = ev.final_accuracy, ev.final_params, ev.status
        self._tell(ev, position, "run", f"run {ev.status} after {ev.epochs} epochs: val acc {ev.final_accuracy:.4f}, "
                   f"{ev.final_params} parameters")
        why = self.no_growth_reason()
        if why:
            self._tell(ev, position, "run", f"nothing grew: {why}")

    def _count(self, counter: str, epoch: int) -> None:
        setattr(self, counter, getattr(self, counter) + 1)
        self.counted.append((epoch, counter))

    def no_growth_reason(self) -> str | None:
        """Why the run did not grow, or None when it did (or no controller decided). Nothing germinated: why, from
        Tamiyo's decisions. Seeds germinated but the finished run has the host's parameters: none was part of the
        model at the end (culled, rolled back, or still in its lifecycle when the epochs ran out)."""
        if self.germinated:
            if self.final_params is None or self.host_params is None or self.final_params > self.host_params:
                return None
            return (f"{self.germinated} seed(s) germinated but none was part of the model at the end "
                    f"({self.fossilized} fossilized, {self.culled} culled; {self.host_params} -> {self.final_params} "
                    f"params): every seed was culled or rolled back, or the epochs ran out before one was grafted")
        if not self.waits:
            return None
        blocked = {r: n for r, n in self.waits.items() if r.startswith(("no candidate", "germination budget"))}
        if blocked:
            reason, n = max(blocked.items(), key=lambda item: item[1])
            return f"{reason} ({n} epochs with a plateau)"
        if set(self.waits) <= {"warm-up", "improving"}:
            return (f"no plateau before the last epoch: the validation loss kept improving "
                    f"({self.waits.get('improving', 0)} epochs after warm-up)")
        reason, n = max(self.waits.items(), key=lambda item: item[1])
        return f"{reason} ({n} epochs)"

    def _on_RunFailed(self, ev, position) -> None:
        self.status = "failed"
        self.failure = f"{ev.error_type}: {ev.reason}"
        self._tell(ev, position, "run", f"run failed in epoch {ev.epoch}: {ev.error_type}: {ev.reason}")

    def summary(self) -> dict:
        return {"run_id": self.run_id, "task": self.task, "host_params": self.host_params,
                "final_params": self.final_params, "final_accuracy": self.final_accuracy, "status": self.status,
                "failure": self.failure, "no_growth_reason": self.no_growth_reason(), "config": self.config,
                "epochs": len(self.epochs), "events": self.events, "seeds_germinated": self.germinated,
                "seeds_fossilized": self.fossilized, "seeds_culled": self.culled, "field_reports": self.field_reports,
                "seeds": dict(sorted(self.seeds.items())), "gaps": self.gaps, "duplicates": self.duplicates}

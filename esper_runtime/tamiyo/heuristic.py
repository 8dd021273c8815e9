"""Tamiyo, heuristic policy v1: when the validation loss plateaus, grow the most wasteful chunk with a kernel from
Urza, and walk each adaptation through its lifecycle to FOSSILIZED or CULLED.

At each epoch boundary ``step(state)`` (before Kasmina applies commands):

1. Adaptations in flight advance when their seed is ready. EVALUATING passes if validation accuracy is at most
   ``accept_tolerance`` below the accuracy when the seed germinated; FINE_TUNING fossilizes after
   ``fine_tune_epochs`` if accuracy gained at least ``min_improvement``; otherwise the seed is culled. A seed that
   errored is culled. Every end (fossilized, culled, rolled back) is a ``FieldReport`` with the C.4.1 reward.
2. If the validation loss has not improved by ``min_delta`` for ``patience`` epochs (after ``warmup_epochs``), a
   new adaptation starts where Kasmina measured the strongest growth signal: for each dormant, non-embargoed seed,
   how fast the loss would fall through new units writing that chunk from the wider of the layer's input and the
   model's (GradMax's gradient norm, measured each epoch, times the chunk's spread so that it does not depend on
   how the host spreads a scale over its layers; the chunk's waste — dead and
   correlated units — breaks ties and stands in where nothing was measured, e.g. a Conv2d layer). The seed gets
   the best kernel Urza offers for its width: designs reading the chosen input first, the smallest first, then the
   rest (VALIDATED, carrying ``preferred_tags``, lowest risk; designs already culled on that slot are avoided).

Each epoch's choice — including "wait" — is a ``TamiyoDecision`` event: what was seen, the candidates and their
scores, and what was chosen: the experience a learned policy trains on.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import asdict, dataclass

import torch

from esper_runtime.config import TamiyoConfig
from esper_runtime.devices import runs_on
from esper_runtime.kasmina import Code, MorphableModel, seed_name
from esper_runtime.kasmina.lifecycle import OUTCOME_CODES
from esper_runtime.karn.lineage import field_factor
from views.urza_view import UrzaView
from streams.contracts import DecisionCandidate, FieldReport, KasminaControlCommand, TamiyoDecision
from streams.envelope import EnvelopeFactory
from streams.lifecycle import OUTCOMES
from streams.publisher import Publisher

__all__ = ["TamiyoController", "EpochState", "compute_reward"]

PRODUCER = "tamiyo/heuristic-v1"


@dataclass(frozen=True)
class EpochState:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float


@dataclass
class _Adaptation:
    layer: int
    seed: int
    kernel: str
    blueprint_id: str
    germinated_epoch: int
    pre_metric: float
    params_before: int
    fine_tune_since: int | None = None
    decision_id: str = ""  # the germination decision: its field report carries it


def _params(kernel) -> int:
    """Parameters a kernel adds, from the shapes its compiled signature lists."""
    return sum(math.prod(p.get("shape") or [0]) for p in (kernel.signature or {}).get("params", []))


def compute_reward(outcome: str, pre: float, post: float, report: dict | None) -> float:
    """Appendix C.4.1: local health change minus measured latency, the outcome's global reward, a memory cost."""
    report = report or {}
    r_local = 0.1 * (post - pre) * 100 - 0.05 * float(report.get("latency_ms_mean", 0.0))
    r_global = {"FOSSILIZED": 1.0, "CULLED": -0.5, "ROLLED_BACK": -1.0, "CANCELLED": -0.1}.get(outcome, 0.0)
    r_efficiency = -0.01 * float(report.get("memory_mb_peak", 0.0))
    return r_local + r_global + r_efficiency


class TamiyoController:
    def __init__(self, model: MorphableModel, config: TamiyoConfig, urza: UrzaView | None = None,
                 publisher: Publisher | None = None, run_id: str | None = None):
        self.model = model
        self.kasmina = model.kasmina
        self.config = config
        self._urza = urza  # None: the library from the log, at ``prepare`` (a constructor does no I/O)
        if self.kasmina.cache is not None and self.kasmina.cache.expected_digest is None:
            # the kernels she commands are loaded only if their bytes hash to what the log recorded for them
            self.kasmina.cache.expected_digest = self._logged_digest
        self.publisher = publisher if publisher is not None else self.kasmina.publisher
        self.run_id = run_id or self.kasmina.run_id
        self.envelopes = EnvelopeFactory(self.run_id, PRODUCER)
        self.command_envelopes = EnvelopeFactory(self.run_id, PRODUCER)  # her commands, one originator per seed
        self.best_val_loss = float("inf")
        self.since_improvement = 0
        self.germinations = 0
        self.in_flight: dict[tuple[int, int], _Adaptation] = {}
        self.culled_designs: dict[tuple[int, int], set[str]] = {}
        self.reset_at: dict[tuple[int, int], int] = {}
        self.field_reports: list[FieldReport] = []
        self.field_record: dict[str, dict[str, int]] = {}  # earlier runs' outcomes per blueprint (the run sets it)
        self.decisions: list[TamiyoDecision] = []
        self.lineage: list[dict] = self.kasmina.lineage  # shared, so save_model(model) writes it
        self.emergency: str | None = None  # set when Tolaria must roll back (read and cleared by Tolaria)
        self._no_candidate: str | None = None  # why the last germination attempt found nothing
        self._signal: dict[tuple[int, int], tuple[float, str, float]] = {}  # (growth, input, waste) per location
        self._measured = False  # whether the last locations were ranked by a measured growth signal
        self.first_signal: float | None = None  # the growth signal where the run first germinated
        self.policy_name = PRODUCER.split("/")[1]

    def prepare(self) -> None:
        """The SDK journey's I/O, before training starts (``TolariaTrainer.train`` calls it): with no Urza view
        given, kernels for this model's chunk widths are compiled if the library lacks them, then the library is
        folded from the log."""
        if self._urza is not None:
            return
        from esper_runtime.run.library import ensure_library
        from esper_runtime.urza.library import load_view
        from streams.backbone import Backbone

        backbone = Backbone()
        try:
            ensure_library(backbone, self.kasmina.seed_shapes(), device=self._device().type)
            self._urza = load_view(backbone)
        finally:
            backbone.close()

    @property
    def urza(self) -> UrzaView:
        if self._urza is None:
            self.prepare()
        return self._urza

    @urza.setter
    def urza(self, view: UrzaView) -> None:
        self._urza = view

    def _logged_digest(self, artifact_id: str) -> str | None:
        record = self.urza.kernels.get(artifact_id)
        return record.sha256 if record is not None else None

    # ------------------------------------------------------------------ checkpointing (Tolaria restores in lockstep)
    def state_dict(self) -> dict:
        """Plain JSON-able state (checkpoints store it as JSON: nothing to unpickle)."""
        seed = lambda key: f"{key[0]}/{key[1]}"  # noqa: E731
        return {
            "best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
            "since_improvement": self.since_improvement,
            "germinations": self.germinations,
            "in_flight": {seed(k): asdict(v) for k, v in self.in_flight.items()},
            "culled_designs": {seed(k): sorted(v) for k, v in self.culled_designs.items()},
            "reset_at": {seed(k): v for k, v in self.reset_at.items()},
            "first_signal": self.first_signal,
        }

    def load_state_dict(self, state: dict) -> None:
        key = lambda text: tuple(int(x) for x in text.split("/"))  # noqa: E731
        self.best_val_loss = state["best_val_loss"] if state["best_val_loss"] is not None else float("inf")
        self.since_improvement = state["since_improvement"]
        self.germinations = state["germinations"]
        self.in_flight = {key(k): _Adaptation(**v) for k, v in state["in_flight"].items()}
        self.culled_designs = {key(k): set(v) for k, v in state["culled_designs"].items()}
        self.reset_at = {key(k): v for k, v in state["reset_at"].items()}
        self.first_signal = state.get("first_signal")

    # ------------------------------------------------------------------ the epoch boundary
    def step(self, state: EpochState) -> list[str]:
        """Decide at the boundary after ``state.epoch``; returns the commands issued (applied by Kasmina next)."""
        issued = []
        if self.in_flight and math.isfinite(self.best_val_loss) and (
                not math.isfinite(state.val_loss) or state.val_loss > self.config.emergency_factor * self.best_val_loss):
            # An adaptation in flight and the validation loss blew up: ask Tolaria to roll everything back.
            self.emergency = f"val loss {state.val_loss:.4f} > {self.config.emergency_factor} x best {self.best_val_loss:.4f}"
            self._decide(state, "emergency_rollback", None, None, [], reason=self.emergency)
            return issued
        improved = state.val_loss < self.best_val_loss * (1 - self.config.min_delta)
        if improved:
            self.best_val_loss = state.val_loss
            self.since_improvement = 0
        else:
            self.since_improvement += 1
        for key, epoch in list(self.reset_at.items()):
            if state.epoch >= epoch and self.kasmina.state(*key) == Code.CULLED:
                issued.append(self._command(key, "reset", "", state, reason="embargo over"))
                del self.reset_at[key]
        for key, ad in list(self.in_flight.items()):
            cmd = self._advance(key, ad, state)
            if cmd:
                issued.append(cmd)
        if self._wants_growth(state):
            cmd = self._germinate(state)
            if cmd:
                issued.append(cmd)
        if not issued:
            self._decide(state, "wait", None, None, [], reason=self._wait_reason(state))
        return issued

    def _wait_reason(self, state: EpochState) -> str:
        if state.epoch < self.config.warmup_epochs:
            return "warm-up"
        if self.since_improvement < self.config.patience:
            return f"improving ({self.since_improvement} epochs since the best val loss)"
        if len(self.in_flight) >= self.config.max_active_seeds:
            return "an adaptation is in flight"
        if self._grafting():
            return "an adaptation is being grafted (one_graft_at_a_time)"
        if self.germinations >= self.config.max_germinations:
            return f"germination budget spent (max_germinations={self.config.max_germinations})"
        return f"no candidate: {self._no_candidate or 'no seed with a kernel to grow'}"

    def _wants_growth(self, state: EpochState) -> bool:
        return (state.epoch >= self.config.warmup_epochs and self.since_improvement >= self.config.patience
                and len(self.in_flight) < self.config.max_active_seeds
                and self.germinations < self.config.max_germinations and not self._grafting())

    def _grafting(self) -> bool:
        """With ``one_graft_at_a_time``: whether an adaptation's units are not yet fully blended in."""
        early = (Code.GERMINATED, Code.LOADING, Code.TRAINING, Code.GRAFTING)
        return self.config.one_graft_at_a_time and any(self.kasmina.state(*k) in early for k in self.in_flight)

    def _advance(self, key, ad: _Adaptation, state: EpochState) -> str | None:
        code = self.kasmina.state(*key)
        ready = self.kasmina.is_ready(*key)
        if code == Code.GERMINATED:
            return self._command(key, "promote", ad.kernel, state, reason="load the kernel")
        if code in (Code.TRAINING, Code.GRAFTING, Code.STABILIZATION) and ready:
            return self._command(key, "advance", ad.kernel, state, reason=f"{code.name} complete")
        timeout = self.config.training_timeout_epochs
        if code == Code.TRAINING and timeout and state.epoch - ad.germinated_epoch >= timeout:
            return self._command(key, "cull", ad.kernel, state,
                                 reason=f"not ready to graft {state.epoch - ad.germinated_epoch} epochs after "
                                        f"germination (training_timeout_epochs={timeout})")
        if code == Code.EVALUATING and ready:
            if state.val_accuracy >= ad.pre_metric - self.config.accept_tolerance:
                return self._command(key, "advance", ad.kernel, state,
                                     reason=f"val acc {state.val_accuracy:.4f} vs {ad.pre_metric:.4f} before")
            return self._command(key, "cull", ad.kernel, state,
                                 reason=f"val acc fell to {state.val_accuracy:.4f} from {ad.pre_metric:.4f}")
        if code == Code.FINE_TUNING:
            ad.fine_tune_since = ad.fine_tune_since if ad.fine_tune_since is not None else state.epoch
            if state.epoch - ad.fine_tune_since >= self.config.fine_tune_epochs:
                if state.val_accuracy >= ad.pre_metric + self.config.min_improvement:
                    return self._command(key, "fossilize", ad.kernel, state,
                                         reason=f"val acc {state.val_accuracy:.4f} >= {ad.pre_metric:.4f} before")
                return self._command(key, "cull", ad.kernel, state, reason="no improvement after fine-tuning")
        if code == Code.ERROR_RECOVERY:
            return self._command(key, "cull", ad.kernel, state, reason="kernel failed at run time")
        if code in OUTCOME_CODES:
            self.finish(key, ad, code.name, state)
        return None

    def observe_transitions(self, transitions, state: EpochState) -> None:
        """After Kasmina applied the commands: close adaptations that just ended (fossilized, culled on load...)."""
        for tr in transitions:
            key = (tr.layer_id, tr.seed_id)
            ad = self.in_flight.get(key)
            if ad is not None and tr.to_state in OUTCOMES:
                self.finish(key, ad, tr.to_state.value, state, reason=tr.reason)

    def finish(self, key, ad: _Adaptation, outcome: str, state: EpochState, reason: str = "") -> None:
        self.in_flight.pop(key, None)
        kernel = self.urza.kernels.get(ad.kernel)
        report = kernel.report if kernel else None
        reward = compute_reward(outcome, ad.pre_metric, state.val_accuracy, report)
        params_now = sum(p.numel() for p in self.model.parameters())
        fr = FieldReport(
            envelope=self.envelopes.next(f"blueprint/{ad.blueprint_id}/field/{self.run_id}"),
            blueprint_id=ad.blueprint_id, seed_id=seed_name(*key), pre_metric=ad.pre_metric,
            post_metric=state.val_accuracy, outcome=outcome,
            eval_metrics={"val_loss": state.val_loss, "val_accuracy": state.val_accuracy,
                          "epochs": float(state.epoch - ad.germinated_epoch),
                          "params_added": float(params_now - ad.params_before)},
            kernel_artifact_id=ad.kernel, reward=reward, decision_id=ad.decision_id,
        )
        self.field_reports.append(fr)
        if self.publisher is not None:
            self.publisher.publish(fr)
        if outcome == "CULLED":
            self.culled_designs.setdefault(key, set()).add(ad.blueprint_id)
            self.reset_at[key] = state.epoch + self.kasmina.config.embargo_epochs  # the one embargo: Kasmina enforces it
        self.lineage.append({
            "layer": self.kasmina.layer(key[0]).path, "layer_id": key[0], "seed": key[1],
            "blueprint_id": ad.blueprint_id, "blueprint": self._blueprint_name(ad.blueprint_id),
            "kernel_artifact_id": ad.kernel, "germinated_epoch": ad.germinated_epoch, "ended_epoch": state.epoch,
            "outcome": outcome, "pre_val_accuracy": ad.pre_metric, "post_val_accuracy": state.val_accuracy,
            "reward": reward, "why": reason or "",
        })

    def _blueprint_name(self, blueprint_id: str) -> str:
        bp = self.urza.blueprints.get(blueprint_id)
        return bp.name if bp else blueprint_id[:12]

    # ------------------------------------------------------------------ germination
    def _locations(self, epoch: int) -> list[tuple[float, int, int, int]]:
        """Dormant seeds that may grow, best first: (score, layer, seed, chunk width). The score is the growth
        signal of the seed's better input (``self._signal`` keeps which input and the chunk's waste)."""
        out, self._signal = [], {}
        for layer in self.kasmina.layers:
            health = layer.health()
            for i, h in enumerate(health):
                key = (layer.layer_id, i)
                if layer._codes[i] != Code.DORMANT or key in self.reset_at or h["samples"] == 0:
                    continue
                waste = 0.5 * h["dead_node_ratio"] + 0.5 * h["avg_correlation"]
                growth, source = h["growth_signal"], h["growth_source"]  # KasminaLayer.growth_signals says how
                self._signal[key] = (growth, source, waste)
                width = layer.bounds[i][1] - layer.bounds[i][0]
                out.append((growth, layer.layer_id, i, width))
        self._measured = any(score > 0 for score, *_ in out)
        if not self._measured:  # nothing measured (Conv2d layers, a frozen host): waste
            out = [(self._signal[(l, i)][2], l, i, w) for _, l, i, w in out]
        out.sort(key=lambda t: (-t[0], -self._signal[(t[1], t[2])][2], t[1], t[2]))
        return out

    def _device(self) -> torch.device:
        """The device of the model Kasmina wraps (its first seed layer's weights)."""
        return self.kasmina.layer(0).base_layer.weight.device

    def _kernels_for(self, key, width: int, tags=()) -> list[tuple[float, object]]:
        """Validated kernels for ``width`` carrying the preferred tags (and ``tags``), best first by the heuristic."""
        tried = self.culled_designs.get(key, set())
        layer = self.kasmina.layer(key[0])
        in_features = layer.base_layer.in_features if layer.channel_dim == -1 else None
        model_features = self.kasmina.model_input.features if layer.channel_dim == -1 else None
        source = self._signal.get(key, (0.0, "layer", 0.0))[1]
        scored = []
        device = self._device()
        for k in self.urza.query(sorted(set(self.config.preferred_tags) | set(tags)), features=width,
                                 in_features=in_features, model_features=model_features, limit=1000):
            if not runs_on(k.hardware, device):  # a kernel built for other hardware than the model's
                continue
            karn = bool(getattr(self.urza.blueprints.get(k.blueprint_id), "mutation", ""))
            if karn and self.config.karn_designs is False:
                continue
            score = -(k.risk_score or 0.0) - (1.0 if k.blueprint_id in tried else 0.0) \
                + (0.1 if "trainable" in k.tags else 0.0) + (0.05 if "high_speed" in k.tags else 0.0) \
                + (25.0 if karn and self.config.karn_designs == "prefer" else 0.0)
            if self.config.field_evidence:
                # what earlier runs of this home saw: a design that fossilized where it was grafted gains up to
                # what halving its size would (log2 2), one always culled loses more
                score += math.log2(field_factor(self.field_record.get(k.blueprint_id)))
            if k.in_features is not None:
                # a design that reads a wide input adds units the chunk alone cannot (issue #12): those reading the
                # input with the stronger growth signal come first, then the others, the smallest first, since
                # growth has to pay per parameter
                score += (100.0 if k.input_source == source else 50.0) - math.log2(1 + _params(k))
            scored.append((score, k))
        scored.sort(key=lambda t: (-t[0], t[1].artifact_id))
        return scored

    def _germinate(self, state: EpochState) -> str | None:
        locations = self._locations(state.epoch)
        self._no_candidate = self._why_no_location() if not locations else None
        if locations and self._measured and self.first_signal and self.config.min_growth_ratio > 0:
            floor = self.config.min_growth_ratio * self.first_signal
            if locations[0][0] < floor:
                self._no_candidate = (f"the strongest growth signal, {locations[0][0]:.3g}, is below "
                                      f"{self.config.min_growth_ratio} x the first germination's "
                                      f"{self.first_signal:.3g}: growth has stopped paying")
                return None
        widths = set()
        for score, layer_id, seed, width in locations:
            kernels = self._kernels_for((layer_id, seed), width)
            if not kernels:
                widths.add(width)
                continue
            best_score, best = kernels[0]
            candidates = [DecisionCandidate(layer_id=l, seed_id=s, score=sc) for sc, l, s, _ in locations[:5]] + [
                DecisionCandidate(layer_id=layer_id, seed_id=seed, score=ks, kernel_artifact_id=k.artifact_id)
                for ks, k in kernels[:5]]
            growth, source, waste = self._signal.get((layer_id, seed), (0.0, "layer", score))
            if self._measured and self.first_signal is None:
                self.first_signal = growth
            return self._start((layer_id, seed), best, state, candidates,
                               reason=f"plateau; growth signal {growth:.3g} from the {source}'s input; chunk waste "
                                      f"{waste:.3f}; {self._blueprint_name(best.blueprint_id)}")
        if widths:
            self._no_candidate = (f"no validated kernel in Urza for chunk width {', '.join(map(str, sorted(widths)))}"
                                  f" carrying {sorted(self.config.preferred_tags)}")
        return None

    def _why_no_location(self) -> str:
        codes = [c for layer in self.kasmina.layers for c in layer._codes]
        if not any(c == Code.DORMANT for c in codes):
            return "no dormant seed left"
        if all(key in self.reset_at for key in ((l.layer_id, i) for l in self.kasmina.layers
                                                 for i, c in enumerate(l._codes) if c == Code.DORMANT)):
            return "every dormant seed is under embargo after a cull"
        return "no dormant seed has health statistics yet"

    def _start(self, key, kernel, state: EpochState, candidates, reason: str, query_tags=None) -> str:
        """Germinate ``kernel`` on the seed ``key`` and track the adaptation to its end."""
        self.in_flight[key] = _Adaptation(key[0], key[1], kernel.artifact_id, kernel.blueprint_id, state.epoch,
                                          state.val_accuracy, sum(p.numel() for p in self.model.parameters()))
        self.germinations += 1
        self.since_improvement = 0
        said = self._command(key, "request_germination", kernel.artifact_id, state, reason=reason,
                             candidates=candidates, tags=query_tags or self.config.preferred_tags)
        self.in_flight[key].decision_id = self.decisions[-1].decision_id
        return said

    # ------------------------------------------------------------------ commands and decisions
    def _command(self, key, command: str, kernel: str, state: EpochState, reason: str,
                 candidates=None, tags=None) -> str:
        """Decide, then carry the decision out: Tamiyo publishes the command (with the decision's id) and Kasmina
        applies it at the next epoch boundary."""
        decision = self._decide(state, command, key, kernel or None, candidates or [], reason=reason, query_tags=tags)
        cmd = KasminaControlCommand(
            envelope=self.command_envelopes.next(seed_name(*key)), target_layer_id=key[0], target_seed_id=key[1],
            command=command, kernel_artifact_id=kernel or self.kasmina.kernel_of(*key), selected_for_tags=tags,
            grafting_strategy="cosine_ramp", command_id=uuid.uuid4().hex, epoch=self.kasmina.epoch,
            decision_id=decision.decision_id)
        if self.publisher is not None:
            self.publisher.publish(cmd)
        self.kasmina.submit(cmd)
        return f"{command} {seed_name(*key)}"

    def _decide(self, state: EpochState, action: str, key, kernel, candidates, reason: str,
                features: dict[str, float] | None = None, query_tags=None) -> TamiyoDecision:
        decision = TamiyoDecision(
            envelope=self.envelopes.next(f"run/{self.run_id}/tamiyo"), epoch=state.epoch,
            decision_id=uuid.uuid4().hex, policy=self.policy_name, action=action,
            target_layer_id=key[0] if key else None, target_seed_id=key[1] if key else None,
            chosen_kernel_artifact_id=kernel, query_tags=list(query_tags or self.config.preferred_tags),
            candidates=candidates,
            state_features={"val_loss": state.val_loss, "val_accuracy": state.val_accuracy,
                            "train_loss": state.train_loss, "since_improvement": float(self.since_improvement),
                            "in_flight": float(len(self.in_flight)), **(features or {})},
            reason=reason,
        )
        self.decisions.append(decision)
        if self.publisher is not None:
            self.publisher.publish(decision, key=f"run/{self.run_id}")
        return decision

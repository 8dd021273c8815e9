"""Kasmina: the seeds of a wrapped model, the commands they take, and the events they emit.

Commands (``KasminaControlCommand``) are queued by ``submit`` and applied only at the epoch boundary,
``end_epoch``, in the order they came. There, in this order: the state checksum sealed at the previous boundary is
verified (a mismatch raises :class:`StateChecksumError`, Tolaria's signal to roll back); one ``SeedTelemetry``
batch per layer is published for the epoch that ended; the queued commands are applied, each transition published
as a ``SeedLifecycleTransition``; the checksum is sealed again.

A command appendix B does not allow is refused with an :class:`IllegalTransition` naming the seed, its state and
the command; refusals are returned in the boundary's report and never stop the other commands.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from torch import nn

from esper_runtime.kasmina.config import KasminaConfig
from esper_runtime.kasmina.exceptions import IllegalTransition, KasminaError, KernelLoadError, StateChecksumError
from esper_runtime.kasmina.kernels import ArtifactSource, KernelCache
from esper_runtime.kasmina.layer import KasminaLayer, ModelInput
from esper_runtime.kasmina.lifecycle import CHILD_STATES, NEEDS_READY, Code, Command, next_state
from esper_runtime.kasmina.state import HEALTH, StateLayout, kernel_hash
from streams.contracts import KasminaControlCommand, SeedHealth, SeedLifecycleTransition, SeedTelemetry
from streams.envelope import EnvelopeFactory
from streams.publisher import Publisher
from views.run_view import TAKEN_BACK

__all__ = ["Kasmina", "BoundaryReport", "seed_name"]

log = logging.getLogger("esper.kasmina")
PRODUCER = "kasmina/0.1.0"


def seed_name(layer_id: int, seed_id: int) -> str:
    return f"seed/{layer_id}/{seed_id}"


@dataclass
class BoundaryReport:
    epoch: int
    transitions: list[SeedLifecycleTransition] = field(default_factory=list)
    refused: list[IllegalTransition] = field(default_factory=list)
    params_changed: bool = False  # the optimizer must be rebuilt (an AdaptationSignal)


@dataclass
class _Seed:
    kernel_artifact_id: str = ""
    trainable: bool = False
    embargo_until: int = -1


class Kasmina:
    def __init__(
        self,
        layers: list[KasminaLayer],
        config: KasminaConfig,
        artifacts: ArtifactSource | None = None,
        publisher: Publisher | None = None,
        run_id: str | None = None,
    ):
        self.layers = layers
        self.config = config
        self.model_input = ModelInput()  # wrap() has the host's forward set it; children reading ``x0`` use it
        for layer in layers:
            layer.model_input = self.model_input
        self.cache = KernelCache(artifacts, config.cache_capacity) if artifacts is not None else None
        self.publisher = publisher
        self.run_id = run_id or uuid.uuid4().hex
        self.envelopes = EnvelopeFactory(self.run_id, PRODUCER)
        self._command_envelopes = EnvelopeFactory(self.run_id, "tamiyo/direct")
        self.epoch = 0
        self._queue: list[KasminaControlCommand] = []
        self._seeds = {(l.layer_id, i): _Seed() for l in layers for i in range(l.num_seeds)}
        self._pending_events: list[SeedLifecycleTransition] = []
        self.run_config: dict | None = None  # the resolved configuration of the run that trains it (its trainer's)
        self._params_changed = False
        self.events_published = 0
        self.lineage: list[dict] = []  # which blueprint grew where and how it ended (the controller appends)
        for layer in layers:
            layer.on_runtime_error = self._on_runtime_error
        self._sealed = self._checksums()

    def prepare(self) -> None:
        """What training needs before its first step and a constructor must not do: import what loading a compiled
        kernel needs (about a second, once per process), so the first germination does not pay for it."""
        if self.cache is not None:
            self.cache.warm_up()

    # ------------------------------------------------------------------ queries
    def layer(self, layer_id: int) -> KasminaLayer:
        if not 0 <= layer_id < len(self.layers):
            raise KasminaError(f"no layer {layer_id} (this model has {len(self.layers)} seed layers)")
        return self.layers[layer_id]

    def state(self, layer_id: int, seed_id: int) -> Code:
        return self.layer(layer_id)._codes[seed_id]

    def is_ready(self, layer_id: int, seed_id: int) -> bool:
        return bool(self.layer(layer_id).ready[seed_id])

    def kernel_of(self, layer_id: int, seed_id: int) -> str:
        return self._seeds[(layer_id, seed_id)].kernel_artifact_id

    def seeds(self):
        for layer in self.layers:
            for i in range(layer.num_seeds):
                yield layer.layer_id, i, layer._codes[i]

    def seed_shapes(self) -> set[tuple[int, int | None]]:
        """(chunk width, input width) pairs kernels must be built for: each seed's chunk width with its layer's
        input width (None for a Conv2d layer, where designs that read a wide input do not fit) and, once the model
        has seen a (batch, features) input, with the model's input width for designs that read ``x0``."""
        shapes = {(b - a, layer.base_layer.in_features if layer.channel_dim == -1 else None)
                  for layer in self.layers for a, b in layer.bounds}
        if self.model_input.features is not None:
            shapes |= {(b - a, self.model_input.features) for layer in self.layers if layer.channel_dim == -1
                       for a, b in layer.bounds}
        return shapes

    def num_seeds(self) -> int:
        return sum(l.num_seeds for l in self.layers)

    # ------------------------------------------------------------------ commands
    def command(self, layer_id: int, seed_id: int, command: str, kernel_artifact_id: str = "",
                grafting_strategy: str = "cosine_ramp", tags: list[str] | None = None) -> KasminaControlCommand:
        """Build, publish and queue a command, as a controller does; applied at the next ``end_epoch``.
        (``submit`` queues a command that was published elsewhere.)"""
        known = (layer_id, seed_id) in self._seeds
        cmd = KasminaControlCommand(
            envelope=self._command_envelopes.next(seed_name(layer_id, seed_id)),
            target_layer_id=layer_id, target_seed_id=seed_id, command=command,
            kernel_artifact_id=kernel_artifact_id or (self.kernel_of(layer_id, seed_id) if known else ""),
            selected_for_tags=tags, grafting_strategy=grafting_strategy, command_id=uuid.uuid4().hex, epoch=self.epoch,
        )
        if self.publisher is not None:
            self.publisher.publish(cmd)
            self.events_published += 1
        self.submit(cmd)
        return cmd

    def submit(self, command: KasminaControlCommand) -> None:
        self._queue.append(command)

    # ------------------------------------------------------------------ the epoch boundary
    def expect_epoch_steps(self, steps: int) -> None:
        """The trainer's epoch length, so ``samples_per_epoch`` holds from the first epoch (without it, from the
        second: each layer measures the epoch it saw)."""
        for layer in self.layers:
            layer.expect_epoch_steps(steps)

    def end_epoch(self, epoch: int) -> BoundaryReport:
        self.verify()
        self.epoch = epoch
        report = BoundaryReport(epoch)
        self._publish_telemetry(epoch)
        queue, self._queue = self._queue, []
        for cmd in queue:
            try:
                self._apply(cmd, epoch)
            except IllegalTransition as exc:
                log.warning("%s", exc)
                report.refused.append(exc)
        for layer in self.layers:
            layer.end_epoch_latency()
            layer.reset_health()
        report.transitions = self._flush_events()
        report.params_changed, self._params_changed = self._params_changed, False
        self._sealed = self._checksums()
        return report

    def verify(self) -> None:
        """Raise StateChecksumError if the control state changed since the last boundary sealed it."""
        now = self._checksums()
        for (layer, before), (_, after) in zip(self._sealed, now):
            if before != after:
                raise StateChecksumError(
                    f"layer {layer} ({self.layers[layer].path}): seed state checksum {after:08x} != sealed {before:08x}"
                )

    def _checksums(self) -> list[tuple[int, int]]:
        return [(l.layer_id, StateLayout.checksum(dict(l.named_buffers(recurse=False)))) for l in self.layers]

    def _apply(self, cmd: KasminaControlCommand, epoch: int) -> None:
        layer = self.layer(cmd.target_layer_id)
        i = cmd.target_seed_id
        name = seed_name(cmd.target_layer_id, i)
        if not 0 <= i < layer.num_seeds:
            raise IllegalTransition(name, "-", cmd.command, f"layer {layer.layer_id} has {layer.num_seeds} seeds")
        seed = self._seeds[(layer.layer_id, i)]
        state = layer._codes[i]
        target = next_state(state, cmd.command, seed.trainable)
        if target is None:
            raise IllegalTransition(name, state.name, cmd.command, "not a transition of the lifecycle (appendix B)")
        if (state, cmd.command) in NEEDS_READY and not bool(layer.ready[i]):
            raise IllegalTransition(name, state.name, cmd.command, "the seed has not signalled is_ready_for_transition")
        if cmd.command == Command.REQUEST_GERMINATION:
            if not cmd.kernel_artifact_id:
                raise IllegalTransition(name, state.name, cmd.command, "no kernel_artifact_id given")
            if epoch < seed.embargo_until:
                raise IllegalTransition(name, state.name, cmd.command,
                                        f"slot under embargo until epoch {seed.embargo_until} after a cull")
            seed.kernel_artifact_id = cmd.kernel_artifact_id
        self._transition(layer, i, target, epoch, cmd.command_id, reason=cmd.command)
        if target == Code.LOADING:
            self._load(layer, i, epoch, cmd.command_id)

    def _load(self, layer: KasminaLayer, i: int, epoch: int, command_id: str) -> None:
        seed = self._seeds[(layer.layer_id, i)]
        try:
            if self.cache is None:
                raise KernelLoadError("no artifact source configured (wrap(..., artifacts=...))")
            kernel = self.cache.get(seed.kernel_artifact_id)
            width = layer.bounds[i][1] - layer.bounds[i][0]
            if kernel.features != width:
                raise KernelLoadError(f"kernel {kernel.artifact_id} is built for {kernel.features} features, "
                                      f"the seed's chunk has {width}")
            reads = getattr(kernel.prototype, "in_features", None)
            source = getattr(kernel.prototype, "input_source", None) or "layer"
            has = None if layer.channel_dim != -1 else \
                layer.base_layer.in_features if source == "layer" else self.model_input.features
            if reads is not None and reads != has:
                raise KernelLoadError(f"kernel {kernel.artifact_id} reads a {source} input of {reads} features; "
                                      f"{layer.path} is not a Linear layer "
                                      + ("with that many inputs" if source == "layer" else
                                         f"in a model whose input has that many ({has})"))
        except KernelLoadError as exc:
            self._transition(layer, i, Code.CULLED, epoch, command_id, reason=f"load failed: {exc}")
            return
        seed.trainable = kernel.trainable
        layer.attach(i, kernel.instantiate(), kernel_hash(kernel.artifact_id), kernel.trainable)
        self._params_changed = True
        self._transition(layer, i, Code.TRAINING if kernel.trainable else Code.GRAFTING, epoch, command_id,
                         reason=f"loaded in {self.cache.last_load_ms:.1f} ms" if kernel.artifact_id else "loaded")

    def _transition(self, layer: KasminaLayer, i: int, target: Code, epoch: int, command_id: str | None,
                    reason: str = "") -> None:
        seed = self._seeds[(layer.layer_id, i)]
        before = layer._codes[i]
        if target == Code.FOSSILIZED and not _finite(layer.seeds[str(i)]):
            target, reason = Code.CULLED, "fossilization refused: non-finite parameters"
        if target not in CHILD_STATES and str(i) in layer.seeds:
            layer.detach_child(i)
            self._params_changed = True
        if target in (Code.STABILIZATION, Code.EVALUATING, Code.FOSSILIZED, Code.GRAFTING, Code.FINE_TUNING):
            self._params_changed = True  # the set of parameters the host optimizer should train changed
        if target == Code.CULLED:
            seed.embargo_until = epoch + self.config.embargo_epochs
        layer.set_state(i, target, epoch)
        kernel = seed.kernel_artifact_id or None
        if target == Code.DORMANT:
            seed.kernel_artifact_id, seed.trainable = "", False
        self._pending_events.append(SeedLifecycleTransition(
            envelope=self.envelopes.next(seed_name(layer.layer_id, i)), layer_id=layer.layer_id, seed_id=i,
            from_state=before.state, to_state=target.state, epoch=epoch, command_id=command_id,
            kernel_artifact_id=kernel, reason=reason,
        ))

    def _on_runtime_error(self, layer: KasminaLayer, i: int, exc: BaseException) -> None:
        """A kernel raised during a forward: identity path, ERROR_RECOVERY, evicted, reported. The step goes on."""
        seed = self._seeds[(layer.layer_id, i)]
        log.error("seed %s: kernel %s raised %r; identity path from now on", seed_name(layer.layer_id, i),
                  seed.kernel_artifact_id, exc)
        if self.cache is not None:
            self.cache.evict(seed.kernel_artifact_id)
        self._transition(layer, i, Code.ERROR_RECOVERY, self.epoch, None,
                         reason=f"runtime error: {type(exc).__name__}: {exc}"[:500])
        self._flush_events()
        self._sealed = self._checksums()  # a legitimate transition, not corruption

    # ------------------------------------------------------------------ events
    def _flush_events(self) -> list[SeedLifecycleTransition]:
        events, self._pending_events = self._pending_events, []
        if self.publisher is not None:
            for ev in events:
                self.publisher.publish(ev)
            self.events_published += len(events)
        return events

    def _publish_telemetry(self, epoch: int) -> None:
        if self.publisher is None:
            return
        for layer in self.layers:
            health = layer.health()
            alpha, ready = layer.alpha_blend.tolist(), layer.ready.tolist()
            seeds = [
                SeedHealth(
                    seed_id=i, state=layer._codes[i].state, alpha=alpha[i],
                    chunk_variance=h["chunk_variance"], dead_node_ratio=h["dead_node_ratio"],
                    avg_correlation=h["avg_correlation"], exec_latency_us=h["exec_latency_us"],
                    is_ready_for_transition=bool(ready[i]), growth_signal=h["growth_signal"],
                    growth_from_model=h["growth_source"] == "model",
                    kernel_artifact_id=self._seeds[(layer.layer_id, i)].kernel_artifact_id or None,
                )
                for i, h in enumerate(health)
            ]
            self.publisher.publish(SeedTelemetry(
                envelope=self.envelopes.next(f"layer/{layer.layer_id}"), epoch=epoch, layer_id=layer.layer_id,
                layer_name=layer.path, seeds=seeds,
            ))
            self.events_published += 1

    # ------------------------------------------------------------------ checkpoint support
    def structure(self) -> list[dict]:
        """What a checkpoint needs besides the state_dict to rebuild the seeds: which hold which kernel."""
        out = []
        for layer in self.layers:
            for i in range(layer.num_seeds):
                seed = self._seeds[(layer.layer_id, i)]
                out.append({"layer": layer.layer_id, "seed": i, "code": int(layer._codes[i]),
                            "kernel": seed.kernel_artifact_id, "trainable": seed.trainable,
                            "embargo_until": seed.embargo_until, "phase_steps": layer._phase_steps[i]})
        return out

    def restore(self, structure: list[dict]) -> None:
        """Rebuild the seeds' children as ``structure`` says (then load the checkpoint's state_dict)."""
        for entry in structure:
            layer, i = self.layer(entry["layer"]), entry["seed"]
            seed = self._seeds[(layer.layer_id, i)]
            code = Code(entry["code"])
            layer.detach_child(i)
            seed.kernel_artifact_id, seed.trainable = entry["kernel"], entry["trainable"]
            seed.embargo_until = entry["embargo_until"]
            if code in CHILD_STATES:
                kernel = self.cache.get(entry["kernel"])
                layer.attach(i, kernel.instantiate(), kernel_hash(kernel.artifact_id), kernel.trainable)
            layer.set_state(i, code, int(layer.last_update_epoch[i]))
            layer._phase_steps[i] = entry["phase_steps"]
        self._queue.clear()
        self._pending_events.clear()
        self._params_changed = True

    def take_back(self, logged: dict[str, str], epoch: int) -> list[str]:
        """After a restore to the checkpoint of ``epoch``: for each seed the log shows in another state
        (``logged``: seed name -> state name, DORMANT when absent), a transition from the log's state back to the
        restored one, published. A run killed after an epoch's transitions reached the log and before that epoch's
        checkpoint resumes this way, as its epochs past the checkpoint are taken back by a ``RollbackPerformed``.
        Returns the seeds taken back."""
        taken = []
        for layer_id, i, code in self.seeds():
            name = seed_name(layer_id, i)
            was = logged.get(name, Code.DORMANT.name)
            if was == code.name:
                continue
            self._pending_events.append(SeedLifecycleTransition(
                envelope=self.envelopes.next(name), layer_id=layer_id, seed_id=i, from_state=Code[was].state,
                to_state=code.state, epoch=epoch, command_id=None,
                kernel_artifact_id=self._seeds[(layer_id, i)].kernel_artifact_id or None,
                reason=f"{TAKEN_BACK} to the checkpoint of epoch {epoch}"))
            taken.append(name)
        self._flush_events()
        return taken

    def reseal(self) -> None:
        """Seal the checksum over the current state (after a restore)."""
        self._sealed = self._checksums()

    def recon_error(self, layer_id: int, seed_id: int) -> float:
        return float(self.layer(layer_id).health_accumulator[seed_id, HEALTH["recon_error"]])


def _finite(module: nn.Module) -> bool:
    import torch

    return all(bool(torch.isfinite(p).all()) for p in module.parameters())

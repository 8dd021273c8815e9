"""Tolaria: the training loop and heartbeat of a morphogenetic run.

Each epoch: train (Adam, cosine schedule), validate, publish ``EpochCompleted`` and a ``SystemStatePacket``; then
the boundary — Tamiyo decides, Kasmina applies the commands, and if seeds added or froze parameters the optimizer
is rebuilt (keeping the state of parameters it already had) and an ``AdaptationSignal`` says so.

Checkpoints hold the host and seeds (``state_dict``), Kasmina's structure, Tamiyo's state and the log offsets they
correspond to, together. A NaN loss, a loss spike (``loss_spike_factor`` × the recent median) or a seed-state
checksum failure restores the last checkpoint of all three in lockstep; the seeds that were adapting and not yet
accepted (before FINE_TUNING) are then locked (ROLLED_BACK) and reported.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import statistics
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from esper_runtime.devices import hardware_context
from esper_runtime.durable import write_durably
from esper_runtime.config import TolariaConfig
from esper_runtime.rng import seeded
from esper_runtime.stops import held, stop_point
from esper_runtime.run.data import DataError, make_loader
from esper_runtime.kasmina import Code, MorphableModel, StateChecksumError
from esper_runtime.kasmina.lifecycle import CHILD_STATES
from esper_runtime.tamiyo.heuristic import EpochState, TamiyoController
from streams.contracts import (
    AdaptationSignal,
    CheckpointSaved,
    EpochCompleted,
    RollbackPerformed,
    RunCompleted,
    RunFailed,
    RunStarted,
    SystemStatePacket,
    TopicOffset,
)
from streams.envelope import EnvelopeFactory
from streams.publisher import Publisher
from esper_runtime.tolaria.exceptions import TrainingError

__all__ = ["TolariaTrainer", "History", "Checkpoint", "TrainingError"]

PRODUCER = "tolaria/0.1.0"


@dataclass
class History:
    """What ``train()`` returns beside the model: one record per kept epoch (``epoch``, ``train_loss``,
    ``val_loss``, ``val_accuracy`` — R^2 for regression, with ``val_r2`` and ``val_rmse`` —, ``params``, ``lr``)
    and each rollback (``from_epoch``, ``to_epoch``, ``trigger``, ``locked`` seeds)."""

    epochs: list[dict] = field(default_factory=list)
    rollbacks: list[dict] = field(default_factory=list)


@dataclass
class Checkpoint:
    epoch: int
    model_state: dict
    structure: list[dict]
    tamiyo_state: dict
    offsets: list[tuple[str, int, int]]
    checkpoint_id: str


def _write_tensors(path: Path, obj) -> str:
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    write_durably(path, data)
    return hashlib.sha256(data).hexdigest()


def _read_tensors(path: Path, sha256: str):
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{path.name}: its SHA-256 does not match the checkpoint's record")
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class TolariaTrainer:
    """Trains a (wrapped) model under Tamiyo, one epoch boundary at a time, and publishes the run to the log.

    ``model`` is a ``MorphableModel`` from ``wrap`` (or a plain ``nn.Module`` for a baseline without seeds);
    ``controller`` a ``TamiyoController`` (None: no growth). ``train_data`` and ``val_data`` are torch Datasets of
    ``(features, target)``, DataLoaders, or ``(x, y)`` tensor pairs; they are drawn in mini-batches of
    ``config.batch_size``. ``task`` names the run on the log; ``objective`` is ``"classification"``
    (cross-entropy, accuracy) or ``"regression"`` (MSE; R^2 stands in the accuracy fields, RMSE in the history).
    ``checkpoint_dir`` (a path or str) keeps ``last.json`` and the weights-only files it names there;
    ``run_config`` is the configuration recorded in ``RunStarted`` and the checkpoint (default: the sections the
    trainer knows); ``on_epoch(record)`` is called after each kept epoch.
    """

    def __init__(self, model: MorphableModel, controller: TamiyoController | None = None,
                 config: TolariaConfig | None = None, train_data=None, val_data=None,
                 publisher: Publisher | None = None, run_id: str | None = None, task: str = "",
                 loss_fn: nn.Module | None = None, checkpoint_dir: str | Path | None = None, on_epoch=None,
                 objective: str = "classification", run_config: dict | None = None, num_workers: int = 0,
                 count_flops: bool = True):
        if train_data is None or val_data is None:
            raise TrainingError("TolariaTrainer needs train_data and val_data: torch Datasets of (features, target), "
                                "DataLoaders or (x, y) tensor pairs")
        if objective not in ("classification", "regression"):
            raise TrainingError(f"objective must be classification or regression, not {objective!r}")
        self.model = model
        self.kasmina = getattr(model, "kasmina", None)  # None: a plain model (a baseline) with no seeds
        self.controller = controller
        self.config = config or TolariaConfig()
        config = self.config
        self.objective = objective
        self.publisher = publisher if publisher is not None else getattr(self.kasmina, "publisher", None)
        self.run_id = run_id or (self.kasmina.run_id if self.kasmina is not None else uuid.uuid4().hex)
        self.task = task
        self.loss_fn = loss_fn or (nn.MSELoss() if objective == "regression" else nn.CrossEntropyLoss())
        self.envelopes = EnvelopeFactory(self.run_id, PRODUCER)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.on_epoch = on_epoch
        self.run_config = run_config
        self.history = History()
        self.global_step = 0
        self.epoch = 0
        self._gen = torch.Generator().manual_seed(config.seed)
        self.train_loader = make_loader(train_data, config.batch_size, True, self._gen, num_workers)
        self.val_loader = make_loader(val_data, max(config.batch_size, 1024), False, None, num_workers)
        self._born: dict[torch.nn.Parameter, int] = {}
        self.optimizer = self._new_optimizer()
        self._last_good: Checkpoint | None = None
        self._recent_losses: list[float] = []
        self._resumed: int | None = None  # the checkpoint epoch this trainer continues after (resume())
        self.count_flops = count_flops
        self.epoch_flops = 0
        self._flops_per_row: dict[tuple, float] = {}
        self.flops_total = 0  # every published epoch's train_flops, re-trained epochs included (as SQL sums them)

    @property
    def device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def resolved_config(self) -> dict:
        """The configuration this run records (RunStarted, checkpoints): the given one, else what it knows."""
        if self.run_config is not None:
            return self.run_config
        doc = {"tolaria": self.config.model_dump(mode="json"), "objective": self.objective}
        if self.kasmina is not None:
            doc["kasmina"] = self.kasmina.config.model_dump(mode="json")
        if self.controller is not None:
            doc["tamiyo"] = self.controller.config.model_dump(mode="json")
        return doc

    # ------------------------------------------------------------------ optimizer
    def _lr(self, epoch: int, born: int = 1) -> float:
        """Cosine decay from a parameter's first epoch to the last: the host's parameters (born at epoch 1) follow
        the usual schedule; a seed's child, born mid-run, gets a schedule of its own over the epochs it has left."""
        if self.config.schedule == "constant":
            return self.config.lr
        span = max(1, self.config.epochs - born + 1)  # parameters born at the last boundary still get a rate
        return 0.5 * self.config.lr * (1 + math.cos(math.pi * min(max(epoch - born, 0), span) / span))

    def _new_optimizer(self, old: torch.optim.Optimizer | None = None, epoch: int = 1) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups: dict[int, list] = {}
        for p in params:
            groups.setdefault(self._born.setdefault(p, epoch), []).append(p)
        opt = torch.optim.Adam([{"params": ps, "born": b, "lr": self._lr(epoch, b)} for b, ps in sorted(groups.items())],
                               lr=self.config.lr, weight_decay=self.config.weight_decay)
        if old is not None:  # keep Adam's moments for parameters that survive the rebuild
            for p in params:
                if p in old.state:
                    opt.state[p] = old.state[p]
        return opt

    # ------------------------------------------------------------------ events
    def _publish(self, event) -> None:
        if self.publisher is not None:
            self.publisher.publish(event)

    def _env(self):
        return self.envelopes.next(f"run/{self.run_id}")

    # ------------------------------------------------------------------ the loop
    def train(self) -> tuple[MorphableModel, History]:
        """Train for ``config.epochs`` epochs, growing where Tamiyo decides; return ``(model, history)``.

        The run is on the log from ``RunStarted`` to ``RunCompleted``; if anything goes wrong once it has started
        (bad data in a batch, an error in the model, Ctrl-C) a ``RunFailed`` says why before the error propagates,
        so no run stays open on the log."""
        if self.kasmina is not None:
            self.kasmina.prepare()
            self.kasmina.run_config = self.resolved_config()  # what save_model writes beside the weights
            try:
                self.kasmina.expect_epoch_steps(len(self.train_loader))
            except TypeError:  # a loader without a length (an iterable dataset): the layers measure the first epoch
                pass
        if self.controller is not None and hasattr(self.controller, "prepare"):
            self.controller.prepare()
        if self._resumed is None:
            self._publish(RunStarted(envelope=self._env(), task=self.task,
                                     config_json=json.dumps(self.resolved_config(), sort_keys=True, default=str),
                                     host_params=count_params(self.model), epochs_planned=self.config.epochs))
        try:
            # the run's randomness is its own: seeded once at its start, the caller's RNG state restored after
            # a stop signal waits for a step or epoch boundary: none lands between an event's number and its send
            with seeded(None), held():
                status = self._loop()
        except BaseException as exc:
            self._publish(RunFailed(envelope=self._env(), epoch=self.epoch, error_type=type(exc).__name__,
                                    reason=(str(exc) or type(exc).__name__)[:2000]))
            if self.publisher is not None:
                self.publisher.flush()
            raise
        final = self.history.epochs[-1] if self.history.epochs else {"val_accuracy": 0.0, "epoch": 0}
        self._publish(RunCompleted(envelope=self._env(), epochs=int(final["epoch"]),
                                   final_accuracy=float(final["val_accuracy"]), final_params=count_params(self.model),
                                   status="completed" if status == "completed" else "aborted",
                                   detail="" if status == "completed" else status))
        if self.publisher is not None:
            self.publisher.flush()
        return self.model, self.history

    def _loop(self) -> str:
        cfg = self.config
        if self._resumed is None:
            torch.manual_seed(cfg.seed)
            self._checkpoint(0)
            epoch = 1
        else:
            epoch = self._resumed + 1
        while epoch <= cfg.epochs:
            stop_point()
            self.epoch = epoch
            t0 = time.perf_counter()
            lr = self._lr(epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr(epoch, group["born"])
            train_loss = self._train_epoch()
            val = self.evaluate()
            val_loss, val_acc = val
            trigger = self._trouble(train_loss)
            if trigger is None:
                state = EpochState(epoch, train_loss, val_loss, val_acc)
                self._publish(EpochCompleted(envelope=self._env(), epoch=epoch, train_loss=train_loss,
                                             val_loss=val_loss, val_accuracy=val_acc, params=count_params(self.model),
                                             learning_rate=lr, duration_ms=(time.perf_counter() - t0) * 1000,
                                             train_flops=self.epoch_flops))
                self.flops_total += self.epoch_flops
                self._publish(SystemStatePacket(
                    envelope=self._env(), epoch=epoch, global_step=self.global_step, train_loss=train_loss,
                    val_loss=val_loss, val_accuracy=val_acc,
                    active_seeds=sum(1 for _, _, c in self.kasmina.seeds() if c in CHILD_STATES) if self.kasmina else 0,
                    total_seeds=self.kasmina.num_seeds() if self.kasmina else 0,
                    hardware_context=hardware_context(self.device)))
                try:
                    trigger = self._boundary(state)
                except StateChecksumError as exc:
                    trigger = f"checksum_mismatch: {exc}"
            if trigger is not None:
                if len(self.history.rollbacks) >= cfg.max_rollbacks:
                    return f"aborted after {len(self.history.rollbacks)} rollbacks; last: {trigger}"
                epoch = self._rollback(epoch, trigger)
                continue
            record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_accuracy": val_acc,
                      "params": count_params(self.model), "lr": lr, "train_flops": self.epoch_flops}
            if self.objective == "regression":
                record |= {"val_r2": val_acc, "val_rmse": math.sqrt(max(val_loss, 0.0))}
            self.history.epochs.append(record)
            if self.on_epoch is not None:
                self.on_epoch(self.history.epochs[-1])
            if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:  # the last one always: resume finds the end
                self._checkpoint(epoch)
            epoch += 1
        return "completed"

    def _batch(self, batch, index: int, split: str):
        """A batch on the model's device, refused (naming the batch) if it holds NaN or infinity."""
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise DataError(f"{split} batch {index}: expected (features, target), got {type(batch).__name__}")
        x, y = (t.to(self.device, non_blocking=True) if isinstance(t, torch.Tensor) else torch.as_tensor(t)
                for t in batch)
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise DataError(f"{split} batch {index}: the features hold NaN or infinity")
        if y.is_floating_point() and not bool(torch.isfinite(y).all()):
            raise DataError(f"{split} batch {index}: the targets hold NaN or infinity")
        return x, y

    def _loss(self, out: torch.Tensor, y: torch.Tensor, index: int, split: str) -> torch.Tensor:
        if self.objective == "classification":
            if y.dim() == 2 and y.shape[1] == 1:
                y = y.squeeze(1)
            if out.dim() < 2:
                raise DataError(f"the model's output has shape {tuple(out.shape)}: a classifier returns "
                                f"(batch, classes) scores")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= out.shape[1]):
                raise DataError(f"{split} batch {index}: label {int(y.max()) if int(y.max()) >= out.shape[1] else int(y.min())} "
                                f"is out of range for a model with {out.shape[1]} outputs (labels 0..{out.shape[1] - 1})")
            return self.loss_fn(out, y.long())
        if y.dim() == 1 and out.dim() == 2 and out.shape[1] == 1:
            y = y.unsqueeze(1)
        if out.shape != y.shape:
            raise DataError(f"{split} batch {index}: the model returns {tuple(out.shape)}, the targets are "
                            f"{tuple(y.shape)}")
        return self.loss_fn(out, y.to(out.dtype))

    def _flops_key(self) -> tuple:
        """What one step's FLOPs per row depend on: the parameters that exist and train, and each seed's phase."""
        params = tuple((p.numel(), p.requires_grad) for p in self.model.parameters())
        seeds = tuple(c for _, _, c in self.kasmina.seeds()) if self.kasmina is not None else ()
        return params, seeds

    def _train_epoch(self) -> float:
        """One pass over the training data; ``self.epoch_flops`` gets the pass's counted FLOPs. Whenever the model's
        shape or a seed's phase is new, the first step runs under torch's FlopCounterMode (forward, backward, a
        seed's own TRAINING step; the optimizer's elementwise update is not counted); the epoch's FLOPs are that
        step's per row times the rows trained."""
        from torch.utils.flop_counter import FlopCounterMode

        self.model.train()
        total, count = 0.0, 0
        key = self._flops_key() if self.count_flops else None
        per_row = self._flops_per_row.get(key) if key is not None else None
        for index, batch in enumerate(self.train_loader):
            stop_point()  # nothing is published mid-epoch: a step boundary is a safe place to stop
            x, y = self._batch(batch, index, "training")
            counter = FlopCounterMode(display=False) if key is not None and per_row is None else None
            with counter if counter is not None else nullcontext():
                loss = self._loss(self.model(x), y, index, "training")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
            if counter is not None:
                per_row = self._flops_per_row[key] = counter.get_total_flops() / len(x)
            self.optimizer.step()
            total += loss.item() * len(x)
            count += len(x)
            self.global_step += 1
        if count == 0:
            raise DataError("the training data yielded no batches")
        self.epoch_flops = round(per_row * count) if per_row is not None else 0
        return total / count

    @torch.no_grad()
    def evaluate(self, data=None) -> tuple[float, float]:
        """``(loss, score)`` on the validation data (or ``data``): the score is accuracy for classification and
        R^2 for regression (higher is better either way, which is what Tamiyo's gates compare)."""
        loader = self.val_loader if data is None else make_loader(data, max(self.config.batch_size, 1024), False)
        self.model.eval()
        loss_sum, n, correct = 0.0, 0, 0
        sse = sum_y = sum_y2 = None
        for index, batch in enumerate(loader):
            x, y = self._batch(batch, index, "validation")
            out = self.model(x)
            loss_sum += self._loss(out, y, index, "validation").item() * len(x)
            n += len(x)
            if self.objective == "classification":
                correct += int((out.argmax(-1) == y.reshape(-1).long()).sum())
            else:
                y = y.reshape(out.shape).to(out.dtype)
                s = ((out - y) ** 2).sum(0).double(), y.sum(0).double(), (y ** 2).sum(0).double()
                sse, sum_y, sum_y2 = s if sse is None else (sse + s[0], sum_y + s[1], sum_y2 + s[2])
        if n == 0:
            raise DataError("the validation data yielded no batches")
        if self.objective == "classification":
            return loss_sum / n, correct / n
        sst = (sum_y2 - sum_y ** 2 / n).clamp_min(1e-12)
        return loss_sum / n, float((1 - sse / sst).mean())

    def _trouble(self, train_loss: float) -> str | None:
        if not math.isfinite(train_loss):
            return "nan"
        recent = self._recent_losses[-5:]
        if len(recent) >= 3 and train_loss > self.config.loss_spike_factor * statistics.median(recent):
            return f"loss_spike: {train_loss:.4f} > {self.config.loss_spike_factor} x median {statistics.median(recent):.4f}"
        self._recent_losses.append(train_loss)
        return None

    def _boundary(self, state: EpochState) -> str | None:
        kasmina = self.kasmina
        if kasmina is None:
            return None
        if self.controller is not None:
            self.controller.step(state)
            if self.controller.emergency:
                reason, self.controller.emergency = self.controller.emergency, None
                self._publish(AdaptationSignal(envelope=self._env(), epoch=state.epoch,
                                               optimizer_rebuild_required=False, emergency_rollback_required=True,
                                               reason=reason))
                return f"emergency_signal: {reason}"
        report = kasmina.end_epoch(state.epoch)
        if self.controller is not None:
            self.controller.observe_transitions(report.transitions, state)
        if report.params_changed:
            self.optimizer = self._new_optimizer(self.optimizer, epoch=state.epoch + 1)
        self._publish(AdaptationSignal(envelope=self._env(), epoch=state.epoch,
                                       optimizer_rebuild_required=report.params_changed,
                                       emergency_rollback_required=False,
                                       reason="; ".join(f"{t.to_state.value} seed/{t.layer_id}/{t.seed_id}"
                                                        for t in report.transitions)))
        return None

    # ------------------------------------------------------------------ checkpoints and rollback
    def _offsets(self) -> list[tuple[str, int, int]]:
        positions = getattr(self.publisher, "positions", None)
        if positions is None:
            return []
        self.publisher.flush()
        return sorted((t, p, o + 1) for (t, p), o in positions().items())

    def _checkpoint(self, epoch: int) -> None:
        kasmina = self.kasmina
        tag = f"e{epoch}-{uuid.uuid4().hex[:6]}"
        ckpt = Checkpoint(
            epoch=epoch,
            model_state={k: v.detach().clone() for k, v in self.model.state_dict().items()},
            structure=kasmina.structure() if kasmina is not None else [],
            tamiyo_state=self.controller.state_dict() if self.controller is not None else {},
            offsets=self._offsets(),
            checkpoint_id=f"{self.run_id}-{tag}",
        )
        self._last_good = ckpt
        path, digest = "", ""
        if self.checkpoint_dir is not None:
            # Tensors in weights-only loadable files named for this checkpoint; everything else in last.json, which
            # names them (nothing to unpickle). last.json is replaced last and the files it named before are removed
            # only then: a crash at any point leaves a last.json whose files are there and match its digests.
            folder = self.checkpoint_dir
            folder.mkdir(parents=True, exist_ok=True)
            model_file, resume_file = f"model-{tag}.pt", f"resume-{tag}.pt"
            digest = _write_tensors(folder / model_file, ckpt.model_state)
            resume_digest = _write_tensors(folder / resume_file, {
                "optimizer": self.optimizer.state_dict(), "generator": self._gen.get_state(),
                "torch_rng": torch.get_rng_state()})
            names = {p: n for n, p in self.model.named_parameters()}
            write_durably(folder / "last.json", json.dumps({
                "checkpoint_id": ckpt.checkpoint_id, "epoch": epoch, "run_id": self.run_id, "task": self.task,
                "model_file": model_file, "resume_file": resume_file,
                "model_sha256": digest, "resume_sha256": resume_digest, "kasmina": ckpt.structure,
                "tamiyo": ckpt.tamiyo_state, "lineage": self.kasmina.lineage if self.kasmina is not None else [],
                "config": self.resolved_config(), "global_step": self.global_step,
                "born": {names[p]: b for p, b in self._born.items() if p in names},
                "recent_losses": self._recent_losses, "history": {"epochs": self.history.epochs,
                                                                  "rollbacks": self.history.rollbacks},
                "offsets": [{"topic": t, "partition": p, "offset": o} for t, p, o in ckpt.offsets]},
                indent=1).encode())
            for stale in [*folder.glob("*.pt"), *folder.glob("*.tmp")]:  # earlier checkpoints', half-written files
                if stale.name not in (model_file, resume_file):
                    stale.unlink(missing_ok=True)
            path = str(folder / model_file)
        self._publish(CheckpointSaved(envelope=self._env(), epoch=epoch, checkpoint_id=ckpt.checkpoint_id, path=path,
                                      sha256=digest, offsets=[TopicOffset(topic=t, partition=p, offset=o)
                                                              for t, p, o in ckpt.offsets]))

    def resume(self, checkpoint_dir: str | Path | None = None, log_versions: dict[str, int] | None = None,
               log_epoch: int = 0, log_seeds: dict[str, str] | None = None) -> int:
        """Continue this run from the checkpoint ``checkpoint_dir`` holds (default: the trainer's own) instead of
        starting it: the model, seeds, Tamiyo, optimizer, random state and history come back as they were at that
        epoch boundary; ``train()`` then goes on from the next epoch. ``log_versions`` (each originator's last
        version on the log) keeps every event sequence gapless; epochs the log has past the checkpoint
        (``log_epoch``) are taken back with a ``RollbackPerformed``, and seeds whose state on the log (``log_seeds``)
        moved past the checkpoint's with a transition back to it. Returns the checkpoint's epoch."""
        folder = Path(checkpoint_dir) if checkpoint_dir is not None else self.checkpoint_dir
        if folder is None:
            raise TrainingError("resume: no checkpoint folder")
        try:
            meta = json.loads((folder / "last.json").read_text())
            # a checkpoint from before the files were named in last.json: last.pt and resume.pt
            model_state = _read_tensors(folder / meta.get("model_file", "last.pt"), meta["model_sha256"])
            extra = _read_tensors(folder / meta.get("resume_file", "resume.pt"), meta["resume_sha256"])
        except (OSError, ValueError, KeyError) as exc:
            raise TrainingError(f"resume: {folder} holds no usable checkpoint: {exc}") from None
        if meta["run_id"] != self.run_id:
            raise TrainingError(f"resume: {folder} is run {meta['run_id']}'s checkpoint, not {self.run_id}'s")
        if self.kasmina is not None:
            self.kasmina.restore(meta["kasmina"])
        self.model.load_state_dict(model_state)
        if self.kasmina is not None:
            self.kasmina.reseal()
            self.kasmina.lineage[:] = meta.get("lineage", [])
        if self.controller is not None:
            self.controller.load_state_dict(meta["tamiyo"])
        params = dict(self.model.named_parameters())
        self._born = {params[n]: b for n, b in meta["born"].items() if n in params}
        self.optimizer = self._new_optimizer(epoch=meta["epoch"] + 1)
        self.optimizer.load_state_dict(extra["optimizer"])
        self._gen.set_state(extra["generator"])
        torch.set_rng_state(extra["torch_rng"])
        self.global_step = meta["global_step"]
        self._recent_losses = list(meta["recent_losses"])
        self.history = History(list(meta["history"]["epochs"]), list(meta["history"]["rollbacks"]))
        for factory in self._envelope_factories():
            factory.continue_from(log_versions or {})
        self._resumed = meta["epoch"]
        self._last_good = Checkpoint(meta["epoch"], {k: v.clone() for k, v in model_state.items()}, meta["kasmina"],
                                     meta["tamiyo"], [], meta["checkpoint_id"])
        if log_epoch > meta["epoch"]:
            self._publish(RollbackPerformed(envelope=self._env(), from_epoch=log_epoch, to_epoch=meta["epoch"],
                                            checkpoint_id=meta["checkpoint_id"], trigger="resume",
                                            reason=f"resumed from the checkpoint of epoch {meta['epoch']}"))
        if log_seeds is not None and self.kasmina is not None:  # transitions the log has past the checkpoint
            self.kasmina.take_back(log_seeds, meta["epoch"])
        return meta["epoch"]

    def _envelope_factories(self):
        yield self.envelopes
        if self.kasmina is not None:
            yield self.kasmina.envelopes
            yield self.kasmina._command_envelopes
        if self.controller is not None:
            yield self.controller.envelopes
            if hasattr(self.controller, "command_envelopes"):
                yield self.controller.command_envelopes

    def _rollback(self, epoch: int, trigger: str) -> int:
        ckpt = self._last_good
        kasmina = self.kasmina
        # The seeds to blame are those not yet accepted; a seed in FINE_TUNING passed its evaluation, is in the
        # checkpoint, and stays (were it locked, one late spike would strip every adaptation of the run).
        accepted = (Code.FOSSILIZED, Code.FINE_TUNING)
        if kasmina is None:
            adapting = []
        elif self.controller is not None:
            adapting = sorted(k for k in self.controller.in_flight if kasmina.layer(k[0])._codes[k[1]] not in accepted)
        else:
            adapting = [(l, s) for l, s, c in kasmina.seeds() if c in CHILD_STATES and c not in accepted]
        if kasmina is not None:
            kasmina.restore(ckpt.structure)
        self.model.load_state_dict(ckpt.model_state)
        if kasmina is not None:
            kasmina.reseal()
        if self.controller is not None:
            self.controller.load_state_dict(ckpt.tamiyo_state)
            for key in adapting:
                ad = self.controller.in_flight.get(key)
                if ad is not None:  # reported at the accuracy it had before: the adaptation's gain is void
                    self.controller.finish(key, ad, "ROLLED_BACK", EpochState(epoch, 0.0, 0.0, ad.pre_metric),
                                           reason=trigger)
        for key in adapting:
            kasmina.command(key[0], key[1], "rollback")
        if kasmina is not None:
            kasmina.end_epoch(ckpt.epoch)
        self.optimizer = self._new_optimizer(epoch=ckpt.epoch + 1)
        self._recent_losses.clear()
        kind = trigger.split(":")[0]
        self.history.rollbacks.append({"from_epoch": epoch, "to_epoch": ckpt.epoch, "trigger": trigger,
                                       "locked": [f"seed/{l}/{s}" for l, s in adapting]})
        self._publish(RollbackPerformed(envelope=self._env(), from_epoch=epoch, to_epoch=ckpt.epoch,
                                        checkpoint_id=ckpt.checkpoint_id, trigger=kind, reason=trigger[:1000]))
        # The epochs after the checkpoint are replayed from it; they are not in the history twice.
        self.history.epochs = [e for e in self.history.epochs if e["epoch"] <= ckpt.epoch]
        return ckpt.epoch + 1

"""Simic's imitation training: the GNN policy learns the teacher's germination choices from the log.

Loss per example: cross-entropy of the location head over the eligible seeds (the others masked out), plus
cross-entropy of the kernel head over the kernels the teacher weighed, plus a binary cross-entropy of the query head
against the chosen kernel's tags (the query that finds what the teacher chose). Evaluation on runs held out whole: the share
of decisions where the policy's first choice of seed, of kernel, and of both equals the teacher's. The result is a
versioned checkpoint (``save_policy``) whose card records the dataset's version and offsets and the scores.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from esper_runtime.simic.dataset import Example, ExperienceDataset
from esper_runtime.rng import seeded
from esper_runtime.tamiyo.graph import build_graph
from esper_runtime.tamiyo.policy import TamiyoPolicy, save_policy

__all__ = ["ImitationResult", "train_imitation", "evaluate", "finetune_rl", "log_probs"]


@dataclass
class ImitationResult:
    policy: TamiyoPolicy
    metrics: dict
    directory: Path | None


def _prepare(ex: Example):
    data, index = build_graph(ex.layers)
    pos = {key: i for i, key in enumerate(index)}
    mask = torch.zeros(len(index), dtype=torch.bool)
    mask[[pos[k] for k in ex.eligible]] = True
    return data, mask, pos[ex.target]


def _forward(policy: TamiyoPolicy, prepared, ex: Example, with_query: bool = False):
    data, mask, target = prepared
    emb = policy.encode(data)
    loc = policy.location_scores(data, emb).masked_fill(~mask, float("-inf"))
    ker = policy.kernel_scores(emb[target], ex.kernel_features)
    if with_query:
        return loc, ker, target, policy.query_logits(emb[target])
    return loc, ker, target


def _logp(loc: torch.Tensor, ker: torch.Tensor, target: int, ex: Example) -> torch.Tensor:
    """log pi(logged seed) + log pi(logged kernel | seed)."""
    return torch.log_softmax(loc, 0)[target] + torch.log_softmax(ker, 0)[ex.kernel_target]


def _fit(policy: TamiyoPolicy, examples: list[Example], loss_of, epochs: int, lr: float, seed: int, label: str,
         echo) -> None:
    """Adam over ``examples`` one at a time, shuffled each epoch; ``loss_of(policy, prepared, example)``."""
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    rng = random.Random(seed)
    prepared = [(_prepare(ex), ex) for ex in examples]
    for epoch in range(epochs):
        policy.train()
        rng.shuffle(prepared)
        total = 0.0
        for prep, ex in prepared:
            loss = loss_of(policy, prep, ex)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        if epoch % 10 == 0 or epoch == epochs - 1:
            echo(f"{label}: epoch {epoch}: loss {total / len(prepared):.4f}")


def _card(dataset: ExperienceDataset, version: str, metrics: dict) -> dict:
    return {"version": f"{version}-{dataset.version}", "teacher": dataset.teacher,
            "dataset_version": dataset.version,
            "dataset_offsets": {t: {str(p): o for p, o in ps.items()} for t, ps in dataset.offsets.items()},
            "examples": len(dataset.examples), "skipped": dataset.skipped, "metrics": metrics}


@torch.no_grad()
def evaluate(policy: TamiyoPolicy, examples: list[Example]) -> dict:
    policy.eval()
    loc_ok = ker_ok = both = query_ok = 0
    for ex in examples:
        loc, ker, target, query = _forward(policy, _prepare(ex), ex, with_query=True)
        a = int(loc.argmax()) == target
        b = int(ker.argmax()) == ex.kernel_target
        loc_ok, ker_ok, both = loc_ok + a, ker_ok + b, both + (a and b)
        if ex.kernel_tags is not None:
            query_ok += bool(torch.equal(query > 0, ex.kernel_tags > 0.5))
    n = max(len(examples), 1)
    return {"decisions": len(examples), "location_agreement": loc_ok / n, "kernel_agreement": ker_ok / n,
            "agreement": both / n, "query_agreement": query_ok / n}


def train_imitation(dataset: ExperienceDataset, out: Path | None = None, epochs: int = 40, lr: float = 3e-3,
                    hidden: int = 32, seed: int = 0, holdout: float = 0.25, echo=lambda m: None) -> ImitationResult:
    if not dataset.examples:
        raise ValueError("no germination decisions in the experience: run the heuristic first (e.g. `esper demo`)")
    with seeded(seed):
        return _train_imitation(dataset, out, epochs, lr, hidden, seed, holdout, echo)


def _train_imitation(dataset, out, epochs, lr, hidden, seed, holdout, echo) -> ImitationResult:
    train, held = dataset.split(holdout)
    if not train:
        train, held = held, []
    policy = TamiyoPolicy(hidden=hidden)
    ce, bce = nn.CrossEntropyLoss(), nn.BCEWithLogitsLoss()

    def loss_of(policy, prep, ex):
        loc, ker, target, query = _forward(policy, prep, ex, with_query=True)
        loss = ce(loc.unsqueeze(0), torch.tensor([target])) + ce(ker.unsqueeze(0), torch.tensor([ex.kernel_target]))
        return loss + bce(query, ex.kernel_tags) if ex.kernel_tags is not None else loss

    t0 = time.perf_counter()
    _fit(policy, train, loss_of, epochs, lr, seed, "simic", echo)
    metrics = {"train": evaluate(policy, train), "held_out": evaluate(policy, held) if held else None,
               "train_runs": sorted({e.run_id for e in train}), "held_out_runs": sorted({e.run_id for e in held}),
               "epochs": epochs, "seconds": round(time.perf_counter() - t0, 1)}
    directory = save_policy(policy, out, _card(dataset, "imitation", metrics)) if out is not None else None
    return ImitationResult(policy, metrics, directory)


@torch.no_grad()
def log_probs(policy: TamiyoPolicy, examples: list[Example]) -> list[float]:
    """log pi(logged seed) + log pi(logged kernel | seed) for each example."""
    return [float(_logp(*_forward(policy, _prepare(ex), ex), ex)) for ex in examples]


def finetune_rl(policy: TamiyoPolicy, examples: list[Example], epochs: int = 20, lr: float = 1e-3,
                clip: float = 1.0, anchor: float = 0.1, seed: int = 0, echo=lambda m: None) -> dict:
    """Offline policy-gradient fine-tune on logged outcomes (the C.4.1 reward of each adaptation's FieldReport):
    each logged choice's log-probability is pushed up or down by its advantage (reward minus the mean, clipped),
    and a quadratic pull (``anchor``) towards the log-probability the policy gave it before fine-tuning keeps it
    near what it imitated (a trust region on logged data). Only examples whose adaptation ended (a reward on the
    log) take part."""
    rewarded = [ex for ex in examples if ex.reward is not None and math.isfinite(ex.reward)]
    if not rewarded:
        return {"examples": 0}
    baseline = sum(ex.reward for ex in rewarded) / len(rewarded)
    reference = dict(zip(map(id, rewarded), log_probs(policy, rewarded)))

    def loss_of(policy, prep, ex):
        logp = _logp(*_forward(policy, prep, ex), ex)
        advantage = max(-clip, min(clip, ex.reward - baseline))
        return -advantage * logp + anchor * (logp - reference[id(ex)]) ** 2

    _fit(policy, rewarded, loss_of, epochs, lr, seed, "simic rl", echo)
    return {"examples": len(rewarded), "baseline_reward": baseline, "epochs": epochs}


def policies_dir(home: Path) -> Path:
    return Path(home) / "simic" / "policies"


def latest_policy(home: Path) -> Path | None:
    """The directory the LATEST pointer names, if any."""
    pointer = policies_dir(home) / "LATEST"
    if not pointer.exists():
        return None
    path = policies_dir(home) / pointer.read_text().strip()
    return path if path.exists() else None


def train_from_log(backbone, epochs: int = 40, teacher: str = "heuristic-v1", rl_epochs: int = 0,
                   echo=lambda m: None) -> ImitationResult:
    """Read the experience on the log, train by imitation (then, with ``rl_epochs``, fine-tune on the logged
    rewards), save under $ESPER_HOME/simic/policies/<version> and point LATEST at it."""
    from esper_runtime.simic.dataset import read_experience

    dataset = read_experience(backbone, teacher=teacher)
    echo(f"simic: {len(dataset.examples)} germination decisions by {teacher} from {len(dataset.runs())} runs "
         f"(dataset {dataset.version}; skipped {dataset.skipped or 'none'})")
    root = policies_dir(backbone.settings.home)
    name = f"gnn-{dataset.version}" + (f"-rl{rl_epochs}" if rl_epochs else "")
    result = train_imitation(dataset, root / name if not rl_epochs else None, epochs=epochs, echo=echo)
    if rl_epochs:
        train, held = dataset.split()
        rl = finetune_rl(result.policy, train, epochs=rl_epochs, echo=echo)
        result.metrics |= {"rl": rl, "held_out_after_rl": evaluate(result.policy, held) if held else None}
        result.directory = save_policy(result.policy, root / name, _card(dataset, "rl", result.metrics))
    (root / "LATEST").write_text(name)
    return result

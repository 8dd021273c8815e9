"""Simic's imitation training: the GNN policy learns the teacher's germination choices from the log.

Loss per example: cross-entropy of the location head over the eligible seeds (the others masked out) plus
cross-entropy of the kernel head over the kernels the teacher weighed. Evaluation on runs held out whole: the share
of decisions where the policy's first choice of seed, of kernel, and of both equals the teacher's. The result is a
versioned checkpoint (``save_policy``) whose card records the dataset's version and offsets and the scores.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from esper_runtime.simic.dataset import Example, ExperienceDataset
from esper_runtime.tamiyo.graph import build_graph
from esper_runtime.tamiyo.policy import TamiyoPolicy, save_policy

__all__ = ["ImitationResult", "train_imitation", "evaluate"]


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


def _forward(policy: TamiyoPolicy, prepared, ex: Example):
    data, mask, target = prepared
    emb = policy.encode(data)
    loc = policy.location_scores(data, emb).masked_fill(~mask, float("-inf"))
    ker = policy.kernel_scores(emb[target], ex.kernel_features)
    return loc, ker, target


@torch.no_grad()
def evaluate(policy: TamiyoPolicy, examples: list[Example]) -> dict:
    policy.eval()
    loc_ok = ker_ok = both = 0
    for ex in examples:
        loc, ker, target = _forward(policy, _prepare(ex), ex)
        a = int(loc.argmax()) == target
        b = int(ker.argmax()) == ex.kernel_target
        loc_ok, ker_ok, both = loc_ok + a, ker_ok + b, both + (a and b)
    n = max(len(examples), 1)
    return {"decisions": len(examples), "location_agreement": loc_ok / n, "kernel_agreement": ker_ok / n,
            "agreement": both / n}


def train_imitation(dataset: ExperienceDataset, out: Path | None = None, epochs: int = 40, lr: float = 3e-3,
                    hidden: int = 32, seed: int = 0, holdout: float = 0.25, echo=lambda m: None) -> ImitationResult:
    if not dataset.examples:
        raise ValueError("no germination decisions in the experience: run the heuristic first (e.g. `esper demo`)")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    train, held = dataset.split(holdout)
    if not train:
        train, held = held, []
    policy = TamiyoPolicy(hidden=hidden)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    ce = nn.CrossEntropyLoss()
    prepared = [(_prepare(ex), ex) for ex in train]
    t0 = time.perf_counter()
    for epoch in range(epochs):
        policy.train()
        rng.shuffle(prepared)
        total = 0.0
        for prep, ex in prepared:
            loc, ker, target = _forward(policy, prep, ex)
            loss = ce(loc.unsqueeze(0), torch.tensor([target])) + ce(ker.unsqueeze(0), torch.tensor([ex.kernel_target]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        if epoch % 10 == 0 or epoch == epochs - 1:
            echo(f"simic: epoch {epoch}: loss {total / len(prepared):.4f}")
    metrics = {"train": evaluate(policy, train), "held_out": evaluate(policy, held) if held else None,
               "train_runs": sorted({e.run_id for e in train}), "held_out_runs": sorted({e.run_id for e in held}),
               "epochs": epochs, "seconds": round(time.perf_counter() - t0, 1)}
    directory = None
    if out is not None:
        directory = save_policy(policy, out, {
            "version": f"imitation-{dataset.version}", "teacher": dataset.teacher, "dataset_version": dataset.version,
            "dataset_offsets": {t: {str(p): o for p, o in ps.items()} for t, ps in dataset.offsets.items()},
            "examples": len(dataset.examples), "skipped": dataset.skipped, "metrics": metrics})
    return ImitationResult(policy, metrics, directory)


def policies_dir(home: Path) -> Path:
    return Path(home) / "simic" / "policies"


def latest_policy(home: Path) -> Path | None:
    """The directory the LATEST pointer names, if any."""
    pointer = policies_dir(home) / "LATEST"
    if not pointer.exists():
        return None
    path = policies_dir(home) / pointer.read_text().strip()
    return path if path.exists() else None


def train_from_log(backbone, epochs: int = 40, teacher: str = "heuristic-v1", echo=lambda m: None) -> ImitationResult:
    """Read the experience on the log, train by imitation, save under $ESPER_HOME/simic/policies/<version> and
    point LATEST at it."""
    from esper_runtime.simic.dataset import read_experience

    dataset = read_experience(backbone, teacher=teacher)
    echo(f"simic: {len(dataset.examples)} germination decisions by {teacher} from {len(dataset.runs())} runs "
         f"(dataset {dataset.version}; skipped {dataset.skipped or 'none'})")
    root = policies_dir(backbone.settings.home)
    result = train_imitation(dataset, root / f"gnn-{dataset.version}", epochs=epochs, echo=echo)
    (root / "LATEST").write_text(f"gnn-{dataset.version}")
    return result

"""Tamiyo's learned policy (appendix C.2): a HeteroGNN encoder over the system graph, a location head that scores
dormant seeds, a query head that forms the KernelQuery (the tags to ask Urza for) from the chosen location's
context, and a kernel-selection head that scores the artifacts Urza returns.

The policy is its own module with its own parameters: it reads the graph (plain tensors built from floats, see
``graph.py``) and returns scores; it never holds a reference to the host. ``tests/unit/esper_runtime/simic/test_learned.py`` checks both
directions of the isolation: the policy's backward pass leaves the host's gradients untouched, and the host's
leaves the policy's.

Checkpoints are a state dict saved with ``torch.save`` and loaded with ``weights_only=True`` beside a JSON card
(version, feature sizes, training data offsets, metrics, the file's SHA-256, checked before loading).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from esper_runtime.tamiyo.graph import EDGE_TYPES, LAYER_FEATURES, SEED_FEATURES
from esper_runtime.tamiyo.exceptions import PolicyError

__all__ = ["TamiyoPolicy", "kernel_features", "tag_vector", "KERNEL_FEATURES", "TAGS", "save_policy", "load_policy",
           "PolicyError"]

TAGS = ("high_speed", "medium_speed", "low_speed", "low_memory", "medium_memory", "high_memory",
        "numerically_stable", "trainable", "fixed_function")
KERNEL_FEATURES = len(TAGS) + 5
POLICY_KIND = "esper.tamiyo.gnn.v2"  # v2: the query head


def kernel_features(kernel, tried_on_slot: bool, width: int) -> list[float]:
    """One candidate artifact as the kernel head sees it (from its Urza record and the slot's history)."""
    report = kernel.report or {}
    return [1.0 if t in kernel.tags else 0.0 for t in TAGS] + [
        float(kernel.risk_score if kernel.risk_score is not None else 1.0),
        math.log1p(max(float(report.get("latency_ms_mean") or 0.0), 0.0)),
        math.log1p(max(float(report.get("memory_mb_peak") or 0.0), 0.0)),
        1.0 if tried_on_slot else 0.0,
        1.0 if kernel.features == width else 0.0,
    ]


def tag_vector(tags) -> list[float]:
    return [1.0 if t in tags else 0.0 for t in TAGS]


class TamiyoPolicy(nn.Module):
    def __init__(self, hidden: int = 32, layers: int = 2):
        super().__init__()
        from torch_geometric.nn import HeteroConv, SAGEConv

        self.hidden, self.n_layers = hidden, layers
        self.seed_in = nn.Linear(SEED_FEATURES, hidden)
        self.layer_in = nn.Linear(LAYER_FEATURES, hidden)
        self.convs = nn.ModuleList(
            HeteroConv({et: SAGEConv((hidden, hidden), hidden) for et in EDGE_TYPES}, aggr="sum")
            for _ in range(layers))
        self.location_head = nn.Sequential(nn.Linear(hidden + SEED_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.kernel_head = nn.Sequential(nn.Linear(hidden + KERNEL_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.query_head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, len(TAGS)))

    def encode(self, data) -> torch.Tensor:
        """Contextual seed embeddings [n_seeds, hidden]."""
        x = {"seed": torch.relu(self.seed_in(data["seed"].x)), "layer": torch.relu(self.layer_in(data["layer"].x))}
        edges = {et: data[et].edge_index for et in EDGE_TYPES}
        for conv in self.convs:
            out = conv(x, edges)
            x = {k: torch.relu(out.get(k, 0) + x[k]) for k in x}  # residual: a node with no edges keeps itself
        return x["seed"]

    def location_scores(self, data, embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """A score per seed node [n_seeds]; the caller masks seeds that cannot be grown."""
        h = self.encode(data) if embeddings is None else embeddings
        return self.location_head(torch.cat([h, data["seed"].x], dim=1)).squeeze(-1)

    def query_logits(self, seed_embedding: torch.Tensor) -> torch.Tensor:
        """A logit per tag in ``TAGS``: the KernelQuery this location asks Urza for (appendix C.2)."""
        return self.query_head(seed_embedding)

    def query_tags(self, seed_embedding: torch.Tensor, threshold: float = 0.5) -> list[str]:
        probs = torch.sigmoid(self.query_logits(seed_embedding))
        return [t for t, p in zip(TAGS, probs.tolist()) if p > threshold]

    def kernel_scores(self, seed_embedding: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """A score per candidate artifact [n_candidates] in the context of the chosen location's embedding."""
        ctx = seed_embedding.unsqueeze(0).expand(candidates.shape[0], -1)
        return self.kernel_head(torch.cat([ctx, candidates], dim=1)).squeeze(-1)


@dataclass(frozen=True)
class LoadedPolicy:
    policy: TamiyoPolicy
    card: dict


def save_policy(policy: TamiyoPolicy, directory: Path, card: dict) -> Path:
    """``policy.pt`` (state dict) and ``card.json`` (what it is, what it learned from, how it scored)."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / "policy.pt"
    torch.save({k: v.detach().cpu() for k, v in policy.state_dict().items()}, weights)
    full = {"kind": POLICY_KIND, "hidden": policy.hidden, "layers": policy.n_layers, "seed_features": SEED_FEATURES,
            "layer_features": LAYER_FEATURES, "kernel_features": KERNEL_FEATURES, "tags": list(TAGS),
            "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), **card}
    (directory / "card.json").write_text(json.dumps(full, indent=2))
    return directory


def load_policy(directory: Path) -> LoadedPolicy:
    try:
        card = json.loads((directory / "card.json").read_text())
        data = (directory / "policy.pt").read_bytes()
    except (OSError, ValueError) as exc:
        raise PolicyError(f"no policy at {directory}: {exc}") from None
    if card.get("kind") != POLICY_KIND:
        raise PolicyError(f"{directory} holds a {card.get('kind')!r}, not a {POLICY_KIND}")
    if hashlib.sha256(data).hexdigest() != card.get("sha256"):
        raise PolicyError(f"{directory / 'policy.pt'} does not match the SHA-256 in its card")
    if (card.get("seed_features"), card.get("layer_features"), card.get("kernel_features")) != (
            SEED_FEATURES, LAYER_FEATURES, KERNEL_FEATURES):
        raise PolicyError(f"{directory} was trained on other features than this version computes")
    import io

    try:
        state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        policy = TamiyoPolicy(hidden=card["hidden"], layers=card["layers"])
        policy.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - a card or weights that do not make this policy: said, not raised raw
        raise PolicyError(f"{directory}: the card and weights do not make a policy: {type(exc).__name__}: "
                          f"{str(exc)[:300]}") from None
    policy.eval()
    return LoadedPolicy(policy, card)

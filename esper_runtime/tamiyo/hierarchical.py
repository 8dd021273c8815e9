"""Hierarchical control (appendices H and I): Tamiyo-Prime over sub-Tamiyos, one per domain of the model.

Domains come from configuration in the shape of appendix I.2 (``hierarchical_control.domains.<name>.module_paths``):
a domain owns the seed layers whose module path is one of its paths or lies under one. Each epoch boundary:

1. Every sub-Tamiyo compresses its domain into a ``HealthSummary`` (dormant share, waste, correlation, variance,
   adaptations in flight, culls so far).
2. Tamiyo-Prime attends over the summaries (scaled dot-product attention of a system query against the domains'
   keys, both linear maps of the summaries) and turns the attention weights into an integer split of
   ``atp_global_budget`` (largest remainder), published as a ``TamiyoDecision`` with action ``allocate_atp``. Each
   domain's balance is its allocation plus what it had not spent, capped at one epoch's global budget.
3. When the validation loss has plateaued (the heuristic's *when*), the sub-Tamiyos are asked in order of
   attention; the first whose balance covers ``germination_cost`` and whose domain has an eligible seed with a
   kernel spends the cost and germinates (with the learned policy on its local subgraph when one is given, else
   the heuristic). A domain never spends more than its balance: ``ledger`` records every allocation and spend.

Every adaptation then walks its lifecycle exactly as under the flat controller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from esper_runtime.config import HierarchicalConfig
from esper_runtime.tamiyo.graph import observe_model
from esper_runtime.tamiyo.heuristic import EpochState, TamiyoController
from esper_runtime.tamiyo.learned import choose
from streams.contracts import DecisionCandidate
from esper_runtime.tamiyo.exceptions import DomainError

__all__ = ["HierarchicalTamiyo", "HealthSummary", "DomainError", "allocate", "domains_of"]

SUMMARY_FIELDS = ("dormant_share", "dead_node_ratio", "avg_correlation", "log_variance", "in_flight", "culled")


@dataclass(frozen=True)
class HealthSummary:
    domain: str
    values: tuple[float, ...]  # SUMMARY_FIELDS

    def as_dict(self) -> dict[str, float]:
        return dict(zip(SUMMARY_FIELDS, self.values))


@dataclass
class Ledger:
    """Per epoch and domain: what Tamiyo-Prime allocated and what the sub-Tamiyo spent."""

    allocations: list[dict[str, int]] = field(default_factory=list)
    spends: list[dict[str, int]] = field(default_factory=list)
    balances: list[dict[str, int]] = field(default_factory=list)


def domains_of(model, config: HierarchicalConfig) -> dict[str, list[int]]:
    """Seed layer ids per domain; every path must match a seed layer and no layer may belong to two domains."""
    owner: dict[int, str] = {}
    out: dict[str, list[int]] = {}
    for name, domain in config.domains.items():
        ids = []
        for path in domain.module_paths:
            matched = [l.layer_id for l in model.kasmina.layers if l.path == path or l.path.startswith(path + ".")]
            if not matched:
                raise DomainError(f"domain {name!r}: no seed layer at or under {path!r} (seed layers: "
                                  f"{', '.join(l.path for l in model.kasmina.layers)})")
            ids += matched
        for i in ids:
            if i in owner and owner[i] != name:
                raise DomainError(f"seed layer {model.kasmina.layers[i].path!r} is in both {owner[i]!r} and {name!r}")
            owner[i] = name
        out[name] = sorted(set(ids))
    return out


def allocate(weights: dict[str, float], budget: int) -> dict[str, int]:
    """An integer split of ``budget`` proportional to ``weights`` (largest remainder; ties by name)."""
    total = sum(weights.values()) or 1.0
    exact = {d: budget * w / total for d, w in weights.items()}
    out = {d: int(math.floor(v)) for d, v in exact.items()}
    left = budget - sum(out.values())
    for d in sorted(exact, key=lambda d: (-(exact[d] - out[d]), d))[:left]:
        out[d] += 1
    return out


class HierarchicalTamiyo(TamiyoController):
    def __init__(self, model, config, hierarchy: HierarchicalConfig, urza=None, publisher=None, run_id=None,
                 policy=None, seed: int = 0):
        super().__init__(model, config, urza, publisher, run_id)
        self.hierarchy = hierarchy
        self.policy_name = "hierarchical-v1"
        self.domains = domains_of(model, hierarchy)
        self.domain_of = {layer: name for name, layers in self.domains.items() for layer in layers}
        self.balance = {name: d.atp_initial_budget for name, d in hierarchy.domains.items()}
        self.ledger = Ledger()
        self.learned = policy.policy if policy is not None else None
        self.culls: dict[str, int] = {name: 0 for name in self.domains}
        gen = torch.Generator().manual_seed(seed)
        d, k = len(SUMMARY_FIELDS), 8
        # Tamiyo-Prime's attention: fixed projections in phase 1 (a learned Prime is future work); the query is the
        # system's mean summary, so a domain stands out by how it differs from the rest.
        self.w_query = torch.eye(d, k) + 0.01 * torch.randn(d, k, generator=gen)
        self.w_key = torch.eye(d, k) + 0.01 * torch.randn(d, k, generator=gen)
        self.salience = torch.tensor([1.0, 2.0, 2.0, 0.5, -1.0, -1.0])  # what makes a domain critical
        self.last_attention: dict[str, float] = {}

    # ------------------------------------------------------------------ sub-Tamiyos' reports and Prime's attention
    def summaries(self) -> list[HealthSummary]:
        layers = {l.layer_id: l for l in observe_model(self.model)}
        out = []
        for name, ids in self.domains.items():
            obs = [layers[i] for i in ids]
            n = sum(o.num_seeds for o in obs) or 1
            mean = lambda f: sum(float(f(o).to(torch.float32).sum()) for o in obs) / n  # noqa: E731
            in_flight = sum(1 for key in self.in_flight if self.domain_of.get(key[0]) == name)
            out.append(HealthSummary(name, (
                mean(lambda o: o.state == 0), mean(lambda o: o.dead_node_ratio), mean(lambda o: o.avg_correlation),
                math.log1p(max(mean(lambda o: o.chunk_variance), 0.0)), float(in_flight),
                float(self.culls.get(name, 0)))))
        return out[-self.hierarchy.tamiyo_prime.attention_window:]

    def attention(self, summaries: list[HealthSummary]) -> dict[str, float]:
        x = torch.tensor([s.values for s in summaries], dtype=torch.float32) * self.salience
        query = x.mean(dim=0, keepdim=True) @ self.w_query
        keys = x @ self.w_key
        scores = (keys @ query.t()).squeeze(1) / math.sqrt(keys.shape[1]) + x.sum(dim=1)
        weights = torch.softmax(scores, dim=0)
        return {s.domain: float(w) for s, w in zip(summaries, weights)}

    # ------------------------------------------------------------------ the epoch boundary
    def step(self, state: EpochState) -> list[str]:
        summaries = self.summaries()
        self.last_attention = self.attention(summaries)
        prime = self.hierarchy.tamiyo_prime
        allocation = allocate(self.last_attention, prime.atp_global_budget)
        for name, atp in allocation.items():
            self.balance[name] = min(self.balance[name] + atp, prime.atp_global_budget)
        self.ledger.allocations.append(allocation)
        self.ledger.spends.append({name: 0 for name in self.domains})
        features = {f"atp.{n}": float(self.balance[n]) for n in self.domains}
        features |= {f"attention.{n}": self.last_attention[n] for n in self.domains}
        self._decide(state, "allocate_atp", None, None, [], reason="Tamiyo-Prime: " + ", ".join(
            f"{n} {allocation[n]} ATP (attention {self.last_attention[n]:.2f}, balance {self.balance[n]})"
            for n in self.domains), features=features)
        issued = super().step(state)
        self.ledger.balances.append(dict(self.balance))
        return issued

    def finish(self, key, ad, outcome, state, reason=""):
        if outcome == "CULLED":
            self.culls[self.domain_of.get(key[0], "")] = self.culls.get(self.domain_of.get(key[0], ""), 0) + 1
        super().finish(key, ad, outcome, state, reason)

    def _germinate(self, state: EpochState) -> str | None:
        cost = self.hierarchy.tamiyo_prime.germination_cost
        locations = self._locations(state.epoch)
        for name in sorted(self.domains, key=lambda n: (-self.last_attention.get(n, 0.0), n)):
            if self.balance[name] < cost:
                continue
            mine = [loc for loc in locations if self.domain_of.get(loc[1]) == name]
            picked = self._pick(mine)
            if picked is None:
                continue
            key, kernel, why, candidates = picked
            self.balance[name] -= cost
            self.ledger.spends[-1][name] += cost
            return self._start(key, kernel, state, candidates,
                               reason=f"plateau; domain {name} (attention {self.last_attention[name]:.2f}, spent "
                                      f"{cost} ATP, {self.balance[name]} left); {why}")
        return None

    def _pick(self, locations):
        """The sub-Tamiyo's choice in its domain: the learned policy on its seeds when given, else the heuristic."""
        if not locations:
            return None
        if self.learned is not None:
            eligible = {(l, s): width for _, l, s, width in locations}
            picked = choose(self.learned, self.model, eligible, self._kernels_for,
                            lambda key: self.culled_designs.get(key, set()))
            if picked is not None:
                key, kernel, score, locs, kernels, _ = picked
                cands = [DecisionCandidate(layer_id=k[0], seed_id=k[1], score=sc) for k, sc in locs]
                return key, kernel, f"gnn score {score:.3f}; {self._blueprint_name(kernel.blueprint_id)}", cands
            return None
        for score, layer_id, seed, width in locations:
            kernels = self._kernels_for((layer_id, seed), width)
            if kernels:
                best = kernels[0][1]
                cands = [DecisionCandidate(layer_id=l, seed_id=s, score=sc) for sc, l, s, _ in locations[:5]]
                signal = "growth signal" if self._measured else "chunk waste"
                return (layer_id, seed), best, f"{signal} {score:.3g}; {self._blueprint_name(best.blueprint_id)}", cands
        return None

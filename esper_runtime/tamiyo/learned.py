"""Tamiyo with the learned policy in charge of *where* and *what*, and the heuristic as its safety veto (13.1).

The heuristic still decides *when* (a validation-loss plateau, the limits on adaptations in flight) and walks
every adaptation through its lifecycle; at a germination the GNN policy scores every seed of the system graph and
then the artifacts Urza offers for the best location. The veto: only seeds the heuristic would consider (dormant,
not embargoed, observed this epoch) may be chosen, only kernels from its Urza query (validated, carrying the
preferred tags, built for the chunk's width), and a design already culled on that slot is replaced by the best
untried one when there is one. Each decision is a ``TamiyoDecision`` with ``policy = "gnn-v1"`` and the policy's
own scores as candidates.
"""

from __future__ import annotations

import torch

from esper_runtime.tamiyo.graph import build_graph, observe_model
from esper_runtime.tamiyo.heuristic import EpochState, TamiyoController
from esper_runtime.tamiyo.policy import LoadedPolicy, kernel_features
from streams.contracts import DecisionCandidate

__all__ = ["LearnedTamiyo", "choose"]


@torch.no_grad()
def choose(policy, model, eligible: dict[tuple[int, int], int], kernels_for, tried_for, top_k: int = 5):
    """The policy's pick: (seed key, kernel, its location score, location candidates, kernel candidates, the query
    tags it asked Urza for) or None.

    ``eligible`` maps each seed the veto allows to its chunk width; ``kernels_for(key, width, tags=())`` lists the
    allowed kernels (validated, the preferred tags plus ``tags``) as (heuristic score, record) pairs; ``tried_for(key)`` the designs culled on that seed before."""
    data, index = build_graph(observe_model(model))
    emb = policy.encode(data)
    scores = policy.location_scores(data, emb)
    allowed = torch.tensor([key in eligible for key in index], dtype=torch.bool)
    if not bool(allowed.any()):
        return None
    masked = torch.where(allowed, scores, torch.full_like(scores, float("-inf")))
    order = torch.argsort(masked, descending=True)[: max(1, min(top_k, int(allowed.sum())))].tolist()
    locations = [(index[i], float(scores[i])) for i in order]
    for node in order:
        key = index[node]
        query = policy.query_tags(emb[node])  # the KernelQuery this location asks Urza for
        options = [k for _, k in kernels_for(key, eligible[key], query)]
        if not options:  # nothing carries all those tags: relax to the heuristic's own query
            query = []
            options = [k for _, k in kernels_for(key, eligible[key])]
        if not options:
            continue
        tried = tried_for(key)
        feats = torch.tensor([kernel_features(k, k.blueprint_id in tried, eligible[key]) for k in options],
                             dtype=torch.float32)
        kscores = policy.kernel_scores(emb[node], feats)
        ranked = sorted(zip(kscores.tolist(), options), key=lambda t: (-t[0], t[1].artifact_id))
        untried = [(s, k) for s, k in ranked if k.blueprint_id not in tried]
        pick = (untried or ranked)[0][1]  # the veto: a design culled here before only when nothing else is left
        return key, pick, float(scores[node]), locations, ranked[:top_k], query
    return None


class LearnedTamiyo(TamiyoController):
    def __init__(self, model, config, policy: LoadedPolicy, urza=None, publisher=None, run_id=None, top_k: int = 5):
        super().__init__(model, config, urza, publisher, run_id)
        self.policy = policy.policy
        self.card = policy.card
        self.top_k = top_k
        self.policy_name = "gnn-v1"
        self.vetoed = 0

    def _germinate(self, state: EpochState) -> str | None:
        eligible = {(l, s): width for _, l, s, width in self._locations(state.epoch)}
        picked = choose(self.policy, self.model, eligible, self._kernels_for,
                        lambda key: self.culled_designs.get(key, set()), self.top_k)
        if picked is None:
            return None
        key, kernel, score, locations, kernels, query = picked
        if kernels and kernels[0][1].artifact_id != kernel.artifact_id:
            self.vetoed += 1  # the policy's favourite was a design culled on this seed before
        candidates = [DecisionCandidate(layer_id=k[0], seed_id=k[1], score=sc) for k, sc in locations] + [
            DecisionCandidate(layer_id=key[0], seed_id=key[1], score=ks, kernel_artifact_id=k.artifact_id)
            for ks, k in kernels]
        tags = sorted(set(self.config.preferred_tags) | set(query))
        return self._start(key, kernel, state, candidates, query_tags=tags,
                           reason=f"plateau; gnn location score {score:.3f}; query {','.join(tags)}; "
                                  f"{self._blueprint_name(kernel.blueprint_id)} (policy {self.card.get('version')})")

"""The system graph (appendix C.3) as torch_geometric ``HeteroData``, built from a live model or from the log.

Nodes: one ``seed`` node per Kasmina seed, one ``layer`` node per seed layer. Edges, each with its reverse added
explicitly: ``SEQUENTIAL`` between adjacent seeds of a layer, ``LAYER_FORWARD`` from each seed layer to the next in
forward order, ``CONTAINS`` from a layer to its seeds (``CHILD_OF`` back). The seed document's CONTAINS/CHILD_OF
link a parent seed to a nested child; Esper's seeds are not nested, so the parent is the layer that holds them.

A seed's features come from the same numbers ``SeedTelemetry`` carries (state, alpha, chunk variance, dead-node
ratio, correlation, latency, readiness, kernel, growth signal), so the graph built from a live model at an epoch boundary and the
one rebuilt from that epoch's telemetry on the log are the same: that is what lets Simic learn from the log.
Every tensor is made from plain floats: nothing in the graph has an autograd path to the host model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streams.contracts import SeedState
from streams.lifecycle import IDLE

__all__ = ["LayerObs", "build_graph", "observe_model", "observe_telemetry", "SEED_FEATURES",
           "LAYER_FEATURES", "EDGE_TYPES"]

STATES = [s.value for s in SeedState]
SEED_FEATURES = len(STATES) + 11
LAYER_FEATURES = 6
EDGE_TYPES = [
    ("seed", "sequential", "seed"), ("seed", "rev_sequential", "seed"),
    ("layer", "layer_forward", "layer"), ("layer", "rev_layer_forward", "layer"),
    ("layer", "contains", "seed"), ("seed", "child_of", "layer"),
]


@dataclass(frozen=True)
class LayerObs:
    """One seed layer as its telemetry reports it, column by column (one entry per seed, in seed order)."""

    layer_id: int
    name: str
    state: torch.Tensor  # int64 codes, the SeedState enum's order
    alpha: torch.Tensor
    chunk_variance: torch.Tensor
    dead_node_ratio: torch.Tensor
    avg_correlation: torch.Tensor
    exec_latency_us: torch.Tensor
    is_ready: torch.Tensor
    has_kernel: torch.Tensor
    growth_signal: torch.Tensor
    growth_from_model: torch.Tensor

    @property
    def num_seeds(self) -> int:
        return int(self.state.shape[0])


def _clean(t: torch.Tensor) -> torch.Tensor:
    t = t.to(torch.float32)
    return torch.where(torch.isfinite(t), t, torch.zeros_like(t))


def _seed_matrix(layer: LayerObs, position: float) -> torch.Tensor:
    n = layer.num_seeds
    onehot = torch.nn.functional.one_hot(layer.state.to(torch.int64), len(STATES)).to(torch.float32)
    seed_pos = torch.arange(n, dtype=torch.float32) / max(1, n - 1)
    cols = [_clean(layer.alpha), torch.log1p(_clean(layer.chunk_variance).clamp_min(0)), _clean(layer.dead_node_ratio),
            _clean(layer.avg_correlation), torch.log1p(_clean(layer.exec_latency_us).clamp_min(0)) / 10.0,
            layer.is_ready.to(torch.float32), layer.has_kernel.to(torch.float32),
            torch.log1p(100.0 * _clean(layer.growth_signal).clamp_min(0)), layer.growth_from_model.to(torch.float32),
            torch.full((n,), position), seed_pos]
    return torch.cat([onehot, torch.stack(cols, dim=1)], dim=1)


def build_graph(layers: list[LayerObs]):
    """``HeteroData`` plus the (layer_id, seed_id) of each seed node, in node order."""
    from torch_geometric.data import HeteroData

    layers = sorted(layers, key=lambda l: l.layer_id)
    n_layers = len(layers)
    seed_blocks, layer_rows, index, seq, contains = [], [], [], [], []
    base = 0
    dormant_code = STATES.index("DORMANT")
    idle = torch.tensor([STATES.index(s.value) for s in IDLE])
    for li, layer in enumerate(layers):
        n = layer.num_seeds
        seed_blocks.append(_seed_matrix(layer, li / max(1, n_layers - 1)))
        index += [(layer.layer_id, i) for i in range(n)]
        ids = torch.arange(base, base + n)
        seq.append(torch.stack([ids[:-1], ids[1:]]))
        contains.append(torch.stack([torch.full((n,), li), ids]))
        base += n
        layer_rows.append(torch.tensor([
            n / 64.0, li / max(1, n_layers - 1), float((layer.state == dormant_code).float().mean()),
            float(_clean(layer.dead_node_ratio).mean()), float(_clean(layer.avg_correlation).mean()),
            float((~torch.isin(layer.state, idle)).float().mean())]))
    forward = torch.stack([torch.arange(0, n_layers - 1), torch.arange(1, n_layers)]) if n_layers > 1 else \
        torch.empty(2, 0, dtype=torch.long)
    seq_t = torch.cat(seq, dim=1) if seq else torch.empty(2, 0, dtype=torch.long)
    contains_t = torch.cat(contains, dim=1) if contains else torch.empty(2, 0, dtype=torch.long)

    data = HeteroData()
    data["seed"].x = torch.cat(seed_blocks) if seed_blocks else torch.empty(0, SEED_FEATURES)
    data["layer"].x = torch.stack(layer_rows) if layer_rows else torch.empty(0, LAYER_FEATURES)
    data["seed", "sequential", "seed"].edge_index = seq_t
    data["seed", "rev_sequential", "seed"].edge_index = seq_t.flip(0)
    data["layer", "layer_forward", "layer"].edge_index = forward
    data["layer", "rev_layer_forward", "layer"].edge_index = forward.flip(0)
    data["layer", "contains", "seed"].edge_index = contains_t
    data["seed", "child_of", "layer"].edge_index = contains_t.flip(0)
    return data, index


@torch.no_grad()
def observe_model(model) -> list[LayerObs]:
    """The live model at an epoch boundary, as its telemetry for this epoch will report it (same arithmetic as
    ``KasminaLayer.health``, on the state tensors, without a Python loop over seeds)."""
    from esper_runtime.kasmina.state import HEALTH

    out = []
    for layer in model.kasmina.layers:
        acc = layer.health_accumulator.detach().cpu().to(torch.float64)
        n = acc[:, HEALTH["samples"]].clamp_min(1.0)
        corr_n = acc[:, HEALTH["corr_samples"]].clamp_min(1.0)
        lat_n = acc[:, HEALTH["latency_samples"]]
        latency = torch.where(lat_n > 0, acc[:, HEALTH["latency_us"]] / lat_n.clamp_min(1.0), torch.zeros_like(lat_n))
        f32 = lambda t: t.to(torch.float32)  # noqa: E731 - telemetry carries Avro floats
        signal, from_model = layer.growth_signals()
        out.append(LayerObs(
            layer.layer_id, layer.path, torch.tensor([c.value for c in layer._codes], dtype=torch.int64),
            f32(layer.alpha_blend.detach().cpu()), f32(acc[:, HEALTH["variance"]] / n), f32(acc[:, HEALTH["dead"]] / n),
            f32(acc[:, HEALTH["correlation"]] / corr_n), f32(latency), layer.ready.detach().cpu().clone(),
            layer.active_kernel_id.detach().cpu() != 0, signal, from_model))
    return out


def observe_telemetry(batches) -> list[LayerObs]:
    """One epoch's ``SeedTelemetry`` events (one per layer), as read back from the log."""
    out = []
    for b in batches:
        seeds = sorted(b.seeds, key=lambda s: s.seed_id)
        col = lambda f: torch.tensor([f(s) for s in seeds], dtype=torch.float32)  # noqa: E731
        out.append(LayerObs(
            b.layer_id, b.layer_name, torch.tensor([STATES.index(s.state.value) for s in seeds], dtype=torch.int64),
            col(lambda s: s.alpha), col(lambda s: s.chunk_variance), col(lambda s: s.dead_node_ratio),
            col(lambda s: s.avg_correlation), col(lambda s: s.exec_latency_us),
            torch.tensor([s.is_ready_for_transition for s in seeds], dtype=torch.bool),
            torch.tensor([bool(s.kernel_artifact_id) for s in seeds], dtype=torch.bool),
            col(lambda s: s.growth_signal), torch.tensor([s.growth_from_model for s in seeds], dtype=torch.bool)))
    return out

"""``esper bench policy``: one learned-policy decision on a model with about 1,000 seeds, on CPU.

A decision is what ``LearnedTamiyo`` does at a germination: observe the model (its seed state tensors), build the
system graph, encode it with the HeteroGNN, score every seed, and score the candidate kernels for the best one.
Median and p99 over ``repeats`` decisions after a warm-up.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from esper_runtime.kasmina import KasminaConfig, wrap
from esper_runtime.tamiyo.graph import build_graph, observe_model
from esper_runtime.tamiyo.policy import KERNEL_FEATURES, TamiyoPolicy


@torch.no_grad()
def run(layers: int = 10, width: int = 800, chunk: int = 8, repeats: int = 50, candidates: int = 8) -> dict:
    torch.manual_seed(0)
    host = nn.Sequential(*[m for _ in range(layers) for m in (nn.Linear(width, width), nn.ReLU())])
    model = wrap(host, KasminaConfig(chunk_size=chunk))
    model.train()
    model(torch.randn(32, width))  # health statistics to observe
    policy = TamiyoPolicy().eval()
    kernels = torch.rand(candidates, KERNEL_FEATURES)

    def decide():
        data, index = build_graph(observe_model(model))
        emb = policy.encode(data)
        best = int(policy.location_scores(data, emb).argmax())
        return index[best], int(policy.kernel_scores(emb[best], kernels).argmax())

    for _ in range(5):
        decide()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        decide()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"bench": "policy", "seeds": model.kasmina.num_seeds(), "decision_ms": round(statistics.median(times), 2),
            "decision_p99_ms": round(times[min(len(times) - 1, int(0.99 * len(times)))], 2),
            "threads": torch.get_num_threads(), "candidates": candidates,
            "notes": "observe + graph + HeteroGNN + location and kernel heads, CPU, no_grad"}

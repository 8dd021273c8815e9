"""``esper bench kernel-load``: cold load of a compiled kernel artifact and a cache hit, through Kasmina's cache.

cold = fetch from the artifact store + SHA-256 check + unzip + IR validation + module build + weights load +
AOTInductor package load + the first compiled call, in a cache that has never seen the artifact.
hit = ``KernelCache.get`` of a loaded artifact.
"""

from __future__ import annotations

import statistics
import time

import torch

from esper_runtime.devices import hardware_label, resolve
from esper_runtime.kasmina.kernels import KernelCache
from esper_runtime.tezzeret.compiler import BUNDLE_KIND, compile_ir
from esper_runtime.urza.store import ArtifactStore
from streams.config import load_settings

NAMES = ("residual_mlp", "low_rank_adapter", "fixed_tanh", "attention_head", "swiglu")


def _artifacts(store: ArtifactStore, width: int, device: torch.device) -> tuple[list[str], float]:
    from esper_runtime.blueprints import starter_blueprints
    from esper_runtime.tezzeret.compiler import artifact_id

    ids, compile_s = [], 0.0
    for bp in starter_blueprints():
        if bp.name not in NAMES:
            continue
        ir = bp.instantiate(width)
        aid = artifact_id(ir, hardware_label(device), "fast")
        if not store.exists(aid):
            t0 = time.perf_counter()
            bundle = compile_ir(ir, "fast", device=device)
            compile_s += time.perf_counter() - t0
            store.put(aid, BUNDLE_KIND, bundle.data, {"compile_ms": bundle.compile_ms})
        ids.append(aid)
    return ids, compile_s


def run(width: int = 16, hits: int = 20000, device: str = "cpu") -> dict:
    """On ``device`` (cpu, cuda, auto): artifacts compiled for it, and the cold load ends after the first compiled
    call on it (the child's weights moved there, as Kasmina's attach does; CUDA synchronized)."""
    target = resolve(device)
    store = ArtifactStore(load_settings().artifacts)
    ids, compile_s = _artifacts(store, width, target)
    x = torch.randn(64, width, device=target)
    warm_up_s = KernelCache(store).warm_up()  # what Kasmina does when a model is wrapped, before training
    cold, first_call = [], []
    for aid in ids:
        cache = KernelCache(store)
        t0 = time.perf_counter()
        kernel = cache.get(aid)
        child = kernel.instantiate().to(target)
        t1 = time.perf_counter()
        with torch.no_grad():
            child(x)
        if target.type == "cuda":
            torch.cuda.synchronize(target)
        t2 = time.perf_counter()
        if getattr(child, "compiled_calls", 1) != 1:
            raise RuntimeError(f"{aid}: the compiled program did not run on {target}: the bench would time the "
                               "eager module")
        cold.append((t2 - t0) * 1000)
        first_call.append((t2 - t1) * 1000)
    cache = KernelCache(store)
    cache.get(ids[0])
    samples = []
    for _ in range(hits):
        t0 = time.perf_counter()
        cache.get(ids[0])
        samples.append(time.perf_counter() - t0)
    return {
        "bench": "kernel-load",
        "cold_ms": round(statistics.median(cold), 2),
        "cold_ms_max": round(max(cold), 2),
        "first_compiled_call_ms": round(statistics.median(first_call), 2),
        "hit_us": round(statistics.median(samples) * 1e6, 3),
        "artifacts": len(ids),
        "width": width,
        "compiled_for_bench_s": round(compile_s, 1),
        "warm_up_ms": round(warm_up_s * 1000, 1),
        "device": target.type,
        "hardware": hardware_label(target),
    }

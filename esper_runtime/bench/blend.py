"""``esper bench blend``: the seed blend's achieved memory bandwidth as a fraction of the device's copy bandwidth,
both measured in the same run on tensors of the same size.

The layer's output is ``rows x features`` (float32) with seeds of ``chunk`` features in a fixed mix of states: half
GRAFTING (alpha 0.5), a quarter FOSSILIZED, a quarter DORMANT. The blend reads the output, reads the child output of
the blending chunks and writes the result; its bandwidth is those bytes over its time. The copy is ``dst.copy_(src)``
of one output-sized tensor: two tensors' bytes over its time. The backward reads the gradient and writes the host's
and the child's gradients (three tensors).

On CUDA the blend is the Triton kernel (``esper_runtime.kasmina.blend``) timed with CUDA events; on CPU it is the
eager path the layer takes there (a clone and torch operations chunk by chunk: ``blend_reference``), timed by the
clock.
"""

from __future__ import annotations

import statistics
import time

import torch

from esper_runtime.devices import hardware_label, resolve
from esper_runtime.kasmina.blend import BLEND_CODES, blend, blend_reference
from esper_runtime.kasmina.lifecycle import Code

__all__ = ["run"]


def _states(num_seeds: int) -> tuple[torch.Tensor, torch.Tensor]:
    codes, alphas = [], []
    for i in range(num_seeds):
        code = (Code.GRAFTING, Code.GRAFTING, Code.FOSSILIZED, Code.DORMANT)[i % 4]
        codes.append(int(code))
        alphas.append(0.5 if code == Code.GRAFTING else 1.0 if code == Code.FOSSILIZED else 0.0)
    return torch.tensor(codes, dtype=torch.uint8), torch.tensor(alphas, dtype=torch.float16)


def _timer(device: torch.device, reps: int):
    """Median seconds of ``fn`` over ``reps`` calls (after three untimed ones)."""
    def timed(fn) -> float:
        for _ in range(3):
            fn()
        samples = []
        for _ in range(reps):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) / 1000)
            else:
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
        return statistics.median(samples)
    return timed


def run(device: str = "cpu", rows: int | None = None, features: int = 4096, chunk: int = 64,
        reps: int | None = None) -> dict:
    target = resolve(device)
    cuda = target.type == "cuda"
    rows = rows or (16384 if cuda else 2048)
    reps = reps or (50 if cuda else 30)
    if features % chunk:
        raise ValueError(f"features ({features}) must be a multiple of chunk ({chunk})")
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(rows, features, generator=gen).to(target)
    child = torch.randn(rows, features, generator=gen).to(target)
    grad = torch.randn(rows, features, generator=gen).to(target)
    state, alpha = _states(features // chunk)
    state, alpha = state.to(target), alpha.to(target)
    timed = _timer(target, reps)
    size = y.numel() * y.element_size()
    blending = sum(1 for c in state.tolist() if c in BLEND_CODES) / state.numel()
    dst = torch.empty_like(y)
    copy_s = timed(lambda: dst.copy_(y))
    copy_gbs = 2 * size / copy_s / 1e9
    forward_bytes = size * (2 + blending)  # read y, read the blending chunks of child, write out
    if cuda:
        forward_s = timed(lambda: blend(y, child, state, alpha, chunk))
        ctx_y, ctx_c = y.clone().requires_grad_(), child.clone().requires_grad_()
        out = blend(ctx_y, ctx_c, state, alpha, chunk)
        backward_s = timed(lambda: torch.autograd.grad(out, (ctx_y, ctx_c), grad, retain_graph=True))
        kernel = "triton"
    else:
        forward_s = timed(lambda: blend_reference(y, child, state, alpha, chunk))  # the layer's eager path
        backward_s = None
        kernel = "eager"
    forward_gbs = forward_bytes / forward_s / 1e9
    result = {
        "bench": "blend",
        "device": target.type,
        "hardware": hardware_label(target),
        **({"device_name": torch.cuda.get_device_name(target)} if cuda else {}),
        "kernel": kernel,
        "rows": rows, "features": features, "chunk": chunk, "seeds": state.numel(), "blending_share": blending,
        "dtype": "float32",
        "copy_gb_per_s": round(copy_gbs, 1),
        "blend_gb_per_s": round(forward_gbs, 1),
        "blend_over_copy": round(forward_gbs / copy_gbs, 3),
        "blend_ms": round(forward_s * 1000, 4),
        "copy_ms": round(copy_s * 1000, 4),
    }
    if backward_s is not None:
        backward_gbs = 3 * size / backward_s / 1e9
        result.update(backward_gb_per_s=round(backward_gbs, 1), backward_over_copy=round(backward_gbs / copy_gbs, 3),
                      backward_ms=round(backward_s * 1000, 4))
    return result

"""Urabrask's sandbox: load one kernel artifact in a process of its own, run it, measure it, give a JSON verdict.

The Urabrask worker (``worker.run_sandbox``) runs ``child`` in a fresh process forked from a server that has
imported torch once (``python -m esper_runtime.urabrask.sandbox --serve``, see ``serve``); it gives the artifact's
bytes as a file and the hash Urza declared for them, and reads the verdict ``{"passed": bool, "failure": str,
...metrics}`` from a file. A crash, a hang (the parent's timeout) or a wrong result here rejects the kernel without
touching the worker. By hand, the same measurement prints its verdict::

    python -m esper_runtime.urabrask.sandbox ARTIFACT_FILE ARTIFACT_ID SHA256 [--runs 3] [--batch 256] [--iters 200]

A kernel is measured on the device it was compiled for. On CPU: wall-clock latency on one thread, the working set
from the profiler's memory events, no power figure. On CUDA: latency from CUDA events around each call, the peak of
``torch.cuda.max_memory_allocated`` over a call, and the card's mean power draw over the timed calls through NVML
(``torch.cuda.power_draw``) when NVML is there, else no power figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time


def _working_set_mb(module, *inputs) -> float:
    """Parameters plus the peak of tensor allocations during one forward of the design, from torch.profiler's
    memory events. (The compiled program allocates inside its own runtime, where the profiler cannot see; its
    fused kernels need at most what the eager design does.)"""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        module(*inputs)
    current = peak = 0
    for event in sorted((e for e in prof.events() if e.cpu_memory_usage), key=lambda e: e.time_range.start):
        current += event.cpu_memory_usage
        peak = max(peak, current)
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    return (params + peak) / 2**20


def _cuda_peak_mb(module, *inputs) -> float:
    """The peak of CUDA memory allocated during one call, above what was allocated before it, plus parameters."""
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    module(*inputs)
    torch.cuda.synchronize()
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    return (params + torch.cuda.max_memory_allocated() - before) / 2**20


def _cuda_latencies_ms(module, inputs, iters: int, power: list) -> list[float]:
    """Per call, the time between CUDA events recorded around it; the card's power draw (W) sampled after each
    tenth call into ``power`` when NVML answers."""
    import torch

    try:
        torch.cuda.power_draw()
        read_power = True
    except Exception:  # noqa: BLE001 - no pynvml, or NVML refuses: no power figure
        read_power = False
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for k, (start, end) in enumerate(events):
        start.record()
        module(*inputs)
        end.record()
        if read_power and k % 10 == 9:
            power.append(torch.cuda.power_draw() / 1000.0)  # mW -> W
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def measure(path: str, artifact_id: str, sha256: str, runs: int, batch: int, iters: int) -> dict:
    import torch

    from esper_runtime.tezzeret.bundle import load_bundle
    from esper_runtime.urza.store import KernelArtifact

    data = open(path, "rb").read()
    if hashlib.sha256(data).hexdigest() != sha256:
        return {"passed": False, "failure": "hash mismatch: the artifact is not what Urza recorded"}
    torch.set_num_threads(1)  # comparable across kernels, and fair to the training process beside us
    kernel = load_bundle(KernelArtifact(artifact_id, sha256, "esper.kernel.v1", data), cache_dir=None)
    child = kernel.prototype
    device = torch.device(kernel.meta.get("device", "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        return {"passed": False, "failure": "built for cuda, and this host has no CUDA device", "unmeasurable": True}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, kernel.features, generator=gen)
    in_features = getattr(child, "in_features", None)
    inputs = (x,) if in_features is None else (x, torch.randn(batch, in_features, generator=gen))
    with torch.no_grad():
        for p in child.parameters():  # weights the artifact has never seen, as after training
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        child.to(device)
        inputs = tuple(t.to(device) for t in inputs)
        out = child(*inputs)
        if child._package_path is not None and child.compiled_calls != 1:
            return {"passed": False, "failure": "the compiled program did not run"}
        if tuple(out.shape) != (batch, kernel.features):
            return {"passed": False, "failure": f"output shape {tuple(out.shape)} != {(batch, kernel.features)}"}
        if not torch.isfinite(out).all():
            return {"passed": False, "failure": "non-finite output"}
        reference = child.module.double()(*(t.double() for t in inputs))
        child.module.float()
        drift = float((out.double() - reference).abs().max() / (reference.abs().max() + 1e-12))
        memory_mb = _working_set_mb(child.module, *inputs) if device.type == "cpu" else _cuda_peak_mb(child, *inputs)
        per_run, power = [], []
        for _ in range(runs):
            samples = _cuda_latencies_ms(child, inputs, iters, power) if device.type == "cuda" else []
            for _ in range(iters if device.type == "cpu" else 0):
                t0 = time.perf_counter()
                child(*inputs)
                samples.append((time.perf_counter() - t0) * 1000)
            samples.sort()
            per_run.append({"mean": statistics.fmean(samples), "p99": samples[int(0.99 * (len(samples) - 1))]})
    means = [r["mean"] for r in per_run]
    p99s = [r["p99"] for r in per_run]
    latency = statistics.median(means)

    def spread(values):
        mid = statistics.median(values)
        return (max(values) - min(values)) / mid if mid else 0.0

    return {
        "passed": drift < 1e-3,
        "failure": "" if drift < 1e-3 else f"drift {drift:.2e} against the fp64 reference",
        "latency_ms_mean": latency,
        "latency_ms_p99": statistics.median(p99s),
        "throughput_ops_per_sec": batch * 1000.0 / latency,
        "memory_mb_peak": memory_mb,
        "precision_drift_vs_fp32": drift,
        "runs": runs,
        "spread": {"latency_ms_mean": spread(means), "latency_ms_p99": spread(p99s)},
        "params": sum(p.numel() for p in child.parameters()),
        "features": kernel.features,
        "device": device.type,
        **({"power_watts_avg": statistics.fmean(power)} if power else {}),
        **({"in_features": in_features} if in_features is not None else {}),
        "batch": batch,
    }


def child(path: str, artifact_id: str, sha256: str, runs: int, iters: int, verdict_path: str, output_path: str,
          batch: int = 256) -> None:
    """The sandbox process's work (``worker.run_sandbox`` starts it): measure, then write the verdict as JSON to
    ``verdict_path``; this process's stdout and stderr (the kernel's, too) go to ``output_path``."""
    fd = os.open(output_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        result = measure(path, artifact_id, sha256, runs, batch, iters)
    except Exception as exc:  # noqa: BLE001 - any failure to load or run is a verdict, reported as such
        result = {"passed": False, "failure": f"{type(exc).__name__}: {exc}"[:2000]}
    with open(verdict_path, "w") as fh:
        json.dump(result, fh)


def serve() -> int:
    """The fork server (``--serve``): torch imported once, then per request line on stdin
    (``{"args": [...child's arguments]}``) a forked child runs ``child``; this process prints ``{"pid": N}`` when it
    has forked and ``{"pid": N, "exit": CODE}`` once the child is gone (a negative code: the signal that ended it).
    It never runs a kernel itself, so every child starts from the same clean state. Ends at EOF on stdin."""
    import torch  # noqa: F401 - what the server is for: every child inherits it imported

    from esper_runtime.tezzeret import bundle  # noqa: F401

    out = sys.stdout
    for line in sys.stdin:
        args = json.loads(line)["args"]
        pid = os.fork()
        if pid == 0:  # the sandbox
            code = 70
            try:
                child(*args)
                code = 0
            finally:
                sys.stdout.flush()  # into the output file child() pointed them at
                sys.stderr.flush()
                os._exit(code)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        out.write(json.dumps({"pid": pid, "exit": os.waitstatus_to_exitcode(status)}) + "\n")
        out.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:] == ["--serve"]:
        return serve()
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("artifact_id")
    ap.add_argument("sha256")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--iters", type=int, default=200)
    args = ap.parse_args(argv)
    try:
        result = measure(args.artifact, args.artifact_id, args.sha256, args.runs, args.batch, args.iters)
    except Exception as exc:  # noqa: BLE001 - any failure to load or run is a verdict, reported as such
        result = {"passed": False, "failure": f"{type(exc).__name__}: {exc}"[:2000]}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

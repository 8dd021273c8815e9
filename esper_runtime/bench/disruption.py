"""``esper bench disruption``: does compiling blueprints stall training?

In one process, a training loop (MLP 784-512-512-10, batch 128) is timed step by step in three phases:

- quiet: nothing else runs (the reference median);
- background: Tezzeret compiles three starter blueprints (at chunk widths never compiled before, so nothing comes
  from a cache) in a separate, lower-priority process, as Esper does; steps are timed until it finishes;
- in-loop baseline: the same three designs are ``torch.compile``d inside the training loop and run once each, the
  way a system that compiles on demand would.

Figures: ``max_over_median`` and ``p99_over_median`` of step time during background compilation, over the median
of as many steps with nothing else running (whose own max and p99 are reported too: a long loop has a tail of its
own); ``baseline_inloop_max_over_median`` for the in-loop baseline. On a machine with more than one core the
training loop leaves one core to the compiler (``train_threads``).
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time

import torch

DESIGNS = ("residual_mlp", "swiglu", "norm_mlp")


def _training():
    from esper_runtime.bench.dormant import _mlp, _step_fn

    torch.manual_seed(0)
    model, x, y = _mlp()
    return _step_fn(model, x, y)


def _timed(step, n: int | None = None, until=None) -> list[float]:
    times = []
    i = 0
    while (n is not None and i < n) or (until is not None and not until()):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1000)
        i += 1
    return times


def _widths(rng: random.Random) -> list[int]:
    return [rng.randrange(33, 255) for _ in DESIGNS]


def _designs(widths):
    from esper_runtime.blueprints import starter_blueprints

    by_name = {b.name: b for b in starter_blueprints()}
    return [by_name[name].instantiate(w) for name, w in zip(DESIGNS, widths)]


def compile_in_background(widths: list[int]) -> None:
    """The child process: Tezzeret's pipeline on three designs (what `esper tezzeret` runs per blueprint)."""
    from esper_runtime.tezzeret.compiler import compile_ir

    for ir in _designs(widths):
        compile_ir(ir, "fast")


def _percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))]


def run(nice: int = 10, train_threads: int | None = None) -> dict:
    rng = random.Random(time.time_ns())
    cores = os.cpu_count() or 1
    # Leave a core to the innovation plane where there is more than one: how Esper's workers share a small machine.
    threads = train_threads or max(1, min(torch.get_num_threads(), cores - 1))
    torch.set_num_threads(threads)
    step = _training()
    _timed(step, 30)  # warm-up

    env = dict(os.environ, OMP_NUM_THREADS="1", TORCHINDUCTOR_COMPILE_THREADS="1")
    widths = _widths(rng)
    cmd = [sys.executable, "-c",
           f"import os; os.nice({nice}); from esper_runtime.bench.disruption import compile_in_background as c; "
           f"c({widths!r})"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    background = _timed(step, until=lambda: proc.poll() is not None)
    compile_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"background compilation failed: {proc.stderr.read().decode()[-2000:]}")
    # The same number of steps with nothing else running: the loop's own tail (GC, the OS) for comparison.
    quiet = _timed(step, min(len(background), 20000))
    median = statistics.median(quiet)

    designs = _designs(_widths(rng))
    at = {len(background) // 4 * (k + 1): ir for k, ir in enumerate(designs)}
    compiled_step = {}

    def inloop_hook(i):
        ir = at.get(i)
        if ir is not None:
            from esper_runtime.blueprints import build_module

            compiled_step[i] = torch.compile(build_module(ir))
            compiled_step[i](torch.randn(8, ir.features))  # the first call compiles, inside the training loop

    inloop = []
    for i in range(max(at) + 20):
        t_start = time.perf_counter()
        inloop_hook(i)  # the compile stall, when there is one, is part of that training step
        step()
        inloop.append((time.perf_counter() - t_start) * 1000)
    return {
        "bench": "disruption",
        "max_over_median": round(max(background) / median, 3),
        "p99_over_median": round(_percentile(background, 0.99) / median, 3),
        "baseline_inloop_max_over_median": round(max(inloop) / median, 3),
        "quiet_max_over_median": round(max(quiet) / median, 3),
        "quiet_p99_over_median": round(_percentile(quiet, 0.99) / median, 3),
        "median_step_ms_quiet": round(median, 3),
        "train_threads": threads,
        "median_step_ms_background": round(statistics.median(background), 3),
        "background_steps": len(background),
        "background_compile_s": round(compile_s, 1),
        "designs": list(DESIGNS),
        "compiler_nice": nice,
    }

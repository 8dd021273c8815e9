"""``esper bench dormant-overhead``: training-step time with every seed DORMANT over the unwrapped model.

Both models train on the same batches in the same process, with an identical unwrapped twin as the A/A test. Each
round times a few steps of each (the order alternates between rounds); ``ratio`` is the median over rounds of
wrapped/unwrapped, so drift in the machine's speed, which all see within a round, cancels out. Rounds are added
until the A/A spread is under 0.01 (``esper_runtime.bench.paired``), and the spread is reported beside the ratio.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from esper_runtime.bench.paired import paired_rounds, ratio
from esper_runtime.devices import hardware_label, resolve
from esper_runtime.kasmina import KasminaConfig, wrap
from esper_runtime.run.defaults import growth_defaults


def _mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    return model, torch.randn(128, 784), torch.randint(0, 10, (128,))


def _cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10),
    )
    return model, torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))


def _step_fn(model: nn.Module, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def measure(make, rounds: int, steps: int, configs: dict[str, tuple[KasminaConfig, int | None]],
            max_rounds: int = 150, device: torch.device = torch.device("cpu")) -> dict[str, dict]:
    """Per configuration name, the wrapped/unwrapped step-time ratio of the model ``make`` builds; every
    configuration (a KasminaConfig, and the epoch length the trainer would announce, or None) is timed in the
    same rounds against the same unwrapped model and A/A twin."""
    torch.manual_seed(0)
    host, x, y = make()
    host, x, y = host.to(device), x.to(device), y.to(device)
    cuda = device.type == "cuda"
    # All are copies made the same way, so none is favoured by where its memory happens to lie.
    models = {"base": copy.deepcopy(host),
              "twin": copy.deepcopy(host)}  # an unwrapped copy: base vs twin is the measurement's own noise (A/A)
    for name, (config, epoch_steps) in configs.items():
        models[name] = wrap(copy.deepcopy(host), config)
        if epoch_steps is not None:
            models[name].kasmina.expect_epoch_steps(epoch_steps)
    for m in models.values():
        m.train()
    fns = {name: _step_fn(m, x, y) for name, m in models.items()}
    for fn in fns.values():  # warm-up: allocator, kernels, optimizer state
        for _ in range(5):
            fn()

    def timed(fn):
        def once() -> float:
            if cuda:  # the steps' kernels are timed to their end, none left from the last model's
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            if cuda:
                torch.cuda.synchronize(device)
            return (time.perf_counter() - t0) / steps
        return once

    run = paired_rounds({name: timed(fn) for name, fn in fns.items()}, reference="base", twin="twin",
                        min_rounds=rounds, max_rounds=max_rounds)
    times = run["times"]
    base_s = statistics.median(times["base"])
    noise = ratio(times, "twin", "base")
    out = {}
    for name, (config, epoch_steps) in configs.items():
        wrapped, wrapped_s = models[name], statistics.median(times[name])
        # Each round times the models back to back: the median of the per-round ratios cancels slow drift.
        out[name] = {
            "ratio": round(ratio(times, name, "base"), 4),
            "ratio_of_medians": round(wrapped_s / base_s, 4),
            "aa_ratio": round(noise, 4),
            "aa_spread": run["aa_spread"],
            "aa_spread_met": run["aa_spread_met"],
            "rounds": run["rounds"],
            "base_step_ms": round(base_s * 1000, 3),
            "wrapped_step_ms": round(wrapped_s * 1000, 3),
            "seed_layers": len(wrapped.seed_layers()),
            "seeds": wrapped.kasmina.num_seeds(),
            "sample_every": wrapped.seed_layers()[0].sample_every,
            "epoch_steps": epoch_steps,
        }
    return out


def run(rounds: int = 30, steps: int = 32, max_rounds: int = 150, epoch_steps: int = 500,
        device: str = "cpu") -> dict:
    """Both models under the library's defaults (``KasminaConfig()``: 4 seeds a layer, sampled every 32 steps) and
    under what ``esper run`` and the demo configure (``growth_defaults``: 8-feature chunks, ``samples_per_epoch``)
    for an epoch of ``epoch_steps`` steps."""
    target = resolve(device)
    library = KasminaConfig()
    run_config = growth_defaults(1).kasmina
    # every step sampled: what one sample costs, beside the ratios it explains (timed in the same rounds)
    configs = {"library": (library, None), "run": (run_config, epoch_steps),
               "every_step": (library.model_copy(update={"stats_every": 1}), None)}
    results = {}
    for model, make in (("mlp", _mlp), ("cnn", _cnn)):
        measured = measure(make, rounds, steps, configs, max_rounds, target)
        results[model], results[f"{model}_run"] = measured["library"], measured["run"]
        every = measured["every_step"]
        results[model]["sample_ms"] = round((every["ratio"] - 1) * every["base_step_ms"], 3)
    return {
        "bench": "dormant-overhead",
        "ratio": max(r["ratio"] for r in results.values()),
        "aa_spread": max(r["aa_spread"] for r in results.values()),
        **results,
        "device": target.type,
        "hardware": hardware_label(target),
        "threads": torch.get_num_threads(),
        "stats_every": library.stats_every,
        "run_stats_every": run_config.stats_every,
        "run_samples_per_epoch": run_config.samples_per_epoch,
        "epoch_steps": epoch_steps,
        "min_rounds": rounds,
        "steps_per_round": steps,
        "notes": "mlp, cnn: the library's defaults; mlp_run, cnn_run: esper run's defaults (growth_defaults) with "
                 "the trainer announcing epochs of epoch_steps steps; each model's configurations are timed in the "
                 "same rounds against one unwrapped model and its A/A twin; sample_ms: what a sampled step adds "
                 "(the library's defaults sampling every step, timed in the same rounds)",
    }

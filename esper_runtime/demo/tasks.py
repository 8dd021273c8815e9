"""Small real tasks for the demo, generated or shipped with the environment (notes/benchmark-tasks.md)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["two_spirals"]


def two_spirals(seed: int = 42, n: int = 2000, noise: float = 0.25, rotations: int = 4, distractor: bool = False):
    """The peer prototype's two spirals: returns ((train_x, train_y), (val_x, val_y)), 80/20, standardized."""
    rng = np.random.default_rng(seed)
    half = n // 2
    t = np.sqrt(rng.random(half)) * rotations * 2 * np.pi
    x0 = np.cos(t) * t + rng.random(half) * noise
    y0 = np.sin(t) * t + rng.random(half) * noise
    a = np.stack([x0, y0], axis=1)
    x = np.concatenate([a, -a], axis=0)
    y = np.concatenate([np.zeros(half), np.ones(half)]).astype(np.int64)
    if distractor:
        x = np.concatenate([x, rng.standard_normal((n, 1))], axis=1)
    x = (x - x.mean(0)) / x.std(0)
    order = np.random.default_rng(seed + 1).permutation(n)
    cut = int(0.8 * n)
    tr, va = order[:cut], order[cut:]
    as_t = lambda arr, dt: torch.tensor(arr, dtype=dt)  # noqa: E731
    return ((as_t(x[tr], torch.float32), as_t(y[tr], torch.int64)),
            (as_t(x[va], torch.float32), as_t(y[va], torch.int64)))


"""Seeded randomness without touching the caller's: ``seeded(seed)`` runs a block with torch's global generator
seeded (so modules built inside initialize as they always have) and puts the caller's generator state back after.
Library code seeds through this, or through its own ``torch.Generator``, and never reseeds the global RNG for good."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["seeded"]


@contextlib.contextmanager
def seeded(seed: int | None):
    """``torch.manual_seed(seed)`` for the block only (None: no seeding, the caller's state is still restored).
    CUDA generators are saved and restored too when CUDA is in use."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield

"""One set of controller settings for every task (issue #12): what ``esper demo`` and ``esper study`` run.

Seeds in every layer, the output layer included. Grow early (the later a branch is grown, the less it can learn)
where the measured growth signal is strongest, one graft at a time so the signal is measured again with the last
branch blended in, and stop when the strongest signal falls below a quarter of the first germination's (growth
that no longer pays). Keep an adaptation unless it clearly hurts (early validation accuracy is noisy), and let a
branch fine-tune on the task for most of the run before it is fossilized (fossilized parameters are frozen for
good).
"""

from __future__ import annotations

from esper_runtime.config import EsperConfig

__all__ = ["growth_defaults"]


def growth_defaults(epochs: int, chunk: int = 8) -> EsperConfig:
    return EsperConfig.model_validate({
        "kasmina": {"chunk_size": chunk, "stats_every": 2, "samples_per_epoch": 16, "reconstruction_steps": 20, "graft_steps": 50,
                    "stabilize_steps": 25, "evaluate_steps": 25},
        "tamiyo": {"warmup_epochs": 3, "patience": 1, "min_delta": 0.01, "max_germinations": 6, "max_active_seeds": 6,
                   "one_graft_at_a_time": True, "min_growth_ratio": 0.25,
                   "fine_tune_epochs": max(1, int(0.8 * epochs)), "accept_tolerance": 0.05, "min_improvement": -0.05},
        "tolaria": {"epochs": epochs, "lr": 3e-3, "batch_size": 64},
    })

"""Tamiyo: the strategic controller."""

from esper_runtime.tamiyo.heuristic import EpochState, TamiyoController, compute_reward

__all__ = ["EpochState", "TamiyoController", "compute_reward"]

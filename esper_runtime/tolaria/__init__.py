"""Tolaria: the training loop, checkpoints and rollback."""

from esper_runtime.tolaria.trainer import History, TolariaTrainer

__all__ = ["History", "TolariaTrainer"]

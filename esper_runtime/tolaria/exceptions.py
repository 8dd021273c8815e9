"""Errors of Tolaria, the trainer."""

from __future__ import annotations

from streams.exceptions import EsperError

__all__ = ["TrainingError"]


class TrainingError(EsperError):
    """The trainer was set up wrong (no data, an unknown objective)."""

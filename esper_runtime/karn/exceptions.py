"""Karn's errors."""

from __future__ import annotations

from streams.exceptions import EsperError

__all__ = ["KarnError"]


class KarnError(EsperError):
    """Karn could not do what it was asked (nothing to mutate, nothing validated)."""

"""Errors of the folds."""

from __future__ import annotations

from streams.exceptions import EsperError

__all__ = ["Unapplicable"]


class Unapplicable(EsperError):
    """A record the fold skips (with this reason) instead of applying."""

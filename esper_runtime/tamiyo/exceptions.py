"""Errors of Tamiyo, the controller."""

from __future__ import annotations

from streams.exceptions import EsperError

__all__ = ["PolicyError", "DomainError"]


class PolicyError(EsperError):
    """A policy checkpoint is missing, corrupt, or of another kind."""


class DomainError(EsperError, ValueError):
    """The domain configuration does not fit the model."""

    exit_code = 2

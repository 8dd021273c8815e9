"""Errors of the local infrastructure (the broker, the processors' process)."""

from __future__ import annotations

from streams.exceptions import EsperError

__all__ = ["BrokerError"]


class BrokerError(EsperError):
    """The local broker could not be fetched, started, reached or stopped."""

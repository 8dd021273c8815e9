"""Errors of the processors and the analytics store."""

from __future__ import annotations

from streams.exceptions import EsperError

__all__ = ["StoreBusy", "StoreError"]


class StoreBusy(EsperError):
    """Another process owns the embedded store and offers no way in."""

    exit_code = 2


class StoreError(EsperError):
    """The query failed (bad SQL, unknown table): ClickHouse's message, without a stack."""

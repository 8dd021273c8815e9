"""Errors of the processors and the analytics store."""

from __future__ import annotations

from streams.exceptions import EsperError

__all__ = ["StoreBusy", "StoreError", "StoreUnavailable"]


class StoreBusy(EsperError):
    """Another process owns the embedded store and offers no way in."""

    exit_code = 2


class StoreError(EsperError):
    """The query failed (bad SQL, unknown table): ClickHouse's message, without a stack."""


class StoreUnavailable(StoreError):
    """The store cannot be reached now (a ClickHouse server down, a network fault): the same request may succeed
    later, so the sink waits and retries instead of setting records aside."""

"""ClickHouse for analytics: the embedded store (chdb) and the telemetry sink that fills it from the log."""

from processors.clickhouse.store import EmbeddedStore, StoreBusy, StoreError, open_store
from processors.clickhouse.sink import TelemetrySink, rows_for

__all__ = ["EmbeddedStore", "StoreBusy", "StoreError", "open_store", "TelemetrySink", "rows_for"]

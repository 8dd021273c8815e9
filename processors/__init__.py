"""The processors: the faust app that materializes the log's views live (seed state, the Urza library,
Urabrask's distributions), the telemetry sink and the ClickHouse store. Run with ``esper processors``."""

__all__ = ["app", "clickhouse", "exceptions", "faust_patch"]  # submodules, imported on use

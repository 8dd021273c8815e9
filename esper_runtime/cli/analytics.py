"""``esper sql`` and ``esper sink``: telemetry into ClickHouse (embedded chdb), and SQL over it."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from streams import Backbone

console = Console(stderr=True)


def sql(query: str = typer.Argument(..., help="e.g. \"SELECT run_id, max(val_accuracy) FROM esper.epochs GROUP BY run_id\""),
        fmt: str = typer.Option("table", "--format", help="table or json (one object per row)")) -> None:
    """Run one read-only SELECT on the analytics tables (esper.epochs, seed_telemetry, lifecycle_transitions,
    decisions, kernel_measurements, field_reports, blueprints), with limits on time, memory and rows."""
    from processors.clickhouse import open_store

    store = open_store(Backbone().settings)
    try:
        rows = store.read(query)
    finally:
        store.close()
    if fmt == "json":
        for row in rows:
            print(json.dumps(row))
        return
    table = Table()
    for col in (rows[0] if rows else {"(no rows)": None}):
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console().print(table)


def sink(idle_timeout: float = typer.Option(0.0, help="Stop after this many idle seconds (0: run until Ctrl-C)."),
         group: str = typer.Option("telemetry-sink")) -> None:
    """Move telemetry from the log into ClickHouse (epochs, seed health, transitions, decisions, kernel
    measurements, field reports), in batches, at least once, deduplicated by event id."""
    from processors.clickhouse import TelemetrySink, open_store
    from processors.clickhouse.sink import SINK_TOPICS

    bb = Backbone()
    store = open_store(bb.settings)
    consumer = bb.consumer([bb.resolve_topic(t) for t in SINK_TOPICS], group_id=group, name="telemetry-sink")
    sink_ = TelemetrySink(store, consumer)
    try:
        sink_.run(idle_timeout=idle_timeout or None)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
        store.close()
        bb.close()
    console.print(f"sink: inserted {dict(sink_.inserted)}")

"""Karn, phase 1 (appendix D, G.2): a listener. It consumes field reports and keeps them as a dataset for the
generator and reward model it will train later; it designs nothing yet."""

from __future__ import annotations

import json
from pathlib import Path

from streams.contracts import FieldReport

__all__ = ["KarnListener"]


class KarnListener:
    def __init__(self, dataset: Path):
        self.dataset = Path(dataset)
        self.dataset.parent.mkdir(parents=True, exist_ok=True)
        self.logged = 0

    def log(self, report: FieldReport, position: str = "") -> None:
        row = report.to_avro()
        row["envelope"] = {**row["envelope"], "occurred_at": report.envelope.occurred_at.isoformat()}
        row["log_position"] = position
        with self.dataset.open("a") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
        self.logged += 1

    def run(self, consumer, idle_timeout: float | None = None) -> int:
        def handle(item):
            if item.name == FieldReport.AVRO_NAME:
                r = item.record
                self.log(item.decoded.typed(), f"{r.topic}/{r.partition}/{r.offset}")

        consumer.run(handle, idle_timeout=idle_timeout, batch=500)
        return self.logged

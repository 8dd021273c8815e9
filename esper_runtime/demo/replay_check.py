"""Fold one run's events back from the broker (``processors.run_view``), optionally only up to an offset or time."""

from __future__ import annotations

from processors.run_view import RunView
from streams.backbone import Backbone

__all__ = ["fold_run", "RUN_TOPICS"]

RUN_TOPICS = ("kasmina.lifecycle.transitions", "tolaria.run.events", "innovation.field_reports", "tamiyo.decisions",
              "control.kasmina.commands", "kasmina.telemetry.seeds", "tolaria.system.state",
              "tamiyo.adaptation.signals")


def fold_run(backbone: Backbone, run_id: str, **bounds) -> tuple[RunView, int]:
    """The run folded from offset 0 up to ``bounds`` (ReplayReader's until_offset / until_time_ms / since_time_ms).
    Returns the view and the number of records that could not be decoded (they are skipped, and counted)."""
    view = RunView(run_id)
    bad = 0
    topics = [backbone.resolve_topic(t) for t in RUN_TOPICS]
    for item in backbone.replay_reader().events(topics, **bounds):
        if item.error is not None:
            bad += 1
            continue
        r = item.record
        view.apply(item.decoded.typed(), f"{r.topic}/{r.partition}/{r.offset}")
    return view, bad

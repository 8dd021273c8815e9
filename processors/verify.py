"""Replay against the live state: fold the log, read what the processors materialized, and list every difference.

``fold_run`` folds one run's events from offset 0 (up to optional bounds); ``fold_library`` folds the Urza topics.
``verify`` compares them with the compacted state topics the processors' app writes (``state.kasmina.seeds``,
``state.urza.library``). The processors may still be catching up, so it retries until the two agree or the timeout
passes; whatever still differs then is returned, one line each.
"""

from __future__ import annotations

import time

from processors.run_view import RunView
from processors.state import read_state_topic
from processors.urza_view import URZA_TOPICS, UrzaView
from streams.backbone import Backbone
from streams.exceptions import DecodeError

__all__ = ["fold_run", "fold_runs", "fold_library", "verify", "last_versions", "RUN_TOPICS"]

RUN_TOPICS = ("kasmina.lifecycle.transitions", "tolaria.run.events", "innovation.field_reports", "tamiyo.decisions",
              "control.kasmina.commands", "kasmina.telemetry.seeds", "tolaria.system.state",
              "tamiyo.adaptation.signals")


def fold_runs(backbone: Backbone, run_ids, **bounds) -> tuple[dict[str, RunView], int]:
    """Several runs folded in one pass over the log from offset 0 up to ``bounds`` (ReplayReader's until_offset /
    until_time_ms / since_time_ms). Returns the views and the number of records that could not be decoded (they
    are skipped, and counted)."""
    views = {run_id: RunView(run_id) for run_id in run_ids}
    bad = 0
    serde = backbone.serde
    topics = [backbone.resolve_topic(t) for t in RUN_TOPICS]
    for rec in backbone.replay_reader().records(topics, **bounds):
        try:
            name, envelope = serde.peek(rec.value, rec.topic)
            view = views.get(envelope["run_id"])
            if view is None:
                continue
            if RunView.handles(name):  # decoded in full only when the fold uses more than the envelope
                view.apply(serde.decode(rec.value, rec.topic).typed(), f"{rec.topic}/{rec.partition}/{rec.offset}")
            else:
                view.note(envelope["event_id"])
        except DecodeError:
            bad += 1
    return views, bad


def fold_run(backbone: Backbone, run_id: str, **bounds) -> tuple[RunView, int]:
    """One run folded from the log (see ``fold_runs``)."""
    views, bad = fold_runs(backbone, [run_id], **bounds)
    return views[run_id], bad


def last_versions(backbone: Backbone, run_id: str) -> dict[str, int]:
    """Each originator's highest ``originator_version`` among the run's events: where a resumed run numbers on."""
    versions: dict[str, int] = {}
    serde = backbone.serde
    for rec in backbone.replay_reader().records([backbone.resolve_topic(t) for t in RUN_TOPICS]):
        try:
            _, envelope = serde.peek(rec.value, rec.topic)
        except DecodeError:
            continue
        if envelope["run_id"] == run_id:
            origin = envelope["originator_id"]
            versions[origin] = max(versions.get(origin, 0), int(envelope["originator_version"]))
    return versions


def fold_library(backbone: Backbone, **bounds) -> UrzaView:
    """The Urza view folded from the log. Records that do not decode, have no type here, or cannot be applied are
    skipped (``view.rejected`` lists the last kind): a poison record never stops the fold."""
    view = UrzaView()
    for item in backbone.replay_reader().events([backbone.resolve_topic(t) for t in URZA_TOPICS], **bounds):
        if item.error is None:
            try:
                event = item.decoded.typed()
            except DecodeError:
                continue
            view.apply(event)
    return view


def _differences(run: RunView, urza: UrzaView, backbone: Backbone) -> list[str]:
    seeds = read_state_topic(backbone, "state.kasmina.seeds")
    live = {v["seed"]: v for v in seeds.values() if v["run_id"] == run.run_id}
    diffs = []
    for seed in sorted(set(live) | set(run.seed_states)):
        want, got = run.seed_states.get(seed), live.get(seed)
        if want != got:
            diffs.append(f"{seed}: replay {_brief(want)} != live {_brief(got)}")
    entries = read_state_topic(backbone, "state.urza.library")
    live_urza = UrzaView.restore(entries.items(), lambda raw: backbone.serde.decode(raw).typed()).state()
    want_urza = urza.state()
    for part in ("blueprints", "kernels", "versions", "gaps"):
        for key in sorted(set(want_urza[part]) | set(live_urza[part])):
            if want_urza[part].get(key) != live_urza[part].get(key):
                diffs.append(f"urza {part} {key}: replay {_brief(want_urza[part].get(key))} != live "
                             f"{_brief(live_urza[part].get(key))}")
    return diffs


def _brief(value) -> str:
    if isinstance(value, dict) and "state" in value:
        return f"{value['state']} v{value['version']}"
    if isinstance(value, dict) and "status" in value:
        return f"{value['status']}"
    return "absent" if value is None else str(value)[:80]


def verify(backbone: Backbone, run: RunView, timeout: float = 30.0) -> list[str]:
    """Differences between the replayed ``run`` (and the replayed Urza library) and the live materialized state;
    [] when they agree. Waits up to ``timeout`` seconds for the processors to catch up."""
    deadline = time.monotonic() + timeout
    while True:
        diffs = _differences(run, fold_library(backbone), backbone)
        if not diffs or time.monotonic() > deadline:
            return diffs
        time.sleep(1.0)

"""The log folded into views: ``fold_run``/``fold_runs`` fold runs' events from offset 0 (up to optional bounds),
``fold_library`` the Urza topics, ``last_versions`` where a resumed run numbers on. Every record that cannot be
decoded or applied is skipped and counted, never fatal."""

from __future__ import annotations

from views.run_view import RunView
from views.urza_view import URZA_EVENTS, URZA_TOPICS, UrzaView
from streams.backbone import Backbone
from streams.exceptions import DecodeError
from streams.topics import TOPICS

__all__ = ["fold_run", "fold_runs", "fold_library", "last_versions", "RUN_TOPICS"]

# a run's events: everything on the log but the library's (which no run owns)
RUN_TOPICS = TOPICS.carrying(*(ev for spec in TOPICS for ev in spec.events
                               if ev not in {e.AVRO_NAME for e in URZA_EVENTS}))


def fold_runs(backbone: Backbone, run_ids, **bounds) -> tuple[dict[str, RunView], int]:
    """Several runs folded in one pass over the log from offset 0 up to ``bounds`` (ReplayReader's until_offset /
    until_time_ms / since_time_ms). Returns the views and the number of records that could not be decoded (they
    are skipped, and counted)."""
    views = {run_id: RunView(run_id) for run_id in run_ids}
    bad = 0
    serde = backbone.serde
    topics = [backbone.resolve_topic(t) for t in RUN_TOPICS]
    handled: dict[str, bool] = {}
    for rec in backbone.replay_reader().records(topics, **bounds):
        try:
            name, event_id, run_id = serde.peek_ids(rec.value, rec.topic)
            view = views.get(run_id)
            if view is None:
                continue
            uses = handled.get(name)
            if uses is None:
                uses = handled[name] = RunView.handles(name)
            if uses:  # decoded in full only when the fold uses more than the envelope
                view.apply(serde.decode_typed(rec.value, rec.topic), f"{rec.topic}/{rec.partition}/{rec.offset}")
            else:
                view.note(event_id)
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

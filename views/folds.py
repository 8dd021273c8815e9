"""The log folded into views: ``fold_run``/``fold_runs`` fold runs' events from offset 0 (up to optional bounds),
``fold_library`` the Urza topics, ``last_versions`` where a resumed run numbers on. Every record that cannot be
decoded or applied is skipped and counted, never fatal."""

from __future__ import annotations

import copy
import multiprocessing
import sys

from views.run_view import RunView
from views.urza_view import URZA_EVENTS, URZA_TOPICS, UrzaView
from streams.backbone import Backbone
from streams.exceptions import DecodeError
from streams.serde import SingleObjectSerde
from streams.topics import TOPICS

__all__ = ["fold_run", "fold_runs", "fold_library", "last_versions", "RUN_TOPICS"]

# a run's events: everything on the log but the library's (which no run owns)
RUN_TOPICS = TOPICS.carrying(*(ev for spec in TOPICS for ev in spec.events
                               if ev not in {e.AVRO_NAME for e in URZA_EVENTS}))


# topics whose every event the run view only counts (RunView.note: telemetry, system state, commands, signals): their
# records can be read in any order, and by another process
COUNTED_TOPICS = tuple(t for t in RUN_TOPICS if not any(RunView.handles(ev) for ev in TOPICS.spec(t).events))

# a fold reads the counted topics in a forked process when they hold at least this many records of its span: below
# it the fork and the child's consumer cost more than they save (`esper bench replay`, README "Benchmarks")
SPLIT_MIN_RECORDS = 1_000


def fold_runs(backbone: Backbone, run_ids, *, split: bool | None = None,
              **bounds) -> tuple[dict[str, RunView], int]:
    """Several runs folded in one pass over the log from offset 0 up to ``bounds`` (ReplayReader's until_offset /
    until_time_ms / since_time_ms). Returns the views and the number of records that could not be decoded (they
    are skipped, and counted).

    ``split`` (default: when the counted topics hold ``SPLIT_MIN_RECORDS`` or more, on Linux, with single-object
    framing) reads the records the views only count in a forked process while this one folds the rest in log
    order; the counts are then added to the views. The result is the same as one ordered pass; where it might not
    be (an event id on both sides, an event the views apply on a counted topic, a writer schema the child cannot
    resolve, the child failing) the fold is done again in one pass."""
    run_ids = list(run_ids)
    serde = backbone.serde
    reader = backbone.replay_reader()
    topics = [backbone.resolve_topic(t) for t in RUN_TOPICS]
    spans = reader.bounds(topics, **bounds)
    counted = {backbone.resolve_topic(t) for t in COUNTED_TOPICS}
    counted_spans = [b for b in spans if b.topic in counted and b.end > b.start]
    if split is None:
        split = (sys.platform.startswith("linux") and isinstance(serde, SingleObjectSerde)
                 and sum(b.end - b.start for b in counted_spans) >= SPLIT_MIN_RECORDS)
    if not split or not counted_spans:
        return _fold_ordered(reader, spans, topics, serde, run_ids)
    child = _Counter(backbone, counted_spans, run_ids)
    try:
        views, bad = _fold_ordered(reader, [b for b in spans if b.topic not in counted], topics, serde, run_ids)
    except BaseException:
        child.stop(wait=0)  # nobody will read its answer
        raise
    counts = child.result()
    if counts is None or not _add_counts(views, counts[1]):
        return _fold_ordered(backbone.replay_reader(), spans, topics, serde, run_ids)
    return views, bad + counts[0]


def _fold_ordered(reader, spans, topics, serde, run_ids) -> tuple[dict[str, RunView], int]:
    views = {run_id: RunView(run_id) for run_id in run_ids}
    bad = 0
    handled: dict[str, bool] = {}
    for rec in reader.merged(spans, topics):
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


class _Counter:
    """The counted topics' records read and counted per run in a forked process (``fold_runs``' split): each run's
    event ids and repeats, and the undecodable records. Sends None instead when the counts might differ from an
    ordered pass's."""

    def __init__(self, backbone: Backbone, spans, run_ids):
        ctx = multiprocessing.get_context("fork")
        self._conn, child_end = ctx.Pipe(duplex=False)
        self._process = ctx.Process(target=_count, args=(backbone, spans, list(run_ids), child_end), daemon=True,
                                    name="esper-fold-counter")
        self._process.start()
        child_end.close()

    def result(self) -> tuple[int, dict[str, tuple[set[str], int]]] | None:
        try:
            while not self._conn.poll(0.2):
                if not self._process.is_alive() and not self._conn.poll(0):
                    return None  # it died without an answer
            return self._conn.recv()
        except (EOFError, OSError):
            return None
        finally:
            self.stop()

    def stop(self, wait: float = 5.0) -> None:
        self._conn.close()
        self._process.join(timeout=wait)
        if self._process.is_alive():  # blocked on an answer nobody reads, or still reading
            self._process.kill()
            self._process.join()


def _count(backbone: Backbone, spans, run_ids: list[str], conn) -> None:
    """The child's work: a fresh consumer (the parent's do not survive a fork), the parent's serde without its
    catalog resolver (which reads through the parent's consumer): a writer it does not know sends None."""
    answer = None
    try:
        serde = copy.copy(backbone.serde)
        serde.resolver = None
        runs: dict[str, tuple[set[str], list[int]]] = {run_id: (set(), [0]) for run_id in run_ids}
        bad = 0
        handled: dict[str, bool] = {}
        source = backbone.source()
        try:
            for batch in source.values(spans):
                for value in batch:
                    try:
                        name, event_id, run_id = serde.peek_ids(value)
                    except DecodeError as exc:
                        if exc.reason == "unknown-fingerprint":
                            return
                        bad += 1
                        continue
                    uses = handled.get(name)
                    if uses is None:
                        uses = handled[name] = RunView.handles(name)
                    if uses:
                        return  # an event the views apply, where it has no place: the ordered pass decides
                    run = runs.get(run_id)
                    if run is not None:
                        if event_id in run[0]:
                            run[1][0] += 1
                        else:
                            run[0].add(event_id)
        finally:
            source.close()
        answer = (bad, {run_id: (seen, repeats[0]) for run_id, (seen, repeats) in runs.items()})
    except Exception:  # noqa: BLE001 - any failure here: the parent folds in one pass instead
        answer = None
    finally:
        conn.send(answer)
        conn.close()


def _add_counts(views: dict[str, RunView], counts: dict[str, tuple[set[str], int]]) -> bool:
    """The child's counts added to the ordered pass's views; False (views untouched) where an event id is on both
    sides, whose outcome depends on which came first."""
    if any(views[run_id].seen & seen for run_id, (seen, _) in counts.items()):
        return False
    for run_id, (seen, repeats) in counts.items():
        view = views[run_id]
        view.seen |= seen
        view.events += len(seen)
        view.duplicates += repeats
    return True


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

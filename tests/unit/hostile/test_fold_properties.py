"""Issue #13: the seed-state fold and the run view, tried on random schema-valid records (hypothesis). Any record
the wire admits — NaN metrics, negative or huge versions, odd strings, events of other runs, redeliveries — is
applied, counted as a duplicate or a gap, or skipped with its reason; nothing raises, a redelivered log changes
nothing, and the run view's seeds are exactly the seed fold's."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from views.run_view import RunView
from views.seed_state import APPLIED, DUPLICATE, GAP, fold_seed, fold_seed_record
from streams import SingleObjectSerde
from streams.contracts import TYPES
from streams.schemas import SchemaCatalog
from .avro_strategies import event_strategy

CATALOG = SchemaCatalog.load()
# envelopes that collide: two runs, a few originators, versions around the interesting edges, reused event ids
ENVELOPE = {"run_id": st.sampled_from(["r", "other"]),
            "originator_id": st.sampled_from(["seed/1/2", "seed/1/3", "run", "seed/x"]),
            "originator_version": st.integers(-1, 5) | st.sampled_from([2**63 - 1, -2**63]),
            "event_id": st.sampled_from([f"e{i}" for i in range(12)])}
FOLDED = sorted(name for name in TYPES if RunView.handles(name) and "." in name) or \
    sorted(name for name in TYPES if RunView.handles(name))
UNFOLDED = sorted(name for name in TYPES if not RunView.handles(name) and "Telemetry" in name)[:2]
transitions = event_strategy(CATALOG.get("esper.kasmina.SeedLifecycleTransition"), ENVELOPE)
any_event = st.one_of([event_strategy(CATALOG.get(n), ENVELOPE) for n in FOLDED + UNFOLDED])


@settings(max_examples=300, deadline=None)
@given(events=st.lists(transitions, max_size=25))
def test_the_seed_fold_never_raises_and_moves_one_version_at_a_time(events):
    states: dict[str, dict] = {}
    for ev in events:
        key = f"{ev.envelope.run_id}|{ev.envelope.originator_id}"
        before = states.get(key)
        outcome, state = fold_seed(before, ev)
        expected = (before["version"] if before else 0) + 1
        assert outcome in (APPLIED, DUPLICATE, GAP)
        if outcome == APPLIED:
            assert state["version"] == expected == ev.envelope.originator_version
            assert state["state"] == ev.to_state.value and json.dumps(state)  # what the state topic holds
            states[key] = state
        else:
            assert state is None
            assert (ev.envelope.originator_version < expected) == (outcome == DUPLICATE)
    # the same log delivered again (a consumer restart from an old offset) changes no seed
    for ev in events:
        key = f"{ev.envelope.run_id}|{ev.envelope.originator_id}"
        outcome, _ = fold_seed(states.get(key), ev)
        assert outcome != APPLIED or ev.envelope.originator_version == states[key]["version"] + 1


@settings(max_examples=200, deadline=None)
@given(events=st.lists(transitions, max_size=25))
def test_the_fold_on_decoded_records_is_the_fold_on_events(events):
    """The materializer folds the decoded record (``fold_seed_record``), a replay the generated event: same
    outcomes, same states, for the same records off the wire."""
    serde = SingleObjectSerde(CATALOG)
    typed: dict[str, dict] = {}
    raw: dict[str, dict] = {}
    for ev in events:
        key = f"{ev.envelope.run_id}|{ev.envelope.originator_id}"
        record = serde.decode(serde.encode(ev)).record
        a, state_a = fold_seed(typed.get(key), serde.decode(serde.encode(ev)).typed())
        b, state_b = fold_seed_record(raw.get(key), record)
        assert (a, state_a) == (b, state_b)
        if state_a is not None:
            typed[key], raw[key] = state_a, state_b


@settings(max_examples=300, deadline=None)
@given(events=st.lists(any_event, max_size=30))
def test_the_run_view_applies_any_valid_record_without_raising_or_skipping(events):
    view = RunView("r")
    for i, ev in enumerate(events):
        view.apply(ev, position=f"p{i}")
    ours = {ev.envelope.event_id for ev in events if ev.envelope.run_id == "r"}
    assert view.events == len(ours) and len(view.seen) == len(ours)
    assert view.rejected == []  # a handler that raises on a schema-valid record is a bug, not poison
    assert view.seeds == {seed: s["state"] for seed, s in view.seed_states.items()}
    summary = view.summary()
    json.dumps(summary, default=str)  # what `esper replay --json` prints
    again = RunView("r")
    for i, ev in enumerate(events + events):  # redelivered: every second copy is a duplicate, nothing changes
        again.apply(ev, position=f"p{i}")
    assert {k: v for k, v in again.summary().items() if k != "duplicates"} == \
        {k: v for k, v in summary.items() if k != "duplicates"}

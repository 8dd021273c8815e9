"""Issue #13, item 1: one schema-valid record the fold cannot apply never breaks the Urza library or a run's
replay: it is skipped with its reason, its successors still apply, and every fold of the log agrees."""

from __future__ import annotations

import json
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from views.run_view import RunView
from views.urza_view import MAX_JSON_DEPTH, UrzaView
from streams.contracts import BlueprintSubmitted, KernelCompiled, KernelStatusChanged, RunStarted
from streams.envelope import EnvelopeFactory

DEEP = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError on it
SHALLOW_BUT_DEEPER_THAN_ALLOWED = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)


def _blueprint(envs, i, ir_json=None):
    bid = f"bp{i:02d}"
    return BlueprintSubmitted(envelope=envs.next(f"blueprint/{bid}"), blueprint_id=bid, name=f"design{i}",
                              ir_version=1, ir_json=ir_json if ir_json is not None else json.dumps({"n": i}),
                              submitted_by="test")


def _compiled(envs, aid, bid, signature_json):
    return KernelCompiled(envelope=envs.next(f"kernel/{aid}"), artifact_id=aid, blueprint_id=bid, hardware="cpu",
                          pipeline="fast", toolchain_hash="t", sha256="0" * 64, size_bytes=1, uri="u",
                          compile_ms=1.0, signature_json=signature_json)


def test_a_deeply_nested_record_is_skipped_and_the_library_around_it_materializes():
    envs = EnvelopeFactory("lib", "test")
    events = [_blueprint(envs, i) for i in range(10)]
    events.append(_blueprint(envs, 99, ir_json=DEEP))
    events.append(_blueprint(envs, 98, ir_json=SHALLOW_BUT_DEEPER_THAN_ALLOWED))
    events += [_blueprint(envs, i) for i in range(10, 20)]
    events.append(_compiled(envs, "k-poison", "bp00", DEEP))
    good = _compiled(envs, "k-good", "bp00", json.dumps({"inputs": [{"name": "x", "shape": [None, 8]}]}))
    events.append(good)
    # the poisoned kernel's own next event (its originator's version 2) is not held up by the skipped version 1
    events.append(KernelStatusChanged(envelope=envs.next("kernel/k-poison"), artifact_id="k-poison",
                                      blueprint_id="bp00", from_status="COMPILED", to_status="VALIDATED"))
    view = UrzaView()
    for ev in events:
        view.apply(ev)  # never raises
    assert sorted(view.blueprints) == [f"bp{i:02d}" for i in range(20)]
    assert "k-good" in view.kernels and "k-poison" not in view.kernels
    assert len(view.rejected) == 3 and not view.gaps()
    reasons = " ".join(r for _, r in view.rejected)
    assert "RecursionError" in reasons and f"deeper than {MAX_JSON_DEPTH}" in reasons
    # the fold is still usable: queries, state, and what the live agent writes and restores
    assert view.state()["blueprints"] and view.query(features=8, status="COMPILED")
    restored = UrzaView.restore(view.take_dirty(lambda e: b"").items(), lambda raw: None)
    assert restored.state() == view.state()


def test_the_live_agent_is_told_which_record_to_dead_letter():
    envs = EnvelopeFactory("lib", "test")
    view = UrzaView()
    assert view.apply(_blueprint(envs, 1)) and view.last_rejection is None
    assert not view.apply(_blueprint(envs, 2, ir_json=DEEP)) and "bp02" not in view.blueprints
    assert view.last_rejection and "BlueprintSubmitted" in view.last_rejection
    assert view.apply(_blueprint(envs, 3)) and view.last_rejection is None


def test_a_run_whose_config_is_poison_still_replays():
    envs = EnvelopeFactory("run-1", "test")
    view = RunView("run-1")
    view.apply(RunStarted(envelope=envs.next("run"), task="t", epochs_planned=3, host_params=10, config_json=DEEP))
    assert view.config is None and view.task == "t" and view.events == 1


json_text = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                         lambda children: st.lists(children, max_size=3)
                         | st.dictionaries(st.text(max_size=3), children, max_size=3),
                         max_leaves=30).map(json.dumps) | st.text(alphabet=string.printable + "[]{}", max_size=300)


@settings(max_examples=200, deadline=None)
@given(ir=json_text, signature=json_text, status=st.text(max_size=20), depth=st.integers(0, 3000))
def test_no_record_of_its_own_types_makes_the_urza_fold_raise(ir, signature, status, depth):
    envs = EnvelopeFactory("lib", "test")
    view = UrzaView()
    nested = "[" * depth + "]" * depth
    for ev in (_blueprint(envs, 1, ir_json=ir), _blueprint(envs, 2, ir_json=nested),
               _compiled(envs, "k1", "bp01", signature), _compiled(envs, "k2", "bp02", nested),
               KernelStatusChanged(envelope=envs.next("kernel/k1"), artifact_id="k1", blueprint_id="bp01",
                                   from_status="COMPILED", to_status=status or "VALIDATED")):
        view.apply(ev)
    view.state()
    view.query(features=8)
    view.take_dirty(lambda e: b"")
    assert view.applied + len(view.rejected) == 5

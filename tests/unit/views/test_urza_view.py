"""The Urza fold: order per originator, duplicates, gaps, and queries that never return unvalidated kernels."""

import json

from views.urza_view import UrzaView
from streams.contracts import BlueprintSubmitted, KernelCompiled, KernelStatusChanged, KernelTagsAssigned
from streams.envelope import EnvelopeFactory


def _compiled(envs, aid, width=8, bp="bp1"):
    sig = {"inputs": [{"name": "x", "shape": [None, width]}]}
    return KernelCompiled(envelope=envs.next(f"kernel/{aid}"), artifact_id=aid, blueprint_id=bp, hardware="cpu",
                          pipeline="fast", toolchain_hash="t", sha256="0" * 64, size_bytes=1, uri=f"urza://{aid}",
                          compile_ms=1.0, signature_json=json.dumps(sig))


def _status(envs, aid, to):
    return KernelStatusChanged(envelope=envs.next(f"kernel/{aid}"), artifact_id=aid, blueprint_id="bp1",
                               from_status="COMPILED", to_status=to)


def _tags(envs, aid, tags, risk):
    return KernelTagsAssigned(envelope=envs.next(f"kernel/{aid}"), artifact_id=aid, hardware="cpu", tags=tags,
                              risk_score=risk, conf_level="High", method="percentile", population=10)


def test_only_validated_kernels_with_every_tag_are_returned_lowest_risk_first():
    envs = EnvelopeFactory("r", "test")
    view = UrzaView()
    view.apply(BlueprintSubmitted(envelope=envs.next("blueprint/bp1"), blueprint_id="bp1", name="n", ir_version=1,
                                  ir_json="{}", submitted_by="t"))
    for aid, tags, risk, status in [("a", ["high_speed", "low_memory"], 0.3, "VALIDATED"),
                                    ("b", ["high_speed", "low_memory"], 0.1, "VALIDATED"),
                                    ("c", ["high_speed"], 0.0, "VALIDATED"),
                                    ("d", ["high_speed", "low_memory"], 0.0, "REJECTED")]:
        view.apply_all([_compiled(envs, aid), _tags(envs, aid, tags, risk), _status(envs, aid, status)])
    assert [k.artifact_id for k in view.query(["high_speed", "low_memory"])] == ["b", "a"]
    assert [k.artifact_id for k in view.query(["high_speed"], features=16)] == []
    assert view.blueprints["bp1"].artifacts == ["a", "b", "c", "d"]
    assert view.query([], status="COMPILED") == []  # everything moved on from COMPILED


def test_events_ahead_of_their_predecessor_wait_and_gaps_are_reported():
    envs = EnvelopeFactory("r", "test")
    first, second, third = _compiled(envs, "k"), _status(envs, "k", "VALIDATED"), _status(envs, "k", "RETIRED")
    view = UrzaView()
    view.apply(third)
    view.apply(first)
    assert view.kernels["k"].status == "COMPILED"  # third waits for second
    assert view.gaps() == {"kernel/k": [3]}
    view.apply(second)
    assert view.kernels["k"].history == ["COMPILED", "VALIDATED", "RETIRED"] and view.gaps() == {}


def test_duplicates_are_skipped_not_applied_twice():
    envs = EnvelopeFactory("r", "test")
    events = [_compiled(envs, "k"), _status(envs, "k", "VALIDATED")]
    view = UrzaView().apply_all(events + events)
    assert view.kernels["k"].history == ["COMPILED", "VALIDATED"]
    assert view.duplicates == 2 and view.applied == 2

"""Karn's mutation operators: every child is valid at the widths it will be compiled for, new in what it computes,
as identity-at-start as its parents, and carries its lineage; the operator policy and the family tree are folds of
the log."""

import json
import math
import random

import pytest
import torch

from esper_runtime.blueprints import build_module, starter_blueprints
from esper_runtime.blueprints.exceptions import BlueprintInvalid
from esper_runtime.blueprints.ir import Blueprint
from esper_runtime.blueprints.validate import MAX_NODES
from esper_runtime.karn.evolve import OperatorPolicy, design_score, propose
from esper_runtime.karn.lineage import family_tree
from esper_runtime.karn.mutate import (CHECK_WIDTHS, OPERATORS, check_child, child_name, learns, mutate,
                                       starts_as_identity, structure_key)
from streams.contracts import (BlueprintSubmitted, FieldReport, KernelCompiled, KernelStatusChanged,
                               KernelTagsAssigned)
from streams.envelope import EnvelopeFactory
from views.urza_view import UrzaView

LIBRARY = {bp.name: bp for bp in starter_blueprints()}


def _children(operator, tries=6, seed=0):
    rng = random.Random(seed)
    names = sorted(LIBRARY)
    for name in names:
        for _ in range(tries):
            parents = [LIBRARY[name]]
            if operator == "crossover":
                parents.append(LIBRARY[rng.choice([n for n in names if n != name])])
            child = mutate(operator, parents, rng)
            if child is not None:
                yield parents, child


@pytest.mark.parametrize("operator", [op for op in OPERATORS if op != "remove_residual"])
def test_each_operator_makes_valid_new_children_that_keep_the_identity_start(operator):
    made = list(_children(operator))
    assert made, f"{operator} applied to no starter design"
    for parents, child in made:
        bp = child.blueprint
        assert child.operator == operator and child.parent_ids == tuple(p.blueprint_id for p in parents)
        assert bp.name == child_name(bp.doc) and "karn" in bp.doc["tags"]
        assert structure_key(bp.doc) not in {structure_key(p.doc) for p in parents}
        for width in CHECK_WIDTHS:  # instantiates (and validates) at every width it will be compiled for
            ir = bp.instantiate(width, 24 if bp.reads_input else None)
            module = build_module(ir, seed=0)
            x = torch.randn(3, width)
            out = module(x, torch.randn(3, 24)) if bp.reads_input else module(x)
            assert out.shape == x.shape and torch.isfinite(out).all()
        assert starts_as_identity(bp) == all(starts_as_identity(p) for p in parents)


def test_remove_residual_undoes_add_residual():
    rng = random.Random(1)
    parent = LIBRARY["residual_mlp"]
    assert mutate("remove_residual", [parent], rng) is None  # nothing to remove in a starter design
    grown = mutate("add_residual", [parent], rng)
    back = mutate("remove_residual", [grown.blueprint], rng)
    assert back is not None and structure_key(back.blueprint.doc) == structure_key(parent.doc)
    assert back.blueprint.name != parent.name  # the same computation, found again, named by its structure


def test_the_same_structure_gets_the_same_name_and_crossover_refuses_two_wide_inputs():
    a = mutate("deepen", [LIBRARY["residual_mlp"]], random.Random(3))
    b = mutate("deepen", [LIBRARY["residual_mlp"]], random.Random(3))
    assert a.blueprint.name == b.blueprint.name
    assert mutate("crossover", [LIBRARY["input_branch"], LIBRARY["model_input_branch"]], random.Random(0)) is None


def test_a_child_past_the_limits_is_never_offered():
    rng, design = random.Random(0), LIBRARY["deep_residual_mlp"]
    for _ in range(40):  # deepen until the node limit refuses the next child
        child = mutate("deepen", [design], rng)
        if child is None:
            break
        design = child.blueprint
        assert len(design.doc["nodes"]) <= MAX_NODES
    parent = LIBRARY["residual_mlp"]
    same = json.loads(parent.canonical) | {"name": "karn_same"}
    with pytest.raises(BlueprintInvalid, match="computes what a parent computes"):
        check_child(same, [parent])
    no_identity = json.loads(parent.canonical) | {"name": "karn_noid"}
    del no_identity["nodes"][2]["attrs"]["init"]  # the delta's last layer no longer starts at zero
    with pytest.raises(BlueprintInvalid, match="identity"):
        check_child(no_identity, [parent])
    too_wide = json.loads(parent.canonical) | {"name": "karn_wide"}
    too_wide["nodes"][0]["attrs"]["out"] = 70_000  # over the width limit at any chunk width
    with pytest.raises(BlueprintInvalid):
        check_child(too_wide, [parent])


def test_the_operator_policy_tries_every_operator_then_favours_the_best():
    policy = OperatorPolicy(c=0.1)
    rng = random.Random(0)
    first = policy.ranked(rng)[0]
    policy.record(first, 0.9)
    assert policy.ranked(rng)[0] != first  # the untried come first
    for op in OPERATORS:
        policy.record(op, 0.2)
    policy.record("deepen", 0.95)
    policy.record("deepen", 0.95)
    assert policy.ranked(rng)[0] == "deepen"


def test_the_operator_policy_is_conditioned_on_the_parent():
    policy = OperatorPolicy(c=0.1)
    for op in OPERATORS:
        policy.record(op, 0.5, "chunk")
    for _ in range(3):
        policy.record("deepen", 0.9, "chunk")
        policy.record("deepen", 0.1, "layer")
        policy.record("add_gate", 0.9, "layer")
    rng = random.Random(0)
    assert policy.ranked(rng, "chunk")[0] == "deepen"
    assert policy.ranked(rng, "layer")[0] == "add_gate"
    # a context with no evidence of its own: the operators' means over every context, plus the bonus of one try
    assert policy.value("deepen", "model") == pytest.approx(policy.mean("deepen") + 0.1 * math.sqrt(2 * math.log(1)))
    assert policy.ranked(rng, "model")[0] == "add_gate"  # 0.9 everywhere it was tried, deepen 0.5 on average


# ------------------------------------------------------------------------------ a library on the log
def _library_events(children=()):
    """The starter designs, each with a validated kernel at width 8 (risk 0.2), and Karn children with kernels
    that end as given: (child blueprint, operator, parents, status, risk)."""
    envs = EnvelopeFactory("r", "test")
    events = []

    def design(bp, parents=(), mutation="", status="VALIDATED", risk=0.2):
        events.append(BlueprintSubmitted(
            envelope=envs.next(f"blueprint/{bp.blueprint_id}"), blueprint_id=bp.blueprint_id, name=bp.name,
            ir_version=1, ir_json=bp.canonical, submitted_by="t", tags=bp.doc["tags"], parent_ids=list(parents),
            mutation=mutation))
        if bp.reads_input:
            return
        aid = f"{bp.name}-8"
        sig = {"inputs": [{"name": "x", "shape": [None, 8]}]}
        events.append(KernelCompiled(envelope=envs.next(f"kernel/{aid}"), artifact_id=aid, blueprint_id=bp.blueprint_id,
                                     hardware="cpu", pipeline="fast", toolchain_hash="t", sha256="0" * 64, size_bytes=1,
                                     uri=f"urza://{aid}", compile_ms=1.0, signature_json=json.dumps(sig)))
        if status == "VALIDATED":
            events.append(KernelTagsAssigned(envelope=envs.next(f"kernel/{aid}"), artifact_id=aid, hardware="cpu",
                                             tags=["trainable"], risk_score=risk, conf_level="High", method="percentile",
                                             population=10))
        events.append(KernelStatusChanged(envelope=envs.next(f"kernel/{aid}"), artifact_id=aid,
                                          blueprint_id=bp.blueprint_id, from_status="COMPILED", to_status=status))

    for bp in LIBRARY.values():
        design(bp)
    for child, operator, parents, status, risk in children:
        design(child, [p.blueprint_id for p in parents], operator, status, risk)
    return events


def test_scores_policy_and_family_tree_are_folds_of_the_log():
    rng = random.Random(0)
    good = mutate("deepen", [LIBRARY["residual_mlp"]], rng).blueprint
    bad = mutate("add_gate", [LIBRARY["residual_mlp"]], rng).blueprint
    view = UrzaView().apply_all(_library_events([(good, "deepen", [LIBRARY["residual_mlp"]], "VALIDATED", 0.1),
                                                 (bad, "add_gate", [LIBRARY["residual_mlp"]], "REJECTED", 0.0)]))
    shapes = [(8, None)]
    assert design_score(view, good.blueprint_id, shapes, False) == pytest.approx(0.9)
    assert design_score(view, bad.blueprint_id, shapes, False) == 0.0
    assert design_score(view, LIBRARY["residual_mlp"].blueprint_id, shapes, False) == pytest.approx(0.8)
    policy = OperatorPolicy.from_view(view, shapes)
    assert policy.counts == {"deepen": 1, "add_gate": 1} and policy.mean("deepen") == pytest.approx(0.9)

    envs = EnvelopeFactory("run", "tamiyo")
    reports = [FieldReport(envelope=envs.next("s"), blueprint_id=good.blueprint_id, seed_id="0/1", pre_metric=0.5,
                           post_metric=0.6, outcome=outcome, eval_metrics={}).to_avro()
               for outcome in ("FOSSILIZED", "CULLED")]
    tree = family_tree(view, reports)
    assert [d["name"] for d in tree["designs"]] == sorted([good.name, bad.name])
    row = next(d for d in tree["designs"] if d["name"] == good.name)
    assert row["parent_names"] == ["residual_mlp"] and row["mutation"] == "deepen" and row["depth"] == 1
    assert (row["germinated"], row["fossilized"], row["validated"]) == (2, 1, 1)
    assert tree["field"]["karn"]["success_rate"] == 0.5 and tree["field"]["others"]["germinated"] == 0

    children = propose(view, shapes, 3, random.Random(5), policy)
    assert len(children) == 3
    known = {structure_key(r.ir) for r in view.blueprints.values()}
    assert all(structure_key(c.blueprint.doc) not in known for c in children)
    assert len({structure_key(c.blueprint.doc) for c in children}) == 3


def test_distance_ignores_names_and_order_and_sees_wiring():
    from esper_runtime.karn.diversity import distance, diversity, novelty

    a = LIBRARY["residual_mlp"].doc
    renamed = json.loads(json.dumps(a))
    for n in renamed["nodes"]:
        n["id"] = "n_" + n["id"]
        n["inputs"] = [s if s == "x" else "n_" + s for s in n["inputs"]]
    renamed["nodes"].reverse()
    renamed["output"] = "n_" + a["output"]
    assert distance(a, renamed) == 0.0
    assert 0.0 < distance(a, LIBRARY["wide_residual_mlp"].doc) < distance(a, LIBRARY["attention_head"].doc) <= 1.0
    assert diversity([a, renamed]) == 0.0 and diversity([a]) == 0.0
    assert novelty(a, [renamed, LIBRARY["attention_head"].doc]) == 0.0 and novelty(a, []) == 1.0


def test_a_generation_keeps_its_most_novel_candidates():
    from esper_runtime.karn.diversity import novelty

    view = UrzaView().apply_all(_library_events())
    shapes = [(8, None)]
    library = [r.ir for r in view.blueprints.values()]
    wide = propose(view, shapes, 2, random.Random(2), OperatorPolicy(), pool=4)
    narrow = propose(view, shapes, 2, random.Random(2), OperatorPolicy(), pool=1)
    assert len(wide) == len(narrow) == 2
    assert novelty(wide[0].blueprint.doc, library) >= novelty(narrow[0].blueprint.doc, library)


def test_a_child_that_cannot_be_built_at_a_run_s_shape_is_not_proposed_and_its_size_is_read_where_it_can_be():
    from esper_runtime.karn.evolve import _params, fits

    heads = [c for _, c in _children("add_attention_head", tries=3)]
    assert heads
    child = heads[0].blueprint
    tokens = next(n["attrs"]["tokens"] for n in child.doc["nodes"] if n["op"] == "attention")
    assert tokens > 2 and fits(child, [(8, None), (16, None)]) and not fits(child, [(2, None), (8, None)])
    assert _params(child, [(2, None), (8, None)]) == _params(child, [(8, None)]) is not None


def test_only_children_that_fit_the_run_s_shapes_are_proposed(monkeypatch):
    import esper_runtime.karn.evolve as evolve

    monkeypatch.setattr(evolve, "fits", lambda bp, shapes: not any(n["op"] == "attention" for n in bp.doc["nodes"]))
    view = UrzaView().apply_all(_library_events())
    children = propose(view, [(8, None)], 6, random.Random(0), OperatorPolicy(), pool=2)
    assert children and not any(n["op"] == "attention" for c in children for n in c.blueprint.doc["nodes"])


def test_a_child_that_only_resizes_its_parent_is_near_it_but_new():
    from esper_runtime.karn.diversity import distance

    for parents, child in _children("scale_width", tries=2):
        d = distance(child.blueprint.doc, parents[0].doc)
        assert 0.0 < d < 1.0, (child.blueprint.name, d)  # novel enough to be kept, unlike a renaming


def test_a_child_no_gradient_reaches_is_refused_though_it_starts_as_the_identity():
    """A ReLU after the zero-initialized output layer: the child is the identity at first and stays it (relu'(0)
    is 0, so its output layer never moves) — seen in the field as a seed stuck in TRAINING for a whole run."""
    dead = {"name": "dead_reader", "trainable": True, "nodes": [
        {"id": "h", "op": "linear", "inputs": ["u"], "attrs": {"out": {"F": 2}}},
        {"id": "a", "op": "relu", "inputs": ["h"]},
        {"id": "d", "op": "linear", "inputs": ["a"], "attrs": {"out": "F", "init": "zeros"}},
        {"id": "r", "op": "relu", "inputs": ["d"]},
        {"id": "y", "op": "add", "inputs": ["x", "r"]}], "output": "y"}
    assert not learns(Blueprint.parse(dead))
    with pytest.raises(BlueprintInvalid, match="no gradient"):
        check_child(dead, [])
    bypass = {**dead, "nodes": dead["nodes"][:3] + [{"id": "y", "op": "relu", "inputs": ["x"]}]}  # ignores them
    assert not learns(Blueprint.parse(bypass))
    alive = {**dead, "nodes": dead["nodes"][:3] + [{"id": "y", "op": "add", "inputs": ["x", "d"]}]}
    assert learns(Blueprint.parse(alive)) and check_child(alive, [])

"""Karn's reward model: features and graphs of the IR, held-out evaluation that a model can fail, selection by
prediction, and checkpoints that load as weights only and refuse a file that is not the one on the card."""

import math
import random

import pytest

from esper_runtime.blueprints import starter_blueprints
from esper_runtime.blueprints.validate import param_count
from esper_runtime.karn.evolve import select
from esper_runtime.karn.exceptions import KarnError
from esper_runtime.karn.mutate import OPERATORS, mutate
from esper_runtime.karn.reward import (MIN_SAMPLES, NODE_VOCAB, PROBE_D, PROBE_F, Fitted, GraphModel, Sample,
                                       cross_validate, design_graph, fit_best, graph_features, kendall_tau,
                                       load_model, save_model)


def _designs(n: int, seed: int = 0):
    """The starter library and mutants of it, ``n`` distinct designs."""
    rng = random.Random(seed)
    pool = list(starter_blueprints())
    seen = {bp.blueprint_id for bp in pool}
    while len(pool) < n:
        op = rng.choice(sorted(OPERATORS))
        parents = [rng.choice(pool)] + ([rng.choice(pool)] if op == "crossover" else [])
        if op == "crossover" and parents[0] is parents[1]:
            continue
        child = mutate(op, parents, rng)
        if child is not None and child.blueprint.blueprint_id not in seen:
            seen.add(child.blueprint.blueprint_id)
            pool.append(child.blueprint)
    return pool[:n]


def _params(bp) -> int:
    return param_count(bp.instantiate(PROBE_F, PROBE_D if bp.reads_input else None))


def _samples(n: int, target, seed: int = 0):
    return [Sample(bp.blueprint_id, bp.name, bp.doc, target(bp)) for bp in _designs(n, seed)]


def test_features_have_one_length_and_tell_designs_apart():
    designs = _designs(20)
    rows = [graph_features(bp.doc) for bp in designs]
    assert len({len(r) for r in rows}) == 1
    assert len({tuple(r) for r in rows}) > 15  # a few mutants may differ only in a constant
    bp = designs[0]
    assert rows[0][-1] == pytest.approx(math.log1p(_params(bp)))


def test_the_graph_has_a_node_per_input_read_and_per_op_and_an_edge_per_flow():
    for bp in _designs(20):
        graph = design_graph(bp.doc)
        inputs = {s for n in bp.doc["nodes"] for s in n["inputs"] if s in ("x", "u", "x0")}
        assert graph.x.shape == (len(inputs) + len(bp.doc["nodes"]), len(NODE_VOCAB) + 3)
        assert graph.edge_index.shape[1] == sum(len(n["inputs"]) for n in bp.doc["nodes"])
        assert float(graph.x[:, len(NODE_VOCAB) + 1].sum()) == 1.0  # exactly one output


def test_too_few_designs_give_no_model_and_say_why():
    fitted, report = fit_best(_samples(MIN_SAMPLES - 1, _params), "urabrask")
    assert fitted is None and "needs" in report["reason"]


def test_held_out_designs_are_ranked_when_the_target_follows_the_graph():
    rng = random.Random(1)
    samples = _samples(30, lambda bp: math.log1p(_params(bp)) + rng.gauss(0, 0.2))
    for kind in ("forest", "gnn"):
        result = cross_validate(samples, kind, folds=3)
        assert result["samples"] == 30 and result["kendall_tau"] > 0.5, result


def test_a_target_the_graph_does_not_determine_is_not_learned():
    rng = random.Random(2)
    samples = _samples(30, lambda bp: rng.random())
    fitted, report = fit_best(samples, "urabrask", folds=3)
    taus = [m["kendall_tau"] for m in report["models"].values()]
    assert all(t is None or abs(t) < 0.35 for t in taus), report  # noise: about chance, whichever is chosen


def test_kendall_tau_is_none_where_undefined():
    assert kendall_tau([1, 2], [1, 2]) is None
    assert kendall_tau([1, 1, 1], [1, 2, 3]) is None
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_selection_follows_the_prediction_and_without_one_the_novelty():
    children = []
    rng = random.Random(3)
    for bp in starter_blueprints():
        child = mutate("scale_width", [bp], rng)
        if child is not None:
            children.append(child)
    assert len(children) >= 4

    class BySize:
        def predict(self, docs):
            return [float(_params(type(children[0].blueprint).parse(d))) for d in docs]

    picked = select(children, [], 2, BySize(), novelty_weight=0.0)
    largest = sorted(children, key=lambda c: -_params(c.blueprint))[:2]
    assert [c.blueprint.blueprint_id for c in picked] == [c.blueprint.blueprint_id for c in largest]
    assert all(c.predicted == _params(c.blueprint) for c in picked)
    plain = select(children, [], 2)
    assert len(plain) == 2 and all(c.predicted is None for c in plain)


def test_a_saved_gnn_loads_as_weights_only_and_predicts_the_same(tmp_path):
    samples = _samples(12, lambda bp: math.log1p(_params(bp)))
    model = GraphModel(epochs=30).fit(samples)
    docs = [s.doc for s in samples]
    offsets = {"esper.innovation.field_reports": {0: 7}}
    directory = save_model(Fitted("urabrask", model, {}), tmp_path, offsets, {"models": {}})
    loaded = load_model(directory)
    assert loaded.predict(docs) == pytest.approx(model.predict(docs))
    (directory / "model.pt").write_bytes((directory / "model.pt").read_bytes() + b"x")
    with pytest.raises(KarnError, match="hash"):
        load_model(directory)


def test_the_field_record_weighs_a_design_as_a_parent():
    from esper_runtime.karn.evolve import field_factor

    assert field_factor(None) == 1.0
    assert field_factor({"germinated": 0, "fossilized": 0}) == 1.0
    assert field_factor({"germinated": 4, "fossilized": 4}) == pytest.approx(10 / 6)
    assert field_factor({"germinated": 4, "fossilized": 0}) == pytest.approx(2 / 6)


def test_forward_in_time_fits_on_the_first_designs_and_judges_the_later_ones():
    from esper_runtime.karn.reward import forward_in_time

    samples = _samples(24, lambda bp: math.log1p(_params(bp)))
    result = forward_in_time(samples, "forest")
    assert (result["train"], result["test"]) == (16, 8) and result["kendall_tau"] > 0.3
    assert forward_in_time(samples[:4], "forest")["kendall_tau"] is None  # too few left to judge

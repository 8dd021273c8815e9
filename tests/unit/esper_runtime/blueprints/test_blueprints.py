import copy
import json

import pytest
import torch

from esper_runtime.blueprints import (
    STARTER_LIBRARY,
    Blueprint,
    BlueprintInvalid,
    ConcreteIR,
    build_module,
    param_count,
    starter_blueprints,
    validate,
)

WIDTHS = (8, 16, 32)


def test_the_starter_library_has_at_least_twelve_distinct_designs():
    bps = starter_blueprints()
    assert len(bps) >= 12
    assert len({bp.blueprint_id for bp in bps}) == len(bps)
    assert len({bp.name for bp in bps}) == len(bps)


@pytest.mark.parametrize("bp", starter_blueprints(), ids=lambda bp: bp.name)
def test_every_starter_blueprint_really_runs_at_every_chunk_width(bp):
    validate(bp)
    for width in WIDTHS:
        ir = bp.instantiate(width, 2 * width + 1 if bp.reads_input else None)  # u: the layer's input, if read
        module = build_module(ir, seed=0)
        x = torch.randn(7, width, requires_grad=True)
        y = module(x) if not bp.reads_input else module(x, torch.randn(7, 2 * width + 1))
        assert y.shape == (7, width) and torch.isfinite(y).all()
        assert sum(p.numel() for p in module.parameters()) == param_count(ir)
        if bp.trainable:
            torch.testing.assert_close(y, x)  # zero-initialized last layer: starts as the identity
            y.sum().backward()
            assert any(p.grad is not None for p in module.parameters())
        else:
            assert param_count(ir) == 0


def test_ids_are_content_hashes_of_the_canonical_form():
    doc = copy.deepcopy(STARTER_LIBRARY[0])
    a = Blueprint.parse(doc)
    b = Blueprint.parse(json.dumps(doc, indent=4))  # formatting does not matter
    assert a.blueprint_id == b.blueprint_id
    doc["nodes"][0]["attrs"]["out"] = {"F": 3}
    assert Blueprint.parse(doc).blueprint_id != a.blueprint_id
    assert a.instantiate(8).ir_hash != a.instantiate(16).ir_hash
    assert ConcreteIR.from_json(a.instantiate(8).canonical).ir_hash == a.instantiate(8).ir_hash


def _bp(**overrides):
    doc = copy.deepcopy(STARTER_LIBRARY[0])
    doc.update(overrides)
    return doc


@pytest.mark.parametrize("doc, stage, words", [
    ("{not json", "parse", "not JSON"),
    ("[1, 2]", "parse", "JSON object"),
    (_bp(evil="__import__('os')"), "parse", "unknown top-level keys"),
    (_bp(nodes=[{"id": "y", "op": "exec", "inputs": ["x"]}], output="y"), "ops", "unknown op 'exec'"),
    (_bp(nodes=[{"id": "y", "op": "relu", "inputs": ["x", "x"]}], output="y"), "ops", "takes 1 input"),
    (_bp(nodes=[{"id": "a", "op": "relu", "inputs": ["b"]}, {"id": "b", "op": "relu", "inputs": ["a"]}],
         output="b"), "cycle", "depends on itself"),
    (_bp(nodes=[{"id": "a", "op": "relu", "inputs": ["ghost"]}], output="a"), "structure", "not defined"),
    (_bp(nodes=[{"id": "a", "op": "relu", "inputs": ["x"]}, {"id": "a", "op": "tanh", "inputs": ["x"]}],
         output="a"), "structure", "defined twice"),
    (_bp(output="nowhere"), "structure", "output must name a node"),
    (_bp(name="Robert'); DROP TABLE"), "structure", "name must match"),
    (_bp(nodes=[{"id": "h", "op": "linear", "inputs": ["x"], "attrs": {"out": 10**9}}], output="h"), "size",
     "outside"),
    (_bp(nodes=[{"id": "k", "op": "scale", "inputs": ["x"], "attrs": {"value": "1e309"}}], output="k"), "ops",
     "must be float"),
    (_bp(nodes=[{"id": f"n{i}", "op": "relu", "inputs": ["x"]} for i in range(100)], output="n0"), "size",
     "exceeds the limit"),
    (_bp(trainable="yes"), "structure", "trainable"),
])
def test_hostile_or_broken_blueprints_are_refused_with_a_stage(doc, stage, words):
    with pytest.raises(BlueprintInvalid) as info:
        validate(Blueprint.parse(doc))
    assert info.value.stage == stage and words in str(info.value)


@pytest.mark.parametrize("doc, width, stage, words", [
    (_bp(nodes=[{"id": "h", "op": "linear", "inputs": ["x"], "attrs": {"out": {"F": 2}}}], output="h"), 8, "shapes",
     "has width 16, the chunk has 8"),
    (_bp(nodes=[{"id": "h", "op": "linear", "inputs": ["x"], "attrs": {"out": 3}},
                {"id": "y", "op": "add", "inputs": ["x", "h"]}], output="y"), 8, "shapes", "widths 8 and 3"),
    (_bp(nodes=[{"id": "a", "op": "attention", "inputs": ["x"], "attrs": {"tokens": 3}}], output="a"), 8, "shapes",
     "not divisible"),
    (_bp(nodes=[{"id": "h", "op": "linear", "inputs": ["x"], "attrs": {"out": {"F": 30}}},
                {"id": "d", "op": "linear", "inputs": ["h"], "attrs": {"out": "F"}}], output="d"), 2048, "size",
     "parameters exceeds"),
    (_bp(trainable=False), 8, "structure", "trainable is False"),
    (_bp(), 0, "size", "chunk width"),
])
def test_shape_and_size_errors_are_found_per_chunk_width(doc, width, stage, words):
    bp = Blueprint.parse(doc)
    validate(bp)
    with pytest.raises(BlueprintInvalid) as info:
        bp.instantiate(width)
    assert info.value.stage == stage and words in str(info.value)


def test_an_oversized_document_is_refused_before_parsing():
    with pytest.raises(BlueprintInvalid, match="exceeds"):
        Blueprint.parse("[" * 100_000)

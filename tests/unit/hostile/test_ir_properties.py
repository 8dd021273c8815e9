"""Issue #13: the IR parser and validator on hostile documents (hypothesis). Starter designs with one or two values
replaced anywhere by anything JSON can hold, and arbitrary text, either parse, validate and build into a module whose
output has the chunk's width — or are refused with ``BlueprintInvalid``. No other exception, whatever the input."""

from __future__ import annotations

import json

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from esper_runtime.blueprints import Blueprint, BlueprintInvalid, ConcreteIR, build_module, starter_blueprints
from esper_runtime.blueprints.ops import INITS, OPS
from esper_runtime.blueprints.validate import param_count, validate

STARTERS = [b.doc for b in starter_blueprints()]
# values a careless or hostile author writes: wrong types, edge numbers, real op and node names in wrong places
leaves = (st.none() | st.booleans() | st.integers(-2, 70_000) | st.sampled_from([2**40, 2**70, -2**63])
          | st.floats() | st.text(max_size=8) | st.sampled_from(sorted(OPS) + sorted(INITS) + ["x", "u", "x0", "F",
                                                                                                 "2*F", "F/0"]))
json_values = st.recursive(leaves, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c,
                                                                                        max_size=3), max_leaves=12)


def _paths(doc, prefix=()):
    yield prefix
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        yield from _paths(value, prefix + (key,))


def _at(doc, path):
    for key in path:
        doc = doc[key]
    return doc


@st.composite
def mutated(draw):
    doc = json.loads(json.dumps(draw(st.sampled_from(STARTERS))))
    for _ in range(draw(st.integers(1, 2))):
        paths = [p for p in _paths(doc) if p]
        leaf = draw(st.integers(0, 9)) < 7  # mostly one value (a width, an init, an input), sometimes a subtree
        path = draw(st.sampled_from([p for p in paths if not isinstance(_at(doc, p), (dict, list))] if leaf
                                    else paths))
        parent = _at(doc, path[:-1])
        if leaf or draw(st.booleans()) or not isinstance(parent, dict):
            parent[path[-1]] = draw(leaves if leaf else json_values)
        else:
            del parent[path[-1]]
    return doc


def _try(doc, features: int, in_features: int | None) -> None:
    try:
        bp = Blueprint.parse(doc)
        validate(bp)
        ir = bp.instantiate(features, in_features)
    except BlueprintInvalid as exc:
        event(f"refused at {exc.stage}")
        return
    event("built")
    if param_count(ir) > 200_000:  # valid, but too big to build in a unit test
        return
    module = build_module(ir, seed=0)
    x = torch.randn(3, features)
    out = module(x) if ir.in_features is None else module(x, torch.randn(3, ir.in_features))
    assert out.shape == (3, features)
    assert ConcreteIR.from_json(ir.canonical).ir_hash == ir.ir_hash  # what a bundle's manifest round-trips


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=mutated(), features=st.sampled_from([1, 3, 8]), in_features=st.sampled_from([None, 2, 5]))
def test_a_mutated_design_is_built_correctly_or_refused_as_invalid(doc, features, in_features):
    _try(doc, features, in_features)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200) | json_values.map(json.dumps)
       | st.integers(0, 5000).map(lambda d: '{"nodes": ' + "[" * d + "]" * d + "}"))
def test_any_text_parses_or_is_refused_as_invalid(text):
    for parse in (Blueprint.parse, ConcreteIR.from_json):
        try:
            parse(text)
        except BlueprintInvalid:
            pass

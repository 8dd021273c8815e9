"""Designs that read the seed layer's whole input ``u`` (width D) beside its chunk ``x`` (width F)."""

from __future__ import annotations

import json

import pytest
import torch

from esper_runtime.blueprints import Blueprint, BlueprintInvalid, ConcreteIR, build_module, validate

BRANCH = {"name": "input_branch", "trainable": True, "tags": ["branch"],
          "nodes": [{"id": "h", "op": "linear", "inputs": ["u"], "attrs": {"out": {"D": 2}}},
                    {"id": "a", "op": "relu", "inputs": ["h"]},
                    {"id": "d", "op": "linear", "inputs": ["a"], "attrs": {"out": "F", "init": "zeros"}},
                    {"id": "y", "op": "add", "inputs": ["x", "d"]}], "output": "y"}


def test_a_design_reads_the_layer_input_and_writes_the_chunk():
    bp = Blueprint.parse(BRANCH)
    validate(bp)
    assert bp.reads_input
    ir = bp.instantiate(8, in_features=16)
    assert (ir.features, ir.in_features) == (8, 16)
    module = build_module(ir)
    assert module.nodes["h"].in_features == 16 and module.nodes["h"].out_features == 32
    x, u = torch.randn(5, 8), torch.randn(5, 16)
    assert torch.equal(module(x, u), x)  # the last layer starts at zero: the chunk passes through unchanged
    with pytest.raises(ValueError, match="reads the layer's input"):
        module(x)
    assert ConcreteIR.from_json(ir.canonical).ir_hash == ir.ir_hash
    assert bp.instantiate(8, in_features=12).ir_hash != ir.ir_hash


def test_the_input_width_is_required_exactly_when_u_is_read():
    bp = Blueprint.parse(BRANCH)
    with pytest.raises(BlueprintInvalid, match="give its width D"):
        bp.instantiate(8)
    chunk_only = {**BRANCH, "name": "uses_d", "nodes": [
        {"id": "h", "op": "linear", "inputs": ["x"], "attrs": {"out": {"D": 1}}},
        {"id": "d", "op": "linear", "inputs": ["h"], "attrs": {"out": "F"}}], "output": "d"}
    with pytest.raises(BlueprintInvalid, match="needs a design that reads 'u'"):
        validate(Blueprint.parse(chunk_only))
    forged = dict(bp.instantiate(8, in_features=16).doc)
    forged.pop("in_features")
    with pytest.raises(BlueprintInvalid):
        ConcreteIR.from_json(json.dumps(forged))
    with pytest.raises(BlueprintInvalid, match="'x', 'u' or 'x0'"):
        validate(Blueprint.parse({**BRANCH, "nodes": [{"id": "u", "op": "relu", "inputs": ["x"]}], "output": "u"}))

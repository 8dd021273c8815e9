"""Children that read the layer's whole input: isolated while they learn a step down the loss gradient, then
grafted, and loadable only where the layer's input has their width."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from esper_runtime.kasmina import Code
from esper_runtime.kasmina.state import HEALTH

from .conftest import Trainer, mlp, store_ir

BRANCH = {"name": "branch", "trainable": True, "tags": ["branch"],
          "nodes": [{"id": "h", "op": "linear", "inputs": ["u"], "attrs": {"out": 16}},
                    {"id": "a", "op": "relu", "inputs": ["h"]},
                    {"id": "d", "op": "linear", "inputs": ["a"], "attrs": {"out": "F", "init": "zeros"}},
                    {"id": "y", "op": "add", "inputs": ["x", "d"]}], "output": "y"}


@pytest.fixture
def branch(store):
    def make(in_features, width=8):
        return store_ir(store, BRANCH, f"branch-{in_features}", width, in_features)
    return make


@pytest.mark.parametrize("seed", range(4))
def test_a_learning_branch_leaves_the_host_alone_and_learns_to_point_downhill(make_model, branch, seed):
    torch.manual_seed(seed)
    reference = mlp()
    model = make_model(host=copy.deepcopy(reference))
    trainer = Trainer(model)
    for cmd in ("request_germination", "promote"):
        trainer.do(1, 2, cmd, branch(32), train=0)
    assert model.kasmina.state(1, 2) == Code.TRAINING
    layer = model.seed_layers()[1]
    child = layer.seeds["2"]
    x, target = torch.randn(32, 6), torch.randn(32, 3)
    before = [p.detach().clone() for p in child.parameters()]
    for m in (model, reference):
        m.train()
        m.zero_grad()
        nn.functional.mse_loss(m(x), target).backward()
    assert torch.equal(model(x), reference(x))
    grads = {n.replace(".base_layer", ""): p.grad for n, p in model.host.named_parameters() if "seeds" not in n}
    for name, p in reference.named_parameters():
        assert torch.equal(grads[name], p.grad), name  # bitwise: the seed's hook reads, never writes
    assert any(not torch.equal(a, b) for a, b in zip(before, child.parameters()))

    trainer.steps(60)
    assert layer.ready[2] and float(layer.health_accumulator[2, HEALTH["recon_error"]]) < 1.0  # cos > 0
    # the step it learned lowers the loss when added to the chunk, on the data it learned from (random targets:
    # there is nothing to generalize to, so fresh data would test luck, not the branch)
    s, e = layer.bounds[2]
    xs, ys = trainer.x, trainer.y
    base = nn.Sequential(*list(model.host.children())[:2])
    with torch.no_grad():
        u = base(xs)
        z = layer.base_layer(u)
        delta = child(z[:, s:e], u) - z[:, s:e]
        rest = nn.Sequential(*list(model.host.children())[3:])
        nudged = z.clone()
        nudged[:, s:e] += delta
        assert nn.functional.mse_loss(rest(torch.relu(nudged)), ys) < nn.functional.mse_loss(rest(torch.relu(z)), ys)


def test_a_branch_built_for_another_input_width_is_culled_on_load(make_model, branch):
    model = make_model()
    trainer = Trainer(model)
    trainer.do(1, 2, "request_germination", branch(7))
    trainer.do(1, 2, "promote", branch(7))
    assert model.kasmina.state(1, 2) == Code.CULLED


def test_a_grafted_branch_is_saved_and_comes_back(make_model, branch, tmp_path):
    from esper_runtime.sdk import load_model, save_model

    model = make_model()
    trainer = Trainer(model)
    for cmd in ("request_germination", "promote"):
        trainer.do(1, 2, cmd, branch(32))
    for _ in range(20):
        if model.kasmina.state(1, 2) == Code.GRAFTING:
            break
        if model.kasmina.is_ready(1, 2):
            trainer.do(1, 2, "advance", branch(32))
        else:
            trainer.steps(6)
    assert model.kasmina.state(1, 2) == Code.GRAFTING
    trainer.steps(10)
    save_model(model, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "grown.json").read_text())["layers"][1]["children"]["2"]["recipe"]["ir"]
    grown = load_model(tmp_path / "m", host=mlp())
    x = torch.randn(16, 6)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(grown(x), model(x), atol=1e-6)

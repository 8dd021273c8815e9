"""Children that read the model's input (``x0``): a skip from the input past every narrow layer, loadable only in a
model whose input has their width, saved and loaded like any child; and the growth signal that says where such
units would lower the loss fastest."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esper_runtime.blueprints import Blueprint, BlueprintInvalid, validate
from esper_runtime.kasmina import Code

from .conftest import Trainer, mlp, store_ir

SKIP = {"name": "skip", "trainable": True, "tags": ["branch"],
        "nodes": [{"id": "h", "op": "linear", "inputs": ["x0"], "attrs": {"out": 16}},
                  {"id": "a", "op": "relu", "inputs": ["h"]},
                  {"id": "d", "op": "linear", "inputs": ["a"], "attrs": {"out": "F", "init": "zeros"}},
                  {"id": "y", "op": "add", "inputs": ["x", "d"]}], "output": "y"}


@pytest.fixture
def skip(store):
    def make(in_features, width=8):
        return store_ir(store, SKIP, f"skip-{in_features}-{width}", width, in_features)
    return make


def test_a_design_reads_the_layer_input_or_the_model_input_never_both():
    bp = Blueprint.parse(SKIP)
    validate(bp)
    assert bp.input_source == "model" and bp.instantiate(8, 6).input_source == "model"
    both = {**SKIP, "nodes": SKIP["nodes"] + [{"id": "v", "op": "linear", "inputs": ["u"], "attrs": {"out": "F"}},
                                              {"id": "w", "op": "add", "inputs": ["y", "v"]}], "output": "w"}
    with pytest.raises(BlueprintInvalid, match="not both"):
        validate(Blueprint.parse(both))
    named = {**SKIP, "nodes": [{**SKIP["nodes"][0], "id": "x0"}, *SKIP["nodes"][1:]]}
    with pytest.raises(BlueprintInvalid, match="'x0'"):
        validate(Blueprint.parse(named))


def _to_grafting(model, trainer, layer, seed, aid):
    for cmd in ("request_germination", "promote"):
        trainer.do(layer, seed, cmd, aid)
    for _ in range(20):
        if model.kasmina.state(layer, seed) == Code.GRAFTING:
            return
        if model.kasmina.is_ready(layer, seed):
            trainer.do(layer, seed, "advance", aid)
        else:
            trainer.steps(6)
    raise AssertionError(f"seed {layer}/{seed} never reached GRAFTING: {model.kasmina.state(layer, seed)}")


def test_a_skip_child_on_the_output_layer_reads_the_model_input(make_model, skip):
    model = make_model(chunk_size=3)
    trainer = Trainer(model)
    trainer.steps(1)  # the model has seen its input: 6 features
    assert model.kasmina.model_input.features == 6
    assert (3, 6) in model.kasmina.seed_shapes()  # the output layer's 3-wide chunk, built for the model's input
    _to_grafting(model, trainer, 2, 0, skip(6, width=3))
    trainer.steps(10)
    layer = model.seed_layers()[2]
    child = layer.seeds["0"]
    x = torch.randn(16, 6)
    model.eval()
    with torch.no_grad():
        out = model(x)
        h = model.host[3](model.host[2](model.host[1](model.host[0](x))))
        y = layer.base_layer(h)
        alpha = float(layer.alpha_blend[0])
        expected = y + alpha * (child(y, x) - y)  # the child got x itself, not the 32-wide hidden layer
    assert torch.allclose(out, expected, atol=1e-6)


def test_a_skip_child_built_for_another_model_input_width_is_culled_on_load(make_model, skip):
    model = make_model(chunk_size=3)
    trainer = Trainer(model)
    trainer.steps(1)
    trainer.do(2, 0, "request_germination", skip(32, width=3))  # 32: the layer's input width, not the model's
    trainer.do(2, 0, "promote", skip(32, width=3))
    assert model.kasmina.state(2, 0) == Code.CULLED


def test_a_grafted_skip_child_is_saved_and_comes_back(make_model, skip, tmp_path):
    from esper_runtime.sdk import load_model, save_model

    model = make_model(chunk_size=3)
    trainer = Trainer(model)
    trainer.steps(1)
    _to_grafting(model, trainer, 2, 0, skip(6, width=3))
    trainer.steps(10)
    save_model(model, tmp_path / "m")
    grown = load_model(tmp_path / "m", host=mlp())
    x = torch.randn(16, 6)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(grown(x), model(x), atol=1e-6)


def test_the_growth_signal_finds_the_output_behind_a_narrow_layer_and_changes_nothing(make_model):
    """A host whose 2-wide layer drops what the target needs: units reading the model's input and writing the
    outputs are where the loss would fall fastest; measuring reads gradients, never writes them, and never moves
    torch's global RNG."""
    def host():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 2), nn.ReLU(), nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))

    model, reference = make_model(host=host(), chunk_size=3), host()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(256, 6, generator=gen)
    y = x[:, :3] * 2 + torch.sin(3 * x[:, 3:6])
    model.train()
    for m in (model, reference):
        m.zero_grad()
    rng = torch.get_rng_state()
    nn.functional.mse_loss(model(x), y).backward()
    assert torch.equal(torch.get_rng_state(), rng)
    nn.functional.mse_loss(reference(x), y).backward()
    grads = {n.replace(".base_layer", ""): p.grad for n, p in model.host.named_parameters()}
    for name, p in reference.named_parameters():
        assert torch.equal(grads[name], p.grad), name
    health = {layer.layer_id: layer.health() for layer in model.seed_layers()}
    out = health[2][0]
    assert out["growth_model"] > 0 and out["growth_layer"] > 0
    assert out["growth_model"] > out["growth_layer"]  # the outputs need what the 2-wide layer dropped
    assert health[0][0]["growth_model"] == 0.0  # the first layer reads the model's input itself: one signal


def test_a_layer_narrower_than_the_model_input_measures_only_the_model_probe(make_model, monkeypatch):
    """Where new units would read the model's input (it is wider than the layer's), the layer's own input is not
    measured: its ``growth_layer`` stays 0 and the growth signal is what measuring both gives, bit for bit."""
    def host():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 2), nn.ReLU(), nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(256, 6, generator=gen)
    y = x[:, :3] * 2 + torch.sin(3 * x[:, 3:6])

    def health(measure_both: bool):
        model = make_model(host=host(), chunk_size=3)
        if measure_both:
            from esper_runtime.kasmina.layer import KasminaLayer
            monkeypatch.setattr(KasminaLayer, "_model_decides", lambda self: False)
        model.train()
        nn.functional.mse_loss(model(x), y).backward()
        monkeypatch.undo()
        return {layer.layer_id: layer.health() for layer in model.seed_layers()}

    skipped, both = health(False), health(True)
    narrow = skipped[1]  # Linear(2, 8): its 2-wide input is narrower than the model's 6
    assert all(s["growth_layer"] == 0.0 and s["growth_model"] > 0 and s["growth_source"] == "model" for s in narrow)
    assert all(s["growth_layer"] > 0 for s in both[1])
    for layer_id in skipped:
        for s, b in zip(skipped[layer_id], both[layer_id]):
            assert s["growth_model"] == b["growth_model"], layer_id
    # the signal Tamiyo ranks by: the chunk's spread times the model probe's, as measuring both would give it
    assert [s["growth_signal"] for s in narrow] == pytest.approx(
        [b["chunk_variance"] ** 0.5 * b["growth_model"] for b in both[1]], rel=1e-6)
    assert skipped[2] == both[2] and skipped[0] == both[0]  # the 8-wide layer measures both; the first one probe

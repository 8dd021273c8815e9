"""What seeds do to the host: isolation while TRAINING, the graft ramp, the identity fallback, load failures,
the checksum, events and the kernel cache."""

import copy

import pytest
import torch
from torch import nn

from esper_runtime.kasmina import Code, KasminaConfig, StateChecksumError, register_kernel_kind, wrap
from esper_runtime.kasmina.kernels import REFERENCE_KIND, KernelCache, LoadedKernel, reference_artifact
from esper_runtime.kasmina.exceptions import KernelLoadError
from streams.replay import MemorySource, ReplayReader

from .conftest import Trainer, mlp

L, S = 1, 2


def _to_training(trainer, kernel):
    for cmd in ("request_germination", "promote"):
        trainer.do(L, S, cmd, kernel, train=0)
    assert trainer.model.kasmina.state(L, S) == Code.TRAINING


def test_a_training_seed_has_zero_effect_on_host_output_and_gradients(make_model, kernels):
    reference = mlp()
    model = make_model(host=copy.deepcopy(reference))
    _to_training(Trainer(model), kernels["residual_mlp"])
    child = model.seed_layers()[L].seeds[str(S)]
    before = [p.detach().clone() for p in child.parameters()]
    x = torch.randn(32, 6)
    target = torch.randn(32, 3)
    for m in (model, reference):
        m.train()
        m.zero_grad()
        nn.functional.mse_loss(m(x), target).backward()
    assert torch.equal(model(x), reference(x))
    host_grads = {n.replace(".base_layer", ""): p.grad for n, p in model.host.named_parameters() if "seeds" not in n}
    for name, p in reference.named_parameters():
        assert torch.equal(host_grads[name], p.grad), name  # bitwise: the seed leaks nothing into the host
    # ...while the seed itself did learn (its own optimizer, its own detached objective)
    assert any(not torch.equal(a, b) for a, b in zip(before, child.parameters()))


def test_the_graft_ramps_alpha_smoothly_from_zero_to_one(make_model, kernels):
    model = make_model(graft_steps=20, graft_ramp="cosine")
    t = Trainer(model)
    _to_training(t, kernels["residual_mlp"])
    t.steps(6)
    t.do(L, S, "advance", train=0)
    layer = model.seed_layers()[L]
    alphas = []
    for _ in range(22):
        t.steps(1)
        alphas.append(float(layer.alpha_blend[S]))
    assert alphas[0] > 0 and alphas[-1] == 1.0
    assert all(b >= a for a, b in zip(alphas, alphas[1:]))
    assert max(b - a for a, b in zip(alphas, alphas[1:])) < 0.1  # no jump: 20 steps of a cosine ramp
    assert model.kasmina.is_ready(L, S)


def test_grafted_output_is_the_blend_of_host_and_child(make_model, kernels):
    model = make_model(graft_steps=10)
    t = Trainer(model)
    _to_training(t, kernels["residual_mlp"])
    t.steps(6)
    t.do(L, S, "advance", train=5)
    layer = model.seed_layers()[L]
    x = torch.randn(4, 32)
    model.eval()
    with torch.no_grad():
        base = layer.base_layer(x)
        out = layer(x)
        alpha = float(layer.alpha_blend[S])
        s, e = layer.bounds[S]
        expected = base[:, s:e] + alpha * (layer.seeds[str(S)](base[:, s:e]) - base[:, s:e])
    assert 0 < alpha < 1
    torch.testing.assert_close(out[:, s:e], expected)
    torch.testing.assert_close(out[:, :s], base[:, :s])  # other chunks untouched


class Exploding(nn.Module):
    def forward(self, y):
        raise RuntimeError("illegal memory access (simulated)")


def _exploding_kind(artifact):
    return LoadedKernel(artifact.artifact_id, artifact.kind, 8, False, Exploding())


def test_a_kernel_that_raises_falls_back_to_identity_and_the_step_completes(make_model, store, publisher):
    register_kernel_kind("test.exploding", _exploding_kind)
    store.put("boom-kernel", "test.exploding", b"anything")
    model = make_model()
    t = Trainer(model)
    t.do(L, S, "request_germination", "boom-kernel", train=0)
    t.do(L, S, "promote", "", train=0)  # fixed-function: LOADING -> GRAFTING; raises on first use
    loss = t.steps(3)  # the training steps complete
    assert loss == loss  # not NaN
    assert model.kasmina.state(L, S) == Code.ERROR_RECOVERY
    assert "boom-kernel" not in model.kasmina.cache  # evicted
    layer = model.seed_layers()[L]
    assert str(S) not in layer.seeds  # identity path: nothing on the seed's chunk any more
    x = torch.randn(8, 32)
    assert torch.equal(layer(x), layer.base_layer(x))
    events = [ev.decoded.typed() for ev in ReplayReader(MemorySource(publisher.log), publisher.serde)
              .events(["kasmina.lifecycle.transitions"])]
    err = [e for e in events if e.to_state.value == "ERROR_RECOVERY"]
    assert len(err) == 1 and "illegal memory access" in err[0].reason
    # and Tamiyo can cull it at the next boundary
    t.do(L, S, "cull", train=0)
    assert model.kasmina.state(L, S) == Code.CULLED


def test_load_failures_cull_the_seed_with_the_reason(make_model, store, kernels):
    aid16, data16 = reference_artifact("residual_mlp", 16)
    store.put(aid16, REFERENCE_KIND, data16)  # built for 16 features; the seeds have 8
    aid, data = reference_artifact("low_rank", 8, rank=2)
    store.put(aid, REFERENCE_KIND, data)
    store.blob_path(aid).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # corrupted on disk
    cases = {"no-such-kernel": "not available", aid16: "built for 16 features", aid: "hash mismatch"}
    for kernel, reason in cases.items():
        model = make_model()
        t = Trainer(model)
        t.do(L, S, "request_germination", kernel, train=0)
        report = t.do(L, S, "promote", train=0)
        assert [tr.to_state.value for tr in report.transitions] == ["LOADING", "CULLED"]
        assert reason in report.transitions[-1].reason
        assert str(S) not in model.seed_layers()[L].seeds


def test_a_tampered_state_tensor_fails_the_checksum_at_the_boundary(make_model):
    model = make_model()
    t = Trainer(model)
    t.boundary()
    model.seed_layers()[0].lifecycle_state[1] = int(Code.FOSSILIZED)  # changed outside any transition
    with pytest.raises(StateChecksumError, match="layer 0"):
        t.boundary()


def test_non_finite_parameters_are_never_fossilized(make_model, kernels):
    model = make_model()
    t = Trainer(model)
    for cmd in ["request_germination", "promote", "advance", "advance", "advance", "advance"]:
        t.do(L, S, cmd, kernels["residual_mlp"])
    with torch.no_grad():
        next(model.seed_layers()[L].seeds[str(S)].parameters()).fill_(float("nan"))
    model.kasmina.command(L, S, "fossilize")
    report = t.boundary()
    assert report.transitions[-1].to_state.value == "CULLED" and "non-finite" in report.transitions[-1].reason


def test_transitions_and_telemetry_are_events_once_per_epoch(make_model, kernels, publisher):
    model = make_model()
    t = Trainer(model)
    for cmd in ["request_germination", "promote", "advance"]:
        t.do(L, S, cmd, kernels["residual_mlp"], train=10)
    reader = ReplayReader(MemorySource(publisher.log), publisher.serde)
    transitions = [e.decoded.typed() for e in reader.events(["kasmina.lifecycle.transitions"])]
    assert [tr.to_state.value for tr in transitions] == ["GERMINATED", "LOADING", "TRAINING", "GRAFTING"]
    assert [tr.envelope.originator_version for tr in transitions] == [1, 2, 3, 4]
    assert {tr.envelope.originator_id for tr in transitions} == {f"seed/{L}/{S}"}
    commands = [e.decoded.typed() for e in reader.events(["control.kasmina.commands"])]
    assert [c.command for c in commands] == ["request_germination", "promote", "advance"]
    assert [c.envelope.originator_version for c in commands] == [1, 2, 3]
    assert [tr.command_id for tr in transitions] == [commands[0].command_id, commands[1].command_id,
                                                     commands[1].command_id, commands[2].command_id]
    telemetry = [e.decoded.typed() for e in reader.events(["kasmina.telemetry.seeds"])]
    assert len(telemetry) == 3 * len(model.seed_layers())  # one batch per layer per epoch, not per step
    last = [b for b in telemetry if b.layer_id == L][-1]
    assert [h.state.value for h in last.seeds][S] == "TRAINING"
    assert all(h.chunk_variance > 0 for h in last.seeds)
    t.boundary()  # the epoch in which the child was grafted ends: its latency lands in the state tensor
    assert int(model.seed_layers()[L].exec_latency_us[S]) > 0


def test_latency_off_keeps_the_wall_clock_out_of_health(make_model, kernels):
    model = make_model(measure_latency=False)
    t = Trainer(model)
    for cmd in ["request_germination", "promote", "advance"]:
        t.do(L, S, cmd, kernels["residual_mlp"], train=10)
    t.boundary()
    assert model.seed_layers()[L]._codes[S] == Code.GRAFTING
    assert int(model.seed_layers()[L].exec_latency_us[S]) == 0  # grafted and running, never timed


def test_health_statistics_see_dead_units(store, publisher):
    host = nn.Sequential(nn.Linear(4, 8))
    with torch.no_grad():
        host[0].weight.zero_()
        host[0].bias.copy_(torch.tensor([-1.0] * 4 + [1.0] * 4))  # first chunk never fires
    model = wrap(host, KasminaConfig(seeds_per_layer=2, stats_every=1), artifacts=store, publisher=publisher)
    model.train()
    for _ in range(3):
        model(torch.randn(16, 4))
    health = model.seed_layers()[0].health()
    assert health[0]["dead_node_ratio"] == 1.0 and health[1]["dead_node_ratio"] == 0.0


def test_kernel_cache_is_a_bounded_lru(store):
    ids = []
    for op in ("residual_mlp", "low_rank", "fixed_swish"):
        aid, data = reference_artifact(op, 8)
        store.put(aid, REFERENCE_KIND, data)
        ids.append(aid)
    cache = KernelCache(store, capacity=2)
    cache.get(ids[0])
    cache.get(ids[1])
    cache.get(ids[0])  # ids[0] is now the most recent
    cache.get(ids[2])  # evicts ids[1]
    assert ids[0] in cache and ids[2] in cache and ids[1] not in cache
    assert (cache.hits, cache.misses) == (1, 3)
    with pytest.raises(KernelLoadError, match="not available"):
        cache.get("missing")


def test_trainable_kernels_give_each_seed_its_own_weights(make_model, kernels):
    model = make_model()
    t = Trainer(model)
    for seed in (0, 1):
        model.kasmina.command(L, seed, "request_germination", kernels["residual_mlp"])
    t.boundary()
    for seed in (0, 1):
        model.kasmina.command(L, seed, "promote")
    t.boundary()
    layer = model.seed_layers()[L]
    assert layer.seeds["0"] is not layer.seeds["1"]
    assert layer.seeds["0"].up.weight.data_ptr() != layer.seeds["1"].up.weight.data_ptr()


def test_seeds_on_a_conv_layer_walk_the_lifecycle(store, publisher, kernels):
    torch.manual_seed(0)
    host = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 3))
    from .conftest import FAST

    model = wrap(host, KasminaConfig(**FAST), artifacts=store, publisher=publisher)
    t = Trainer(model)
    t.x = torch.randn(256, 3, 8, 8)
    seen = []
    for cmd in ["request_germination", "promote", "advance", "advance", "advance", "advance", "fossilize"]:
        seen += [tr.to_state.value for tr in t.do(L, S, cmd, kernels["residual_mlp"]).transitions]
    assert seen[-1] == "FOSSILIZED"
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 3)


def _sampled_steps(model, steps: int) -> list[int]:
    """Which of ``steps`` training steps sampled the first layer's statistics."""
    layer, out = model.seed_layers()[0], []
    for step in range(1, steps + 1):
        before = layer._samples
        model(torch.randn(16, 4))
        if layer._samples > before:
            out.append(step)
    return out


def test_samples_per_epoch_stretches_the_sampling_interval_over_a_long_epoch():
    torch.manual_seed(0)
    model = wrap(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
                 KasminaConfig(seeds_per_layer=2, stats_every=2, samples_per_epoch=4))
    model.train()
    model.kasmina.expect_epoch_steps(40)  # what the trainer says: 40 steps an epoch, so every 10th is sampled
    assert _sampled_steps(model, 40) == [1, 10, 20, 30, 40]
    model.kasmina.expect_epoch_steps(6)  # a short epoch: never more often than stats_every
    assert model.seed_layers()[0].sample_every == 2


def test_without_the_trainer_the_interval_follows_the_last_epoch_and_unset_keeps_stats_every():
    torch.manual_seed(0)
    stretched = wrap(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
                     KasminaConfig(seeds_per_layer=2, stats_every=2, samples_per_epoch=4))
    fixed = wrap(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
                 KasminaConfig(seeds_per_layer=2, stats_every=2))
    for model in (stretched, fixed):
        model.train()
        assert len(_sampled_steps(model, 40)) == 21  # the first epoch: step 1, then every stats_every steps
        model.kasmina.end_epoch(0)
    assert _sampled_steps(stretched, 40) == [1, 10, 20, 30, 40]  # _step continues: 50, 60, 70, 80 are multiples
    assert len(_sampled_steps(fixed, 40)) == 21

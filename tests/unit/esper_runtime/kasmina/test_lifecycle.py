"""Every legal path of appendix B on a real model while it trains, and every illegal command refused."""

import itertools

import pytest

from esper_runtime.kasmina import Code, Command
from esper_runtime.kasmina.lifecycle import next_state

from .conftest import Trainer

L, S = 1, 2  # the seed under test: layer 1 (32 features, 4 seeds of 8), seed 2


def _states(report):
    return [t.to_state.value for t in report.transitions]


def _walk(trainer, commands, kernel):
    """Apply commands one epoch at a time, training between them; return every state passed through."""
    seen = []
    for cmd in commands:
        report = trainer.do(L, S, cmd, kernel if cmd == Command.REQUEST_GERMINATION else "")
        assert not report.refused, report.refused
        seen += _states(report)
    return seen


def test_trainable_kernel_walks_to_fossilized(make_model, kernels, publisher):
    model = make_model()
    t = Trainer(model)
    t.steps()
    seen = _walk(t, ["request_germination", "promote", "advance", "advance", "advance", "advance", "fossilize"],
                 kernels["residual_mlp"])
    assert seen == ["GERMINATED", "LOADING", "TRAINING", "GRAFTING", "STABILIZATION", "EVALUATING", "FINE_TUNING",
                    "FOSSILIZED"]
    layer = model.seed_layers()[L]
    assert layer._codes[S] == Code.FOSSILIZED
    assert str(S) in layer.seeds and not any(p.requires_grad for p in layer.seeds[str(S)].parameters())
    assert float(layer.alpha_blend[S]) == 1.0


def test_fixed_function_kernel_skips_training_and_fine_tuning(make_model, kernels):
    t = Trainer(make_model())
    seen = _walk(t, ["request_germination", "promote", "advance", "advance", "advance"], kernels["fixed_swish"])
    assert seen == ["GERMINATED", "LOADING", "GRAFTING", "STABILIZATION", "EVALUATING", "FOSSILIZED"]


@pytest.mark.parametrize("path, expected", [
    (["request_germination", "cancel_germination", "reset"], ["GERMINATED", "CANCELLED", "DORMANT"]),
    (["request_germination", "promote", "cancel_germination", "reset"],
     ["GERMINATED", "LOADING", "TRAINING", "CANCELLED", "DORMANT"]),
    (["request_germination", "promote", "cull"], ["GERMINATED", "LOADING", "TRAINING", "CULLED"]),
    (["request_germination", "promote", "advance", "advance", "advance", "cull"],
     ["GERMINATED", "LOADING", "TRAINING", "GRAFTING", "STABILIZATION", "EVALUATING", "CULLED"]),
    (["request_germination", "promote", "advance", "advance", "advance", "advance", "cull"],
     ["GERMINATED", "LOADING", "TRAINING", "GRAFTING", "STABILIZATION", "EVALUATING", "FINE_TUNING", "CULLED"]),
    (["request_germination", "promote", "advance", "rollback"],
     ["GERMINATED", "LOADING", "TRAINING", "GRAFTING", "ROLLED_BACK"]),
])
def test_side_paths(make_model, kernels, path, expected):
    model = make_model()
    t = Trainer(model)
    assert _walk(t, path, kernels["residual_mlp"]) == expected
    layer = model.seed_layers()[L]
    if expected[-1] in ("CULLED", "CANCELLED", "DORMANT", "ROLLED_BACK"):
        assert str(S) not in layer.seeds  # the child is discarded
        assert int(layer.active_kernel_id[S]) == 0


def test_a_culled_slot_is_embargoed_then_reusable(make_model, kernels):
    t = Trainer(make_model(embargo_epochs=3))
    _walk(t, ["request_germination", "promote", "cull", "reset"], kernels["residual_mlp"])
    report = t.do(L, S, "request_germination", kernels["residual_mlp"])
    assert report.refused and "embargo" in str(report.refused[0])
    t.boundary()
    report = t.do(L, S, "request_germination", kernels["residual_mlp"])
    assert _states(report) == ["GERMINATED"] and not report.refused


def test_rolled_back_is_a_hard_lock(make_model, kernels):
    model = make_model()
    t = Trainer(model)
    _walk(t, ["rollback"], kernels["residual_mlp"])
    for cmd in sorted(Command.__dict__[k] for k in vars(Command) if k.isupper()):
        report = t.do(L, S, cmd, kernels["residual_mlp"])
        assert report.refused, cmd
    assert model.kasmina.state(L, S) == Code.ROLLED_BACK


def test_advance_waits_for_the_seed_to_be_ready(make_model, kernels):
    t = Trainer(make_model(reconstruction_steps=1000))
    _walk(t, ["request_germination", "promote"], kernels["residual_mlp"])
    report = t.do(L, S, "advance")
    assert report.refused and "is_ready_for_transition" in str(report.refused[0])
    assert t.model.kasmina.state(L, S) == Code.TRAINING


def test_commands_take_effect_only_at_the_epoch_boundary(make_model, kernels):
    model = make_model()
    t = Trainer(model)
    model.kasmina.command(L, S, "request_germination", kernels["residual_mlp"])
    t.steps()
    assert model.kasmina.state(L, S) == Code.DORMANT
    t.boundary()
    assert model.kasmina.state(L, S) == Code.GERMINATED


# ---------------------------------------------------------------- every illegal command, from every state
_REACH = {
    Code.DORMANT: [],
    Code.GERMINATED: ["request_germination"],
    Code.TRAINING: ["request_germination", "promote"],
    Code.GRAFTING: ["request_germination", "promote", "advance"],
    Code.STABILIZATION: ["request_germination", "promote", "advance", "advance"],
    Code.EVALUATING: ["request_germination", "promote", "advance", "advance", "advance"],
    Code.FINE_TUNING: ["request_germination", "promote", "advance", "advance", "advance", "advance"],
    Code.FOSSILIZED: ["request_germination", "promote", "advance", "advance", "advance", "advance", "fossilize"],
    Code.CULLED: ["request_germination", "promote", "cull"],
    Code.CANCELLED: ["request_germination", "cancel_germination"],
    Code.ROLLED_BACK: ["rollback"],
}
ALL_COMMANDS = sorted(v for k, v in vars(Command).items() if k.isupper())


@pytest.mark.parametrize("state, command", [
    (s, c) for s, c in itertools.product(_REACH, ALL_COMMANDS) if next_state(s, c, trainable=True) is None
])
def test_illegal_commands_are_refused_naming_seed_state_and_command(make_model, kernels, state, command):
    model = make_model()
    t = Trainer(model)
    _walk(t, _REACH[state], kernels["residual_mlp"])
    assert model.kasmina.state(L, S) == state
    report = t.do(L, S, command, kernels["residual_mlp"])
    assert len(report.refused) == 1
    message = str(report.refused[0])
    assert f"seed/{L}/{S}" in message and state.name in message and repr(command) in message
    assert model.kasmina.state(L, S) == state and report.transitions == []


def test_an_unknown_seed_is_refused(make_model):
    t = Trainer(make_model())
    report = t.do(L, 99, "request_germination", "k")
    assert report.refused and "seed/1/99" in str(report.refused[0])


def test_the_state_codes_are_appendix_b_plus_error_recovery():
    assert [c.name for c in Code] == ["DORMANT", "GERMINATED", "LOADING", "TRAINING", "GRAFTING", "STABILIZATION",
                                      "EVALUATING", "FINE_TUNING", "FOSSILIZED", "CULLED", "CANCELLED", "ROLLED_BACK",
                                      "ERROR_RECOVERY"]

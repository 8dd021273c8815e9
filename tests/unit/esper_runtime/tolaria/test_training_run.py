"""Tolaria and Tamiyo together on a real (small) task: plateau -> germination -> lifecycle -> field report,
the optimizer rebuilt with the new parameters, rollback in lockstep, and every decision an event."""

import math

import pytest
import torch

from esper_runtime.config import EsperConfig, load_config
from esper_runtime.kasmina import Code, wrap
from esper_runtime.tamiyo import TamiyoController, compute_reward
from esper_runtime.tolaria import TolariaTrainer
from streams import ConfigError
from streams.replay import MemorySource, ReplayReader

from ..helpers import host, spirals_small

CFG = {
    "kasmina": {"chunk_size": 8, "exclude": ["4"], "stats_every": 1, "reconstruction_steps": 5, "graft_steps": 10,
                "stabilize_steps": 5, "evaluate_steps": 5},
    "tamiyo": {"warmup_epochs": 2, "patience": 1, "min_delta": 0.5, "max_germinations": 2, "fine_tune_epochs": 1,
               "accept_tolerance": 1.0, "min_improvement": -1.0},
    "tolaria": {"epochs": 14, "lr": 3e-3, "batch_size": 64},
}


def _run(library, publisher, cfg=CFG, epochs=None):
    store, view = library
    config = EsperConfig.model_validate(cfg)
    if epochs:
        config.tolaria.epochs = epochs
    model = wrap(host(), config.kasmina, artifacts=store, publisher=publisher, run_id="run-t")
    tamiyo = TamiyoController(model, config.tamiyo, view, publisher)
    trainer = TolariaTrainer(model, tamiyo, config.tolaria, *spirals_small(), publisher=publisher)
    return model, tamiyo, trainer


def _events(publisher, topic):
    return [e.decoded.typed() for e in ReplayReader(MemorySource(publisher.log), publisher.serde).events([topic])]


def test_a_plateau_grows_a_seed_that_walks_to_its_end(library, publisher):
    model, tamiyo, trainer = _run(library, publisher)
    params_before = sum(p.numel() for p in model.parameters())
    model, history = trainer.train()
    lineage = tamiyo.lineage
    assert lineage and lineage[0]["outcome"] == "FOSSILIZED"  # min_improvement -1: accepted whatever happens
    assert lineage[0]["blueprint"] == "residual_mlp"  # the lowest-risk validated kernel for the chunk width
    assert sum(p.numel() for p in model.parameters()) > params_before
    assert history.epochs[-1]["params"] == sum(p.numel() for p in model.parameters())
    transitions = [t.to_state.value for t in _events(publisher, "kasmina.lifecycle.transitions")
                   if (t.layer_id, t.seed_id) == (lineage[0]["layer_id"], lineage[0]["seed"])]
    assert transitions[:8] == ["GERMINATED", "LOADING", "TRAINING", "GRAFTING", "STABILIZATION", "EVALUATING",
                               "FINE_TUNING", "FOSSILIZED"]
    decisions = _events(publisher, "tamiyo.decisions")
    assert {d.epoch for d in decisions} == set(range(1, 15))  # a decision, if only "wait", every epoch
    germ = next(d for d in decisions if d.action == "request_germination")
    assert germ.chosen_kernel_artifact_id and germ.candidates and germ.reason.startswith("plateau")
    reports = _events(publisher, "innovation.field_reports")
    assert reports[0].outcome == "FOSSILIZED" and reports[0].reward == pytest.approx(lineage[0]["reward"])
    run = _events(publisher, "tolaria.run.events")
    assert [type(e).__name__ for e in run][0] == "RunStarted" and type(run[-1]).__name__ == "RunCompleted"
    assert sum(type(e).__name__ == "EpochCompleted" for e in run) == 14


def test_new_seed_parameters_join_the_optimizer_with_a_schedule_of_their_own(library, publisher):
    model, tamiyo, trainer = _run(library, publisher, epochs=8)
    trainer.train()
    groups = trainer.optimizer.param_groups
    born = sorted(g["born"] for g in groups)
    assert born[0] == 1 and len(born) >= 2  # host parameters and the child's, born later
    child_group = next(g for g in groups if g["born"] > 1)
    assert trainer._lr(8, child_group["born"]) > trainer._lr(8, 1)  # at the last epoch the younger group decayed less
    trained = {id(p) for g in groups for p in g["params"]}
    for layer in model.seed_layers():
        for child in layer.seeds.values():
            for p in child.parameters():
                assert (id(p) in trained) == p.requires_grad


def test_a_nan_rolls_back_host_tamiyo_and_kasmina_together(library, publisher):
    model, tamiyo, trainer = _run(library, publisher, epochs=10)
    original = trainer._train_epoch
    poisoned = {"done": False}

    def train_epoch():
        loss = original()
        in_flight = [k for k in tamiyo.in_flight if model.kasmina.state(*k) in (Code.GRAFTING, Code.STABILIZATION)]
        if in_flight and not poisoned["done"]:
            poisoned["done"] = True
            return float("nan")
        return loss

    trainer._train_epoch = train_epoch
    model, history = trainer.train()
    assert len(history.rollbacks) == 1 and history.rollbacks[0]["trigger"] == "nan"
    locked = history.rollbacks[0]["locked"]
    assert locked
    layer, seed = map(int, locked[0].split("/")[1:])
    assert model.kasmina.state(layer, seed) == Code.ROLLED_BACK
    assert str(seed) not in model.seed_layers()[layer].seeds
    assert any(r.outcome == "ROLLED_BACK" for r in _events(publisher, "innovation.field_reports"))
    assert [e["epoch"] for e in history.epochs] == list(range(1, 11))  # replayed epochs are not counted twice
    rollbacks = [e for e in _events(publisher, "tolaria.run.events") if type(e).__name__ == "RollbackPerformed"]
    assert rollbacks[0].trigger == "nan" and rollbacks[0].to_epoch < rollbacks[0].from_epoch
    assert all(math.isfinite(e["train_loss"]) for e in history.epochs)


def test_a_rollback_keeps_an_adaptation_that_was_already_accepted(library, publisher):
    """A spike while the only adaptation is FINE_TUNING (it passed its evaluation and is in the checkpoint) is the
    training's, not the seed's: the checkpoint is restored and the seed goes on to its end."""
    cfg = {**CFG, "tamiyo": {**CFG["tamiyo"], "max_germinations": 1, "fine_tune_epochs": 3}}
    model, tamiyo, trainer = _run(library, publisher, cfg=cfg, epochs=14)
    original = trainer._train_epoch
    poisoned = {"done": False}

    def train_epoch():
        loss = original()
        tuning = [k for k in tamiyo.in_flight if model.kasmina.state(*k) == Code.FINE_TUNING]
        if tuning and not poisoned["done"] and len(trainer.history.epochs) > tamiyo.in_flight[tuning[0]].germinated_epoch + 1:
            poisoned["done"] = True
            return float("nan")
        return loss

    trainer._train_epoch = train_epoch
    model, history = trainer.train()
    assert poisoned["done"] and len(history.rollbacks) == 1 and history.rollbacks[0]["locked"] == []
    assert tamiyo.lineage[0]["outcome"] == "FOSSILIZED"
    layer, seed = tamiyo.lineage[0]["layer_id"], tamiyo.lineage[0]["seed"]
    assert model.kasmina.state(layer, seed) == Code.FOSSILIZED and str(seed) in model.seed_layers()[layer].seeds


def test_a_state_checksum_failure_rolls_back(library, publisher):
    model, tamiyo, trainer = _run(library, publisher, epochs=6)
    original = trainer._train_epoch

    def train_epoch():
        loss = original()
        if len(trainer.history.epochs) == 3 and not trainer.history.rollbacks:
            model.seed_layers()[0].lifecycle_state[0] = int(Code.FOSSILIZED)  # corruption outside the lifecycle
        return loss

    trainer._train_epoch = train_epoch
    model, history = trainer.train()
    assert history.rollbacks and history.rollbacks[0]["trigger"].startswith("checksum_mismatch")
    assert history.rollbacks[0]["to_epoch"] == 3  # the corruption came during epoch 4; epoch 3 was the last good
    assert [e["epoch"] for e in history.epochs] == list(range(1, 7))
    model.kasmina.verify()  # the restored state is consistent again


def test_reward_follows_c41():
    report = {"latency_ms_mean": 2.0, "memory_mb_peak": 10.0}
    assert compute_reward("FOSSILIZED", 0.5, 0.6, report) == pytest.approx(0.1 * 10 - 0.1 + 1.0 - 0.1)
    assert compute_reward("ROLLED_BACK", 0.5, 0.5, None) == -1.0


def test_config_from_yaml_with_clear_errors(tmp_path, monkeypatch):
    good = tmp_path / "run.yaml"
    good.write_text("tolaria:\n  epochs: 12\nkasmina:\n  chunk_size: 8\n")
    cfg = load_config(good)
    assert cfg.tolaria.epochs == 12 and cfg.kasmina.chunk_size == 8 and cfg.tamiyo.patience == 3
    monkeypatch.setenv("ESPER_TOLARIA__EPOCHS", "7")
    assert load_config(good).tolaria.epochs == 7
    monkeypatch.delenv("ESPER_TOLARIA__EPOCHS")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tolaria:\n  epochs: -1\n  learning_rate: 3\ntamiyo:\n  policy: magic\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    message = str(info.value)
    assert "tolaria.epochs" in message and "tolaria.learning_rate" in message and "tamiyo.policy" in message


def test_checkpoints_are_safe_to_load_and_carry_all_three_states(library, publisher, tmp_path):
    import json

    store, view = library
    config = EsperConfig.model_validate(CFG)
    config.tolaria.epochs = 6
    model = wrap(host(), config.kasmina, artifacts=store, publisher=publisher, run_id="run-c")
    tamiyo = TamiyoController(model, config.tamiyo, view, publisher)
    TolariaTrainer(model, tamiyo, config.tolaria, *spirals_small(), publisher=publisher,
                   checkpoint_dir=tmp_path / "ckpt").train()
    meta = json.loads((tmp_path / "ckpt" / "last.json").read_text())
    state = torch.load(tmp_path / "ckpt" / meta["model_file"], weights_only=True)  # tensors only: no pickle needed
    assert meta["epoch"] == 6 and set(meta) >= {"kasmina", "tamiyo", "offsets", "model_sha256"}
    assert state.keys() == model.state_dict().keys()
    restored = TamiyoController(model, config.tamiyo, view)
    restored.load_state_dict(meta["tamiyo"])
    assert restored.state_dict() == tamiyo.state_dict()


def test_karn_logs_every_field_report(library, publisher, tmp_path):
    import json

    from esper_runtime.karn import KarnListener

    model, tamiyo, trainer = _run(library, publisher)
    trainer.train()
    karn = KarnListener(tmp_path / "karn.jsonl")
    for report in _events(publisher, "innovation.field_reports"):
        karn.log(report)
    rows = [json.loads(line) for line in (tmp_path / "karn.jsonl").read_text().splitlines()]
    assert len(rows) == len(tamiyo.field_reports) > 0
    assert rows[0]["outcome"] == tamiyo.field_reports[0].outcome and rows[0]["reward"] is not None


def test_tamiyo_asks_for_an_emergency_rollback_when_the_loss_blows_up(library, publisher):
    model, tamiyo, trainer = _run(library, publisher, epochs=10)
    original = trainer.evaluate
    state = {"done": False}

    def evaluate(data=None):
        loss, acc = original(data)
        if tamiyo.in_flight and not state["done"] and data is None:
            state["done"] = True
            return loss * 100, acc  # what a harmful graft looks like from the validation set
        return loss, acc

    trainer.evaluate = evaluate
    model, history = trainer.train()
    assert history.rollbacks and history.rollbacks[0]["trigger"].startswith("emergency_signal")
    signals = [e for e in _events(publisher, "tamiyo.adaptation.signals") if e.emergency_rollback_required]
    assert len(signals) == 1
    assert any(d.action == "emergency_rollback" for d in _events(publisher, "tamiyo.decisions"))


def test_a_parameter_born_at_the_last_boundary_still_gets_a_learning_rate(library, publisher):
    model, tamiyo, trainer = _run(library, publisher)
    last = trainer.config.epochs
    assert trainer._lr(last + 1, born=last + 1) == pytest.approx(trainer.config.lr)  # was a division by zero
    assert 0 < trainer._lr(last, born=1) < trainer.config.lr


def test_a_child_that_never_passes_its_training_test_is_culled_and_growth_goes_on(library, publisher):
    """A design that cannot learn its way in (here: a reconstruction tolerance no child meets) must not hold its
    slot, and the run's growth, to the end: Tamiyo culls it ``training_timeout_epochs`` after germination."""
    cfg = {**CFG, "kasmina": {**CFG["kasmina"], "reconstruction_tolerance": 1e-12},
           "tamiyo": {**CFG["tamiyo"], "training_timeout_epochs": 3}}
    model, tamiyo, trainer = _run(library, publisher, cfg=cfg, epochs=14)
    trainer.train()
    lineage = tamiyo.lineage
    assert lineage and lineage[0]["outcome"] == "CULLED"
    assert lineage[0]["ended_epoch"] - lineage[0]["germinated_epoch"] == 3
    assert "training_timeout_epochs=3" in lineage[0]["why"] or any(
        "training_timeout_epochs=3" in d.reason for d in _events(publisher, "tamiyo.decisions"))
    assert len(lineage) == 2 or tamiyo.germinations == 2  # the slot and the budget were used again

"""The SDK's save/load round trip, the run's configuration and failure on the log, regression, and why nothing grew."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import Dataset

from esper_runtime.config import EsperConfig
from esper_runtime.kasmina import wrap
from esper_runtime.run.data import DataError
from esper_runtime.sdk import load_model, save_model
from esper_runtime.tamiyo import TamiyoController
from esper_runtime.tolaria import TolariaTrainer
from views.run_view import RunView
from views.urza_view import UrzaView
from streams.replay import MemorySource, ReplayReader

from ..helpers import host, spirals_small
from .test_training_run import CFG, _run


def _run_events(publisher, run_id):
    view = RunView(run_id)
    events = [e.decoded.typed() for e in ReplayReader(MemorySource(publisher.log), publisher.serde).events(
        ["tolaria.run.events", "tamiyo.decisions", "kasmina.lifecycle.transitions", "innovation.field_reports"])]
    for ev in events:
        view.apply(ev)
    return view, [ev for ev in events if ev.envelope.run_id == run_id]


def test_a_grown_model_comes_back_without_the_runtime(library, publisher, tmp_path):
    model, tamiyo, trainer = _run(library, publisher)
    model, _ = trainer.train()
    assert any(item["outcome"] == "FOSSILIZED" for item in tamiyo.lineage)
    save_model(model, tmp_path / "model")  # no lineage given: the controller's
    lineage = json.loads((tmp_path / "model" / "lineage.json").read_text())
    assert lineage["adaptations"] == tamiyo.lineage and lineage["adaptations"]
    saved = json.loads((tmp_path / "model" / "config.json").read_text())  # the config RunStarted recorded
    assert saved == trainer.resolved_config() and saved["tolaria"]["epochs"] == trainer.config.epochs
    grown = load_model(tmp_path / "model", host=host())
    assert not hasattr(grown, "kasmina") and type(grown).__name__ == "Sequential"
    x = spirals_small()[1][0]
    model.eval()
    with torch.no_grad():
        assert torch.allclose(grown(x), model(x), atol=1e-6)
    children = sum(p.numel() for m in grown.modules() if hasattr(m, "children_") for p in m.children_.parameters())
    assert children > 0 and sum(p.numel() for p in grown.parameters()) == sum(p.numel() for p in model.parameters())


def test_load_model_refuses_a_host_that_is_not_the_saved_one(library, publisher, tmp_path):
    model, _, trainer = _run(library, publisher)
    model, _ = trainer.train()
    save_model(model, tmp_path / "model")
    with pytest.raises(Exception, match="not the model that was saved"):
        load_model(tmp_path / "model", host=torch.nn.Sequential(torch.nn.Linear(2, 4)))
    with pytest.raises(Exception, match="pass host="):
        load_model(tmp_path / "model")


def test_run_started_carries_the_configuration(library, publisher):
    model, _, trainer = _run(library, publisher, epochs=2)
    trainer.train()
    _, events = _run_events(publisher, trainer.run_id)
    config = json.loads(events[0].config_json)
    assert config["tolaria"]["epochs"] == 2 and config["kasmina"]["chunk_size"] == 8
    assert config["tamiyo"]["patience"] == CFG["tamiyo"]["patience"]


class _Poisoned(Dataset):
    """Finite rows except one, which a batch carries into training mid-epoch."""

    def __init__(self, bad: int):
        self.x, self.y = spirals_small()[0]
        self.bad = bad

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i].clone()
        if i == self.bad:
            x[0] = float("nan")
        return x, self.y[i]


def test_a_run_that_fails_after_it_started_ends_with_run_failed(library, publisher):
    store, view = library
    config = EsperConfig.model_validate(CFG)
    model = wrap(host(), config.kasmina, artifacts=store, publisher=publisher, run_id="run-bad")
    trainer = TolariaTrainer(model, TamiyoController(model, config.tamiyo, view, publisher), config.tolaria,
                             _Poisoned(bad=123), spirals_small()[1], publisher=publisher)
    with pytest.raises(DataError, match="training batch .*NaN or infinity"):
        trainer.train()
    folded, events = _run_events(publisher, "run-bad")
    assert type(events[-1]).__name__ == "RunFailed" and events[-1].error_type == "DataError"
    assert folded.status == "failed" and "NaN" in folded.failure


def test_labels_beyond_the_outputs_fail_the_run_with_the_batch_named(publisher):
    (x, y), val = spirals_small()
    trainer = TolariaTrainer(host(), None, EsperConfig().tolaria, (x, y + 5), val, publisher=publisher,
                             run_id="run-labels")
    with pytest.raises(DataError, match="training batch 0: label .* out of range for a model with 2 outputs"):
        trainer.train()
    assert _run_events(publisher, "run-labels")[0].status == "failed"


def test_regression_reports_r2_and_rmse(publisher):
    from sklearn.metrics import r2_score

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, generator=g)
    y = (x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(400, 1, generator=g))
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    cfg = EsperConfig.model_validate({"tolaria": {"epochs": 30, "batch_size": 32}}).tolaria
    trainer = TolariaTrainer(net, None, cfg, (x[:300], y[:300]), (x[300:], y[300:]), publisher=publisher,
                             objective="regression", run_id="run-reg")
    _, history = trainer.train()
    last = history.epochs[-1]
    with torch.no_grad():
        pred = net(x[300:])
    assert last["val_r2"] == pytest.approx(r2_score(y[300:].numpy(), pred.numpy()), abs=1e-5)
    assert last["val_rmse"] == pytest.approx(float(((pred - y[300:]) ** 2).mean().sqrt()), rel=1e-4)
    assert last["val_accuracy"] == last["val_r2"] > 0.9


def test_a_run_with_no_kernel_for_its_width_says_so(library, publisher):
    store, _ = library
    config = EsperConfig.model_validate(CFG)
    model = wrap(host(), config.kasmina, artifacts=store, publisher=publisher, run_id="run-empty")
    trainer = TolariaTrainer(model, TamiyoController(model, config.tamiyo, UrzaView(), publisher), config.tolaria,
                             *spirals_small(), publisher=publisher)
    trainer.train()
    folded, _ = _run_events(publisher, "run-empty")
    assert folded.germinated == 0
    assert folded.no_growth_reason().startswith("no candidate: no validated kernel in Urza for chunk width 8")
    assert any("nothing grew" in line["text"] for line in folded.story)


def _log_versions(publisher, run_id):
    """Each originator's last version on the (in-memory) log for ``run_id``: what a resume numbers on from."""
    from views.folds import RUN_TOPICS

    versions = {}
    for item in ReplayReader(MemorySource(publisher.log), publisher.serde).events(list(RUN_TOPICS)):
        env = item.decoded.typed().envelope
        if env.run_id == run_id:
            versions[env.originator_id] = max(versions.get(env.originator_id, 0), env.originator_version)
    return versions


def _milestones(view):
    return view.germinated, view.fossilized, view.culled, view.field_reports


def _maker(library, publisher):
    def make(run_id, checkpoints):
        store, view = library
        config = EsperConfig.model_validate(CFG)
        model = wrap(host(), config.kasmina, artifacts=store, publisher=publisher, run_id=run_id)
        tamiyo = TamiyoController(model, config.tamiyo, view, publisher)
        return TolariaTrainer(model, tamiyo, config.tolaria, *spirals_small(), publisher=publisher,
                              checkpoint_dir=checkpoints)
    return make


def test_a_run_resumes_from_its_checkpoint_as_if_never_stopped(library, publisher, tmp_path):
    make = _maker(library, publisher)
    _, straight = make("run-straight", tmp_path / "a").train()

    def stop_at_9(record):
        if record["epoch"] == 9:
            raise KeyboardInterrupt  # after epoch 9's events, before its checkpoint: the log is ahead by one
    first = make("run-resumed", tmp_path / "b")
    first.on_epoch = stop_at_9
    with pytest.raises(KeyboardInterrupt):
        first.train()
    folded, _ = _run_events(publisher, "run-resumed")
    assert folded.status == "failed" and max(folded.epochs) == 9

    second = make("run-resumed", tmp_path / "b")
    assert second.resume(log_versions=_log_versions(publisher, "run-resumed"), log_epoch=9,
                         log_seeds=folded.seeds) == 8
    assert second.controller.in_flight or second.kasmina.lineage  # growth was under way: the seeds came back too
    _, history = second.train()
    assert [e["epoch"] for e in history.epochs] == list(range(1, 15))
    assert history.epochs[-1]["val_accuracy"] == straight.epochs[-1]["val_accuracy"]
    assert history.epochs[-1]["params"] == straight.epochs[-1]["params"]
    folded, _ = _run_events(publisher, "run-resumed")
    assert folded.status == "completed" and folded.gaps == [] and folded.duplicates == 0
    assert sorted(folded.epochs) == list(range(1, 15))
    assert _milestones(folded) == _milestones(_run_events(publisher, "run-straight")[0])  # none counted twice
    with pytest.raises(Exception, match="not run-other's"):
        make("run-other", tmp_path / "c").resume(tmp_path / "b")


@pytest.mark.parametrize("later", [0, 1])
def test_a_run_killed_after_its_transitions_reached_the_log_takes_them_back_on_resume(library, publisher, tmp_path,
                                                                                       later):
    """Killed after an epoch's boundary published seed transitions and before that epoch's checkpoint: the resume
    publishes each moved seed's way back to the checkpoint's state, and the run ends as an uninterrupted one does.
    ``later`` 0: killed in the epoch a seed germinated (it goes back to DORMANT); 1: in the epoch after (the seed
    goes back to GERMINATED, which is no second germination)."""
    make = _maker(library, publisher)
    _, straight = make("run-straight", tmp_path / "a").train()
    _, events = _run_events(publisher, "run-straight")
    moves = sorted({ev.epoch for ev in events if type(ev).__name__ == "SeedLifecycleTransition" and ev.epoch > 1})
    assert moves, "the straight run's seeds never moved after epoch 1"
    stop = moves[0] + later

    def killed_before_the_checkpoint(record):
        if record["epoch"] == stop:
            raise KeyboardInterrupt  # the boundary's transitions are on the log, the checkpoint is the epoch before

    first = make("run-taken", tmp_path / "b")
    first.on_epoch = killed_before_the_checkpoint
    with pytest.raises(KeyboardInterrupt):
        first.train()
    folded, _ = _run_events(publisher, "run-taken")
    second = make("run-taken", tmp_path / "b")
    assert second.resume(log_versions=_log_versions(publisher, "run-taken"), log_epoch=stop,
                         log_seeds=folded.seeds) == stop - 1
    live = {f"seed/{l}/{s}": c.name for l, s, c in second.kasmina.seeds()}
    folded, events = _run_events(publisher, "run-taken")
    backs = [ev for ev in events if "taken back to the checkpoint" in getattr(ev, "reason", "")]
    assert backs and {ev.to_state.value for ev in backs} == {"DORMANT" if not later else "GERMINATED"}
    assert any("resume: taken back to the checkpoint" in line["text"] for line in folded.story)  # replay says so
    assert {k: v for k, v in folded.seeds.items() if v != "DORMANT"} == {k: v for k, v in live.items()
                                                                           if v != "DORMANT"}
    _, history = second.train()
    assert history.epochs[-1]["val_accuracy"] == straight.epochs[-1]["val_accuracy"]
    folded, _ = _run_events(publisher, "run-taken")
    assert folded.status == "completed" and folded.gaps == [] and folded.duplicates == 0
    # the milestones of the epoch taken back, and the ways back, are not counted: the totals are the straight run's
    assert _milestones(folded) == _milestones(_run_events(publisher, "run-straight")[0])
    assert folded.germinated >= 1
    assert {k: v for k, v in folded.seeds.items() if v != "DORMANT"} == {
        f"seed/{l}/{s}": c.name for l, s, c in second.kasmina.seeds() if c.name != "DORMANT"}


def test_a_run_killed_mid_checkpoint_resumes_from_the_one_before(library, publisher, tmp_path, monkeypatch):
    """The process dies after a checkpoint's tensor files are written and before its last.json is: the folder still
    holds the previous checkpoint whole (last.json, and the files it names with their digests)."""
    import json

    from esper_runtime.tolaria import trainer as tolaria

    store, view = library
    config = EsperConfig.model_validate(CFG)
    config.tolaria.epochs = 4

    def make():
        model = wrap(host(), config.kasmina, artifacts=store, publisher=publisher, run_id="run-torn")
        return TolariaTrainer(model, TamiyoController(model, config.tamiyo, view, publisher), config.tolaria,
                              *spirals_small(), publisher=publisher, checkpoint_dir=tmp_path / "ckpt")

    trainer = make()
    write = tolaria.write_durably

    def dies_at_epoch_3s_json(path, data):
        if path.name == "last.json" and json.loads(data)["epoch"] == 3:
            raise KeyboardInterrupt  # as a SIGKILL would leave it: the new tensors there, the JSON not yet
        write(path, data)

    monkeypatch.setattr(tolaria, "write_durably", dies_at_epoch_3s_json)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    monkeypatch.undo()
    assert len(list((tmp_path / "ckpt").glob("model-*.pt"))) == 2  # epoch 2's and the torn epoch 3's
    again = make()
    assert again.resume() == 2
    again.train()
    meta = json.loads((tmp_path / "ckpt" / "last.json").read_text())
    assert meta["epoch"] == 4
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted(
        ["last.json", meta["model_file"], meta["resume_file"]])  # the torn files went with the next checkpoint



def test_a_run_whose_seed_germinated_but_never_joined_the_model_did_not_grow(library, publisher):
    # after one epoch of warm-up a seed germinates at epoch 2's boundary; the run ends there, before it is grafted
    model, tamiyo, trainer = _run(library, publisher, epochs=2)
    host_params = sum(p.numel() for p in model.parameters())
    trainer.train()
    folded, _ = _run_events(publisher, "run-t")
    assert folded.germinated == 1 and folded.final_params == host_params
    assert folded.no_growth_reason().startswith("1 seed(s) germinated but none was part of the model at the end")

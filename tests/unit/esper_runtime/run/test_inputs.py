"""``esper run``'s checks before anything is published: each bad input is refused with one line naming it, exit 2;
and its last word when the replay of a finished run disagrees with the live state (exit 3, what differs)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from esper_runtime.cli.main import app
from esper_runtime.run.config import load_run_config
from esper_runtime.run.data import DataError
from esper_runtime.run.pipeline import prepare
from streams.exceptions import ConfigError

GOOD = "a,b,label\n" + "".join(f"{i * 0.1:.2f},{(i % 7) * 0.3:.2f},{i % 3}\n" for i in range(60))


def _config(tmp_path, body: str, train: str | None = GOOD, val: str | None = None):
    if train is not None:
        (tmp_path / "train.csv").write_text(train)
    if val is not None:
        (tmp_path / "val.csv").write_text(val)
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def _refused(tmp_path, body, train=GOOD, val=None):
    with pytest.raises((DataError, ConfigError)) as info:
        prepare(load_run_config(_config(tmp_path, body, train, val)))
    return str(info.value)


BASE = """
data: {train: train.csv, target: label}
model: {mlp: [8]}
"""


def test_a_good_csv_is_accepted_and_its_widths_found(tmp_path):
    prep = prepare(load_run_config(_config(tmp_path, BASE)))
    assert (prep.in_features, prep.n_outputs) == (2, 3)
    # the growth defaults' 8-wide chunks: the hidden layer's (it reads 2) and the 3 outputs' (they read 8), each also
    # with the model's 2 inputs, for branches that skip from the input
    assert prep.widths == {8, 3} and prep.shapes == {(8, 2), (3, 8), (3, 2)}
    assert prep.cfg.esper.tamiyo.max_active_seeds == 6  # unset in the file: the growth defaults, not the section's
    assert prep.large.mlp == [32]  # the rule: same depth, 4x the width
    assert len(prep.data.train) + len(prep.data.val) == 60


@pytest.mark.parametrize("cell, says", [("abc", "'abc' is not a number"), ("", "is empty"), ("nan", "is NaN"),
                                        ("inf", "is infinite")])
def test_a_bad_cell_is_named_by_file_line_and_column(tmp_path, cell, says):
    rows = GOOD.splitlines()
    rows[5] = f"0.5,{cell},1"
    msg = _refused(tmp_path, BASE, "\n".join(rows) + "\n")
    assert "train.csv line 6, column 'b'" in msg and says in msg


def test_a_missing_target_column(tmp_path):
    msg = _refused(tmp_path, BASE.replace("target: label", "target: y"))
    assert "no target column 'y'" in msg and "a, b, label" in msg


def test_a_negative_label(tmp_path):
    msg = _refused(tmp_path, BASE, GOOD.replace("\n0.30,0.90,0\n", "\n0.30,0.90,-1\n"))
    assert "label '-1' is out of range" in msg and "line 5" in msg


def test_class_names_are_numbered_and_an_unseen_one_in_validation_refused(tmp_path):
    train = "a,label\n" + "".join(f"{i},{'cat' if i % 2 else 'dog'}\n" for i in range(20))
    val = "a,label\n1,cat\n2,bird\n"
    msg = _refused(tmp_path, "data: {train: train.csv, val: val.csv}\nmodel: {mlp: [4]}\n", train, val)
    assert "val.csv line 3" in msg and "'bird' is not one of the training labels" in msg
    ok = prepare(load_run_config(_config(tmp_path, "data: {train: train.csv}\nmodel: {mlp: [4]}\n", train)))
    assert ok.data.classes == ["cat", "dog"] and ok.n_outputs == 2


def test_a_missing_file(tmp_path):
    assert "no such file" in _refused(tmp_path, BASE.replace("train.csv", "nope.csv"))


def test_fields_a_run_file_sets_win_over_the_growth_defaults(tmp_path):
    cfg = load_run_config(_config(tmp_path, BASE + "esper: {tamiyo: {patience: 7}, tolaria: {epochs: 10}}\n"))
    assert cfg.esper.tamiyo.patience == 7 and cfg.esper.tamiyo.warmup_epochs == 3  # set / growth default
    assert cfg.esper.tamiyo.fine_tune_epochs == 8  # 80% of the run's own 10 epochs


def test_an_unknown_config_key(tmp_path):
    msg = _refused(tmp_path, BASE + "esper: {tolaria: {epochz: 3}}\n")
    assert "esper.tolaria.epochz" in msg and "Extra inputs are not permitted" in msg
    assert "mdoel" in _refused(tmp_path, BASE + "mdoel: 1\n")


def test_a_factory_that_does_not_import(tmp_path):
    msg = _refused(tmp_path, "data: {train: train.csv}\nmodel: {factory: 'no_such_pkg.models:net'}\n")
    assert "cannot import no_such_pkg.models" in msg


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "user_models.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def three_inputs():
            return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 3))

        def two_outputs(in_features):
            return nn.Sequential(nn.Linear(in_features, 8), nn.ReLU(), nn.Linear(8, 2))

        def no_layers():
            return nn.Sequential(nn.ReLU())

        class Spiky(torch.utils.data.Dataset):
            def __len__(self):
                return 40
            def __getitem__(self, i):
                x = torch.tensor([float(i), 1.0])
                if i == 33:
                    x[1] = float("nan")
                return x, i % 2

        def spiky():
            return Spiky(), Spiky()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_features_that_do_not_fit_the_model(factories):
    msg = _refused(factories, "data: {train: train.csv}\nmodel: {factory: 'user_models:three_inputs'}\n")
    assert "does not accept the data" in msg and "(2,) features" in msg


def test_labels_beyond_the_models_outputs(factories):
    msg = _refused(factories, "data: {train: train.csv}\nmodel: {factory: 'user_models:two_outputs'}\n")
    assert "labels go up to 2 but the model has 2 outputs" in msg


def test_a_model_with_no_layer_to_seed(factories):
    msg = _refused(factories, "data: {train: train.csv}\nmodel: {factory: 'user_models:no_layers'}\n")
    assert "no layer to put seeds in" in msg


def test_the_cli_says_it_in_one_line_and_exits_2(tmp_path):
    path = _config(tmp_path, BASE, GOOD.replace("\n0.30,0.90,0\n", "\n0.30,oops,0\n"))
    res = subprocess.run([sys.executable, "-m", "esper_runtime.cli.main", "run", "--config", str(path), "--out",
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "ESPER_HOME": str(tmp_path / "home"),
                              "ESPER_KAFKA_BOOTSTRAP": "127.0.0.1:9"})  # nothing may be contacted
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and "line 5, column 'b'" in res.stderr
    assert len([line for line in res.stderr.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "out").exists()


def test_the_cli_refuses_a_missing_config(tmp_path):
    res = CliRunner().invoke(app, ["run", "--config", str(tmp_path / "none.yaml")])
    assert res.exit_code == 2 and "cannot read" in res.output


def test_npz_and_parquet_files_and_a_regression_target(tmp_path):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    y = x @ np.array([1.0, -1.0, 0.5]) + 0.1
    np.savez(tmp_path / "train.npz", x=x, y=y)
    cfg = _config(tmp_path, "data: {train: train.npz, target: y}\nmodel: {mlp: [4]}\ntask: regression\n", None)
    prep = prepare(load_run_config(cfg))
    assert (prep.in_features, prep.n_outputs) == (3, 1) and prep.data.train.tensors[1].shape[1] == 1
    x[7, 2] = np.inf
    np.savez(tmp_path / "train.npz", x=x, y=y)
    with pytest.raises(DataError, match=r"x\[7, 2\] is inf"):
        prepare(load_run_config(cfg))

    frame = pd.DataFrame({"f1": rng.normal(size=40), "f2": rng.normal(size=40), "label": rng.integers(0, 4, 40)})
    frame.to_parquet(tmp_path / "train.parquet")
    prep = prepare(load_run_config(_config(tmp_path, "data: {train: train.parquet}\nmodel: {mlp: [4]}\n", None)))
    assert (prep.in_features, prep.n_outputs) == (2, 4)
    frame.loc[3, "f2"] = np.nan
    frame.to_parquet(tmp_path / "train.parquet")
    assert "row 3, column 'f2': is NaN" in _refused(tmp_path, "data: {train: train.parquet}\nmodel: {mlp: [4]}\n", None)


def test_the_demo_on_cuda_without_one_is_refused_before_anything_starts(tmp_path, monkeypatch):
    """``esper demo --device cuda`` on a machine without a card: one line, exit 2, nothing published or written."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("ESPER_HOME", str(tmp_path / "home"))
    res = CliRunner().invoke(app, ["demo", "--device", "cuda", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "no CUDA device" in res.output, res.output
    assert not (tmp_path / "out").exists()
    res = CliRunner().invoke(app, ["demo", "--device", "tpu", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "cpu, cuda or auto" in res.output


def test_a_replay_mismatch_exits_3_and_says_what_differs(tmp_path, monkeypatch):
    import io

    import typer
    from rich.console import Console

    from esper_runtime.cli.main import _run_pipeline
    from esper_runtime.run import pipeline

    stats = {"mean": 0.9, "std": 0.0, "values": [0.9]}
    summary = {"over_seeds": {"final_accuracy": stats, "baseline_accuracy": None, "large_baseline_accuracy": None},
               "metric": "accuracy", "host_params": 10, "final_params": 20, "seeds_germinated": 1,
               "seeds_fossilized": 0, "seeds_culled": 0, "replay_matches": False, "no_growth": {},
               "replay_differences": ["seed/0/0: replay FINE_TUNING v7 != live absent", "final params: log 1 != live 2"]}
    monkeypatch.setattr(pipeline, "run", lambda prep, opts, echo, progress: summary)
    out = io.StringIO()
    with pytest.raises(typer.Exit) as exited:
        _run_pipeline(Console(file=out, width=300), lambda: None, pipeline.RunOptions(out=tmp_path))
    assert exited.value.exit_code == 3
    said = out.getvalue()
    assert "differ (2, all in summary.json's replay_differences)" in said
    assert "seed/0/0: replay FINE_TUNING v7 != live absent; final params: log 1 != live 2" in said

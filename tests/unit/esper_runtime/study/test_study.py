"""The study's arithmetic: parameter counts, the matched width, and what counts as reaching a target."""

from __future__ import annotations

import pytest
from torch import nn

from esper_runtime.study.study import TASKS, _summarize, matched_width, mlp_params


def test_mlp_params_counts_what_torch_counts():
    net = nn.Sequential(nn.Linear(2, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                        nn.Linear(24, 2))
    assert mlp_params(2, (24, 24, 24), 2) == sum(p.numel() for p in net.parameters()) == 1322
    assert mlp_params(2, (16, 16), 2) == 354 and mlp_params(64, (4, 4), 10) == 330


def test_the_matched_width_is_the_nearest_parameter_count():
    assert matched_width(2, 2, 2, 354) == 16
    assert matched_width(2, 2, 2, 1000) == 29  # 2x28: 954 params; 2x29: 1,017 -> 29 is nearer
    assert matched_width(2, 2, 2, 980) == 28
    assert matched_width(2, 2, 2, 1) == 1


def _run(acc, params, flops=100):
    return {"accuracy": acc, "params": params, "flops": flops, "run_id": f"r{acc}", "germinated": 1, "fossilized": 1}


def test_the_summary_finds_the_smallest_static_model_reaching_the_grown_accuracy():
    task = TASKS["two_spirals"]
    grown = [_run(0.80, 900, 50), _run(0.84, 1100, 70)]
    static = {(16, 16): [_run(0.6, 354), _run(0.62, 354)], (32, 32): [_run(0.81, 1218, 80), _run(0.83, 1218, 80)],
              (64, 64): [_run(0.9, 4482), _run(0.92, 4482)]}
    out = _summarize(task, grown, [_run(0.6, 354)] * 2, [_run(0.79, 1015), _run(0.80, 1015)], static)
    assert out["grown"]["accuracy_mean"] == pytest.approx(0.82) and out["grown"]["params_mean"] == 1000
    assert out["smallest_static_matching_grown"]["hidden"] == [32, 32]
    assert out["targets"]["grown_beats_param_matched"] is True and out["targets"]["grown_reaches_accuracy"] is False
    assert out["targets"]["grown_flops_le_smallest_matching_static"] is True  # 60 <= 80
    assert out["targets"]["smallest_static_reaching_target_params"] is None  # nothing reaches 0.95 here
    assert [p["params"] for p in out["static_sweep"]] == [354, 1218, 4482]

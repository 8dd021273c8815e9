"""``ops/gpu-check.sh`` is run on a GPU machine lent for minutes: it must work the first time. Here it is rehearsed
on the CPU (the same steps, short benches) and must refuse to report anything when asked for CUDA without one."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path, **env):
    return subprocess.run(["bash", str(ROOT / "ops" / "gpu-check.sh")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OUT": str(tmp_path), **env})


def test_without_a_cuda_device_the_check_says_so_and_exits_2(tmp_path):
    if torch.cuda.is_available():
        return  # a GPU machine runs the real thing
    res = _run(tmp_path)
    assert res.returncode == 2 and "no CUDA device" in res.stderr
    assert not (tmp_path / "summary.json").exists()


def test_the_rehearsal_on_cpu_runs_every_step_and_writes_the_summary(tmp_path):
    res = _run(tmp_path, ESPER_CHECK_DEVICE="cpu")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["tests_passed"] and summary["device"]["hardware"].startswith("cpu_")
    assert set(summary["targets"]) == {"blend_over_copy", "dormant_ratio", "kernel_cold_ms"}
    assert all(t["value"] is not None and isinstance(t["met"], bool) for t in summary["targets"].values())
    for name in ("blend", "kernel-load", "dormant-overhead"):
        assert json.loads((tmp_path / f"{name}.json").read_text())["device"] == "cpu"
    assert "passed" in (tmp_path / "tests.log").read_text()

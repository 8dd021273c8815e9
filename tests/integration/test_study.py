"""``esper study`` end to end, small: every key the issue names, and its numbers read back from SQL."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_small_study_reports_every_figure_and_recomputes_from_sql(kafka_bootstrap, tmp_path):
    env = dict(os.environ, ESPER_KAFKA_BOOTSTRAP=kafka_bootstrap, ESPER_HOME=str(tmp_path / "home"),
               ESPER_TOPIC_PREFIX=f"study-{uuid.uuid4().hex[:8]}.", ESPER_PROCESSORS_PORT=str(_free_port()))
    res = subprocess.run([sys.executable, "-m", "esper_runtime.cli.main", "study", "--tasks", "two_spirals",
                          "--seeds", "2", "--epochs", "30", "--sweep", "16x16,32x32", "--out", str(tmp_path / "out"),
                          "--json"], capture_output=True, text=True, env=env, timeout=1700)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    t = result["tasks"]["two_spirals"]
    for key in ("accuracy_mean", "accuracy_std", "params_mean", "flops_mean"):
        assert isinstance(t["grown"][key], float), key
    assert t["grown"]["flops_mean"] > 0 and len(t["grown"]["run_ids"]) == 2
    assert isinstance(t["frozen"]["accuracy_mean"], float) and t["param_matched"]["params"] > 0
    assert [p["params"] for p in t["static_sweep"]] == [354, 1218]
    assert all({"params", "accuracy_mean"} <= set(p) for p in t["static_sweep"])
    assert result["sql"]["matches"] is True and result["sql"]["runs"] == 4
    for name in ("study.md", "study.json", "pareto_two_spirals.png"):
        assert (tmp_path / "out" / name).exists(), name
    assert "SELECT run_id" in (tmp_path / "out" / "study.md").read_text()

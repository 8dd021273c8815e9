"""``esper demo`` on a fresh home (empty Urza: it compiles the library first), against the real broker."""

import json
import os
import socket
import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.integration

CONTRACT = ["run_id", "task", "epochs", "host_params", "final_params", "baseline_accuracy", "large_baseline_accuracy",
            "large_baseline_params", "final_accuracy", "seeds_germinated", "seeds_fossilized", "seeds_culled",
            "events_published", "replay_matches"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_end_to_end(kafka_bootstrap, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, ESPER_KAFKA_BOOTSTRAP=kafka_bootstrap, ESPER_HOME=str(tmp_path / "home"),
               ESPER_TOPIC_PREFIX=f"demo-{uuid.uuid4().hex[:8]}.", ESPER_PROCESSORS_PORT=str(_free_port()))
    res = subprocess.run([sys.executable, "-m", "esper_runtime.cli.main", "demo", "--out", str(out), "--epochs", "80",
                          "--seeds", "1"], capture_output=True, text=True, env=env, timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in CONTRACT:
        assert key in summary, key
    assert summary["replay_matches"] is True and summary["replay_differences"] == []
    assert summary["seeds_germinated"] >= 1 and summary["seeds_fossilized"] >= 1
    assert summary["final_params"] > summary["host_params"]
    assert summary["large_baseline_params"] > summary["host_params"]
    assert summary["events_published"] > 80
    lineage = json.loads((out / "lineage.json").read_text())
    assert any(a["outcome"] == "FOSSILIZED" for a in lineage["adaptations"])
    assert summary["karn_logged_field_reports"] >= len(lineage["adaptations"])
    assert (tmp_path / "home" / "karn" / "field_reports.jsonl").exists()
    for name in ("report.md", "accuracy.png", "parameters.png", "model/model.pt", "model/structure.json"):
        assert (out / name).exists(), name

    res = subprocess.run([sys.executable, "-m", "esper_runtime.cli.main", "replay", "--run", summary["run_id"],
                          "--verify", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    replayed = json.loads(res.stdout.strip().splitlines()[-1])
    state = replayed["state"]
    assert state["final_accuracy"] == summary["final_accuracy"] and state["final_params"] == summary["final_params"]
    assert state["seeds_germinated"] == summary["seeds_germinated"] and state["gaps"] == []
    assert any(line["kind"] == "decision" and "request_germination" in line["text"] for line in replayed["story"])
    assert replayed["verify"] == {"matches": True, "differences": []}

    # the processors sank the run's telemetry into ClickHouse (the demo stopped them: the store opens directly)
    res = subprocess.run([sys.executable, "-m", "esper_runtime.cli.main", "sql", "--format", "json",
                          f"SELECT count() AS n, max(val_accuracy) AS best FROM esper.epochs FINAL "
                          f"WHERE run_id = '{summary['run_id']}'"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    row = json.loads(res.stdout.strip().splitlines()[-1])
    assert int(row["n"]) >= 80 and row["best"] >= summary["final_accuracy"]

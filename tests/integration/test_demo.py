"""``esper demo`` on a fresh home (empty Urza: it compiles the library first), against the real broker."""

import json
import os
import socket
import subprocess
import sys
import uuid

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

CONTRACT = ["run_id", "task", "epochs", "host_params", "final_params", "baseline_accuracy", "large_baseline_accuracy",
            "large_baseline_params", "final_accuracy", "seeds_germinated", "seeds_fossilized", "seeds_culled",
            "events_published", "replay_matches"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_env(kafka_bootstrap, tmp_path_factory):
    """One home and topic prefix for the module: the first demo compiles the library, the others reuse it."""
    tmp = tmp_path_factory.mktemp("demo")
    # an empty home, no kernel store shared with other tests and an empty compiler cache: the first run a new user
    # has, cold compiles included
    env = {k: v for k, v in os.environ.items() if k != "ESPER_ARTIFACTS_DIR"}
    return tmp, dict(env, ESPER_KAFKA_BOOTSTRAP=kafka_bootstrap, ESPER_HOME=str(tmp / "home"),
                     ESPER_TOPIC_PREFIX=f"demo-{uuid.uuid4().hex[:8]}.", ESPER_PROCESSORS_PORT=str(_free_port()),
                     TORCHINDUCTOR_CACHE_DIR=str(tmp / "inductor"))


def test_the_readme_command_on_a_fresh_home_grows(demo_env):
    """README's first command exactly as written (defaults: 150 epochs, 3 seeds), on nothing cached."""
    tmp_path, env = demo_env
    out = tmp_path / "out"
    esper = os.path.join(os.path.dirname(sys.executable), "esper")
    res = subprocess.run([esper, "demo", "--out", str(out)], capture_output=True, text=True, env=env, timeout=2400)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in CONTRACT:
        assert key in summary, key
    assert summary["replay_matches"] is True and summary["replay_differences"] == []
    assert summary["kernels_available"]["8"] >= 1 and summary["library"][0]["pending"] == 0
    assert all(n >= 1 for n in summary["germinated_per_seed"]) and len(summary["germinated_per_seed"]) == 3
    assert summary["seeds_germinated"] >= 1 and summary["seeds_fossilized"] >= 1
    assert summary["final_params"] > summary["host_params"]
    assert summary["large_baseline_params"] > summary["host_params"]
    assert summary["events_published"] > 150
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
    assert int(row["n"]) >= 150 and row["best"] >= summary["final_accuracy"]


def test_demo_with_the_learned_controller(demo_env):
    """No policy yet: the demo logs heuristic runs, Simic learns only from those events, and the GNN runs the demo."""
    tmp_path, env = demo_env
    out = tmp_path / "out-gnn"
    res = subprocess.run([sys.executable, "-m", "esper_runtime.cli.main", "demo", "--out", str(out), "--epochs", "80",
                          "--seeds", "1", "--controller", "gnn"], capture_output=True, text=True, env=env, timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["controller"] == "gnn" and summary["replay_matches"] is True
    assert summary["seeds_fossilized"] >= 1 and summary["final_params"] > summary["host_params"]
    policy = summary["policy"]
    assert policy["version"].startswith("imitation-") and policy["held_out"]["decisions"] >= 1
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["adaptations"]


def test_demo_with_hierarchical_control(demo_env):
    tmp_path, env = demo_env
    out = tmp_path / "out-hier"
    res = subprocess.run([sys.executable, "-m", "esper_runtime.cli.main", "demo", "--out", str(out), "--epochs", "80",
                          "--seeds", "1", "--controller", "hierarchical"], capture_output=True, text=True, env=env,
                         timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["controller"] == "hierarchical" and summary["replay_matches"] is True
    [atp] = summary["atp"]
    assert len(atp["domains"]) == 3 and 0 < atp["spent"] <= atp["allocated"] + 30  # 30: the initial budgets
    assert summary["seeds_germinated"] >= 1

"""``esper run`` as a user runs it: their CSV, their YAML, the real broker; and a run that fails mid-way."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


POISONED = """
import torch
from torch.utils.data import TensorDataset


def poisoned():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(512, 2, generator=g), torch.randint(0, 2, (512,), generator=g)
    x[400, 1] = float("nan")  # drawn in some batch of the first epoch
    return TensorDataset(x, y), TensorDataset(x[:64].nan_to_num(), y[:64])
"""


@pytest.fixture(scope="module")
def user(kafka_bootstrap, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("user")
    rng = np.random.default_rng(3)
    for name, n in (("train.csv", 900), ("val.csv", 300)):  # a ring inside a ring: not linear, easy to grow on
        r = np.where(rng.random(n) < 0.5, 1.0, 2.0)
        t = rng.uniform(0, 2 * np.pi, n)
        xy = np.stack([r * np.cos(t), r * np.sin(t)], 1) + rng.normal(0, 0.25, (n, 2))
        rows = "".join(f"{a:.4f},{b:.4f},{'outer' if rr > 1.5 else 'inner'}\n" for (a, b), rr in zip(xy, r))
        (tmp / name).write_text("x1,x2,ring\n" + rows)
    (tmp / "user_data.py").write_text(POISONED)
    env = dict(os.environ, ESPER_KAFKA_BOOTSTRAP=kafka_bootstrap, ESPER_HOME=str(tmp / "home"),
               ESPER_TOPIC_PREFIX=f"run-{uuid.uuid4().hex[:8]}.", ESPER_PROCESSORS_PORT=str(_free_port()),
               PYTHONPATH=str(tmp))
    return tmp, env


def _esper(env, *args, timeout=1500):
    return subprocess.run([sys.executable, "-m", "esper_runtime.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _replayed(env, run_id):
    res = _esper(env, "replay", "--run", run_id, "--json", timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])["state"]


def test_a_user_grows_an_mlp_on_their_csv(user):
    tmp, env = user
    (tmp / "run.yaml").write_text(textwrap.dedent("""
        name: rings
        data: {train: train.csv, val: val.csv, target: ring}
        model: {mlp: [8, 8]}
        esper:
          kasmina: {chunk_size: 4, stats_every: 2, reconstruction_steps: 20, graft_steps: 40, stabilize_steps: 20,
                    evaluate_steps: 20}
          tamiyo: {warmup_epochs: 5, patience: 2, min_delta: 0.01}
          tolaria: {epochs: 40}
    """))
    out = tmp / "out"
    res = _esper(env, "run", "--config", str(tmp / "run.yaml"), "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "rings" and summary["replay_matches"] is True
    assert summary["kernels_available"]["4"] >= 1 and summary["seeds_germinated"] >= 1
    assert summary["large_baseline_params"] == 2 * 32 + 32 + 32 * 32 + 32 + 32 * 2 + 2  # the 4x-wide rule
    for name in ("report.md", "accuracy.png", "lineage.json", "model/model.pt", "model/grown.json",
                 "checkpoints/s0/last.json"):
        assert (out / name).exists(), name
    checkpoint = json.loads((out / "checkpoints/s0/last.json").read_text())
    assert sorted(p.name for p in (out / "checkpoints/s0").iterdir()) == sorted(
        ["last.json", checkpoint["model_file"], checkpoint["resume_file"]])  # nothing of earlier checkpoints left
    # the processors ran beside it: the run is in SQL with no manual sink
    res = _esper(env, "sql", "--format", "json",
                 f"SELECT count() AS n FROM esper.epochs FINAL WHERE run_id = '{summary['run_id']}'", timeout=120)
    assert res.returncode == 0 and int(json.loads(res.stdout.strip().splitlines()[-1])["n"]) == 40, res.stderr
    # a decision joins the command that carried it out, the transitions that command caused and the field report
    # of the adaptation it started (docs: "From a decision to its rows")
    run_id = summary["run_id"]
    res = _esper(env, "sql", "--format", "json", f"""
        SELECT d.decision_id AS decision, t.to_state AS to_state, f.outcome AS outcome
        FROM esper.decisions AS d FINAL
        JOIN esper.commands AS c FINAL ON c.decision_id = d.decision_id
        JOIN esper.lifecycle_transitions AS t FINAL ON t.command_id = c.command_id
        LEFT JOIN esper.field_reports AS f FINAL ON f.decision_id = d.decision_id
        WHERE d.run_id = '{run_id}' AND d.action = 'request_germination'""", timeout=120)
    assert res.returncode == 0, res.stderr
    joined = [json.loads(line) for line in res.stdout.strip().splitlines()]
    assert joined and {r["to_state"] for r in joined} == {"GERMINATED"}
    res = _esper(env, "sql", "--format", "json", f"""
        SELECT count() AS reports, countIf(d.action = 'request_germination') AS linked
        FROM esper.field_reports AS f FINAL LEFT JOIN esper.decisions AS d FINAL ON d.decision_id = f.decision_id
        WHERE f.run_id = '{run_id}'""", timeout=120)
    counts = json.loads(res.stdout.strip().splitlines()[-1])
    assert int(counts["reports"]) == int(counts["linked"]), counts
    config = _replayed(env, summary["run_id"])["config"]  # how the run was set up, from the log
    assert config["data"]["target"] == "ring" and config["esper"]["tolaria"]["epochs"] == 40

    import torch

    from esper_runtime.sdk import load_model

    grown = load_model(out / "model")  # the host rebuilt from grown.json, on raw features: no runtime state
    rows = np.loadtxt(tmp / "val.csv", delimiter=",", skiprows=1, usecols=(0, 1), dtype=np.float32)
    labels = [line.rsplit(",", 1)[1] for line in (tmp / "val.csv").read_text().split()[1:]]
    with torch.no_grad():
        predicted = [grown.classes[i] for i in grown(torch.from_numpy(rows)).argmax(1).tolist()]
    accuracy = sum(p == t for p, t in zip(predicted, labels)) / len(labels)
    assert accuracy == pytest.approx(summary["final_accuracy"], abs=1.5 / len(labels))


def test_a_run_that_breaks_mid_way_says_why_and_closes_on_the_log(user):
    tmp, env = user
    (tmp / "bad.yaml").write_text("name: poisoned\ndata: {factory: 'user_data:poisoned'}\nmodel: {mlp: [8]}\n"
                                  "esper: {kasmina: {chunk_size: 4}, tolaria: {epochs: 3}}\n")
    res = _esper(env, "run", "--config", str(tmp / "bad.yaml"), "--out", str(tmp / "bad"))
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "NaN or infinity" in res.stderr and "RunFailed" in res.stderr
    run_id = next(w for w in res.stderr.split() if w.startswith("poisoned-"))
    state = _replayed(env, run_id)
    assert state["status"] == "failed" and "NaN" in state["failure"]


def test_a_killed_run_resumes_from_its_checkpoint(user):
    import signal
    import time

    from streams.process import pid_alive

    tmp, env = user
    (tmp / "long.yaml").write_text((tmp / "run.yaml").read_text().replace("epochs: 40", "epochs: 120")
                                   .replace("name: rings", "name: long-rings"))
    out = tmp / "long"
    log = (tmp / "long.err").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "esper_runtime.cli.main", "run", "--config", str(tmp / "long.yaml"),
                             "--out", str(out)], stderr=log, stdout=subprocess.DEVNULL, env=env)
    orphans = []
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if json.loads((out / "checkpoints" / "s0" / "last.json").read_text())["epoch"] >= 20:
                    break
            except (OSError, ValueError):
                pass
            assert proc.poll() is None, (tmp / "long.err").read_text()[-2000:]
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)  # no RunFailed, no clean-up: a machine that went away
        proc.wait()
        log.close()
        orphans = [int(w.strip("(,")) for line in (tmp / "long.err").read_text().splitlines()
                   if "processors started (pid" in line for w in line.split()[3:4]]
        assert orphans, (tmp / "long.err").read_text()[-2000:]
        deadline = time.monotonic() + 30  # the killed run's app sees its starter gone and stops itself
        while any(pid_alive(pid) for pid in orphans) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(pid_alive(pid) for pid in orphans), "the killed run's processors outlived it"

        # a scheduler's SIGTERM: the run stops what it started on the way out (exit 143), and resumes later
        log = (tmp / "term.err").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "esper_runtime.cli.main", "run", "--config",
                                 str(tmp / "long.yaml"), "--out", str(out), "--resume"], stderr=log,
                                stdout=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 300
        while "resuming after epoch" not in (tmp / "term.err").read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp / "term.err").read_text()[-2000:]
            time.sleep(0.2)
        started = [int(w.strip("(,")) for line in (tmp / "term.err").read_text().splitlines()
                   if "processors started (pid" in line for w in line.split()[3:4]]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143, (tmp / "term.err").read_text()[-2000:]
        log.close()
        orphans += started
        assert started and not any(pid_alive(pid) for pid in started), (tmp / "term.err").read_text()[-2000:]

        res = _esper(env, "run", "--config", str(tmp / "long.yaml"), "--out", str(out), "--resume")
        summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
        assert res.returncode in (0, 4), (res.stderr[-3000:], summary.get("replay_differences"))
        assert "resuming after epoch" in res.stderr
        state = _replayed(env, summary["run_id"])
        assert state["status"] == "completed" and state["epochs"] == 120 and state["gaps"] == []
        assert summary["replay_matches"] is True
        res = _esper(env, "run", "--config", str(tmp / "long.yaml"), "--out", str(out), "--resume")
        assert "completed on the log" in res.stderr and json.loads((out / "summary.json").read_text())[
            "final_accuracy"] == summary["final_accuracy"]
        changed = (tmp / "long.yaml").read_text().replace("epochs: 120", "epochs: 121")
        (tmp / "changed.yaml").write_text(changed)
        res = _esper(env, "run", "--config", str(tmp / "changed.yaml"), "--out", str(out), "--resume")
        assert res.returncode == 2 and "configuration changed" in res.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in orphans:  # the killed run's processors, by the PID it printed
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

"""``esper karn evolve`` as a user runs it on a fresh home: the starter library compiled for the run's seed shapes,
then Karn's designs proposed, submitted with their lineage, compiled by Tezzeret and measured by Urabrask in their
own processes, all on the real broker; the family tree read back from the log."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

CONFIG = """
name: karn-test
data: {builtin: two_spirals}
model: {mlp: [8]}
task: classification
esper:
  kasmina: {chunk_size: 8, exclude: ["2"]}
  tolaria: {epochs: 12}
  tamiyo: {warmup_epochs: 1}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _esper(env, *args, timeout=1500):
    return subprocess.run([sys.executable, "-m", "esper_runtime.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_karn_evolves_designs_through_the_pipeline_and_the_log_holds_their_family_tree(kafka_bootstrap, tmp_path):
    (tmp_path / "run.yaml").write_text(CONFIG)
    env = dict(os.environ, ESPER_KAFKA_BOOTSTRAP=kafka_bootstrap, ESPER_HOME=str(tmp_path / "home"),
               ESPER_TOPIC_PREFIX=f"karn-{uuid.uuid4().hex[:8]}.", ESPER_PROCESSORS_PORT=str(_free_port()),
               TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    res = _esper(env, "karn", "evolve", "--config", str(tmp_path / "run.yaml"), "--generations", "2",
                 "--per-generation", "2", "--generated", "1", "--field-seeds", "2", "--json")
    assert res.returncode == 0, res.stderr[-4000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["shapes"] == [[8, 2]]
    assert report["submitted"] == 6 and [g["submitted"] for g in report["generations"]] == [3, 3]
    assert report["validated"] >= 1
    for d in report["designs"]:
        assert d["name"].startswith("karn_") and 0.0 <= d["score"] <= 1.0
        if d["mutation"] == "generate":  # written by the generator: no parents
            assert d["parents"] == [] and d["parents_score"] is None
        else:
            assert d["mutation"] and d["parents"] and 0.0 < d["parents_score"] <= 1.0
    assert sum(d["mutation"] == "generate" for d in report["designs"]) == 2
    s0, s2 = report["stage0"], report["stage2"]
    assert s0["designs"] == 16 and 0.0 <= s0["reconstruction_exact"] <= 1.0 and s0["held_out"]["designs"] == 16
    assert s2["submitted"] == 2 and s2["validated"] == sum(
        1 for d in report["designs"] if d["mutation"] == "generate" and d["validated_shapes"])
    assert s2["met"] == (s2["checked_share_of_new"]["evaluations"] >= 0.8 and s2["validated_share"] >= 0.8)
    assert all(len(g["generator"]["rounds"]) == 11 and g["generator"]["rounds"][-1]["round"] == "evaluation"
               for g in report["generations"])
    s1 = report["stage1"]
    assert s1["met"] == (s1["children_mean_score"] > s1["parents_mean_score"])
    assert report["seconds_per_design"] > 0 and report["designs_per_hour"] > 0
    # the second generation's operator choice saw the first's outcomes: the bandit's evidence is the log
    assert sum(op["children"] for op in report["operators"].values()) == 4  # the generator's are not an operator's

    # the field stage: the same seeds trained with Karn's designs offered, preferred, and not at all
    field = report["field"]
    assert field["seeds"] == 2 and field["epochs"] == 12
    for arm in ("karn_designs", "karn_first", "people_only"):
        assert [r["seed"] for r in field[arm]["runs"]] == [0, 1]
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in field[arm]["runs"])
        assert field[arm]["paired_difference_mean"] == pytest.approx(
            (field[arm]["accuracy_mean"] - field["people_only"]["accuracy_mean"]), abs=2e-4)
        karn = field[arm]["field"]
        assert karn["karn"]["germinated"] == karn["karn_mutated"]["germinated"] + karn["karn_generated"]["germinated"]
        for row in field[arm]["field"].values():
            assert 0 <= row["fossilized"] <= row["germinated"]
            assert row["success_rate"] == (round(row["fossilized"] / row["germinated"], 4) if row["germinated"]
                                           else None)
    assert field["people_only"]["field"]["karn"]["germinated"] == 0  # the control never grafts Karn's designs
    # the reward model: refitted from the log each generation, used only when it beats chance on held-out designs
    for g in report["generations"]:
        rm = g["reward_model"]
        assert rm["used"] == ("chosen" in rm) and ("reason" in rm) != rm["used"]
    assert report["reward_model"]["designs"] == sum(1 for d in report["designs"] if d["predicted_score"] is not None)

    tree = _esper(env, "karn", "lineage", "--json", timeout=300)
    assert tree.returncode == 0, tree.stderr[-2000:]
    lineage = json.loads(tree.stdout.strip().splitlines()[-1])
    assert sorted(d["blueprint_id"] for d in lineage["designs"]) == sorted(d["blueprint_id"] for d in report["designs"])
    assert all((d["parent_names"] or d["mutation"] == "generate") and d["depth"] >= 1 for d in lineage["designs"])
    assert lineage["karn_validated"] == report["validated"]

    # the lineage in SQL (the processors' sink ran while Karn did): at least the first generation, minutes old
    sql = _esper(env, "sql", "SELECT blueprint_id, mutation, length(parent_ids) AS parents FROM esper.blueprints "
                 "FINAL WHERE mutation != ''", "--format", "json", timeout=300)
    assert sql.returncode == 0, sql.stderr[-2000:]
    rows = [json.loads(line) for line in sql.stdout.strip().splitlines() if line.startswith("{")]
    by_id = {d["blueprint_id"]: d for d in report["designs"]}
    assert {d["blueprint_id"] for d in report["designs"] if d["generation"] == 1} <= {r["blueprint_id"] for r in rows}
    assert all(r["mutation"] == by_id[r["blueprint_id"]]["mutation"]
               and int(r["parents"]) == len(by_id[r["blueprint_id"]]["parents"]) for r in rows)

    # Urza offers Karn's validated designs like anyone's: the query a run's Tamiyo makes for this seed shape
    offered = subprocess.run([sys.executable, "-c", QUERY], capture_output=True, text=True, env=env, timeout=300)
    assert offered.returncode == 0, offered.stderr[-2000:]
    validated_karn = {d["blueprint_id"] for d in lineage["designs"] if d["validated"]}
    assert validated_karn and validated_karn <= set(json.loads(offered.stdout.strip().splitlines()[-1]))


QUERY = """
import json
from esper_runtime.urza.library import load_view
from streams import Backbone
bb = Backbone()
view = load_view(bb)
bb.close()
print(json.dumps(sorted({k.blueprint_id for k in view.query([], features=8, in_features=2, model_features=2,
                                                           limit=1000)})))
"""

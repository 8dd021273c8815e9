"""Alert rules as real SQL on chdb: each fires on the history it describes and stays quiet on a healthy one."""

import pytest

from esper_runtime.nissa.alerts import check_run_id, evaluate
from processors.clickhouse import EmbeddedStore, rows_for
from streams import EnvelopeFactory
from streams.contracts import EpochCompleted, FieldReport, SeedLifecycleTransition, SeedState


def _insert(store, events):
    tables = {}
    for ev in events:
        for table, row in rows_for(ev):
            tables.setdefault(table, []).append(row)
    for table, rows in tables.items():
        store.insert(table, rows)


def _run(run_id, losses, stuck_at=None, culled=0, fossilized=0):
    envs = EnvelopeFactory(run_id, "test")
    events = [EpochCompleted(envelope=envs.next(f"run/{run_id}"), epoch=e, train_loss=l, val_loss=l,
                             val_accuracy=0.5, params=10, learning_rate=0.01, duration_ms=1.0)
              for e, l in enumerate(losses)]
    if stuck_at is not None:
        for frm, to in [("DORMANT", "GERMINATED"), ("GERMINATED", "TRAINING")]:
            events.append(SeedLifecycleTransition(envelope=envs.next("seed/1/2"), layer_id=1, seed_id=2,
                                                  from_state=SeedState(frm), to_state=SeedState(to), epoch=stuck_at))
    for i, outcome in enumerate(["CULLED"] * culled + ["FOSSILIZED"] * fossilized):
        events.append(FieldReport(envelope=envs.next(f"field/{i}"), blueprint_id="b", seed_id=f"seed/0/{i}",
                                  pre_metric=0.5, post_metric=0.5, outcome=outcome, eval_metrics={}, reward=0.0))
    return events


@pytest.fixture
def store(tmp_path):
    with EmbeddedStore(tmp_path / "ch") as s:
        yield s


def test_rules_fire_on_the_histories_they_describe(store):
    losses = [1.0, 0.8, 0.6, 0.5, 0.45, 1.3, 0.44] + [0.4] * 30
    _insert(store, _run("bad", losses, stuck_at=3, culled=3, fossilized=1))
    alerts = evaluate(store, "bad")
    by_rule = {a["rule"]: a for a in alerts}
    assert set(by_rule) == {"loss_spike", "seed_stuck", "seeds_culled"}
    assert by_rule["loss_spike"]["row"]["epoch"] == 5 and "epoch 5" in by_rule["loss_spike"]["message"]
    assert by_rule["seed_stuck"]["message"] == "seed/1/2 has been TRAINING since epoch 3 (33 epochs)"
    assert by_rule["seeds_culled"]["message"] == "3 of 4 adaptations were culled"


def test_a_healthy_run_raises_nothing_and_runs_do_not_mix(store):
    _insert(store, _run("bad", [1.0, 0.5, 2.0], stuck_at=0, culled=4))
    _insert(store, _run("good", [1.0 / (e + 1) for e in range(40)], culled=1, fossilized=3))
    assert evaluate(store, "good") == []
    assert evaluate(store, "good", **{"seeds_culled.share": 0.2})[0]["rule"] == "seeds_culled"


def test_run_ids_cannot_carry_sql():
    with pytest.raises(ValueError):
        check_run_id("x' OR 1=1 --")
    assert check_run_id("demo-1a2b3c4d-s0") == "demo-1a2b3c4d-s0"

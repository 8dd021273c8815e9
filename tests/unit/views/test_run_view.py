"""The run fold: seed states in version order, duplicates skipped, gaps reported, rollbacks rewind epochs."""

from views.run_view import RunView
from streams.contracts import EpochCompleted, RollbackPerformed, SeedLifecycleTransition, SeedState
from streams.envelope import EnvelopeFactory


def _tr(envs, seed, frm, to, epoch=1):
    return SeedLifecycleTransition(envelope=envs.next(f"seed/0/{seed}"), layer_id=0, seed_id=seed,
                                   from_state=SeedState(frm), to_state=SeedState(to), epoch=epoch)


def _epoch(envs, n):
    return EpochCompleted(envelope=envs.next("run/r"), epoch=n, train_loss=1.0, val_loss=1.0, val_accuracy=0.5 + n / 100,
                          params=10, learning_rate=0.1, duration_ms=1.0)


def test_seed_states_fold_in_order_and_gaps_are_reported():
    envs = EnvelopeFactory("r", "kasmina")
    a, b, c = _tr(envs, 1, "DORMANT", "GERMINATED"), _tr(envs, 1, "GERMINATED", "LOADING"), _tr(envs, 1, "LOADING",
                                                                                                  "TRAINING")
    view = RunView("r")
    for ev in (a, a, b):
        view.apply(ev)
    assert view.seeds == {"seed/0/1": "LOADING"} and view.duplicates == 1 and view.germinated == 1
    gap = RunView("r")
    gap.apply(a)
    gap.apply(c)  # b never arrived
    assert gap.seeds["seed/0/1"] == "GERMINATED" and gap.gaps and "expected 2" in gap.gaps[0]


def test_other_runs_are_ignored_and_rollbacks_rewind_epochs():
    envs = EnvelopeFactory("r", "tolaria")
    other = EnvelopeFactory("other", "tolaria")
    view = RunView("r")
    for n in range(1, 6):
        view.apply(_epoch(envs, n))
    view.apply(_epoch(other, 99))
    view.apply(RollbackPerformed(envelope=envs.next("run/r"), from_epoch=5, to_epoch=3, checkpoint_id="c",
                                 trigger="nan"))
    assert sorted(view.epochs) == [1, 2, 3]
    assert any(line["kind"] == "rollback" for line in view.story)

"""Stop signals held to a training loop's safe points: recorded while held, raised at the next stop point (or at
once when one already waits, or outside a hold); a real SIGTERM mid-publish leaves the run's log gapless."""

from __future__ import annotations

import os
import signal

import pytest

from esper_runtime.exceptions import Terminated
from esper_runtime.stops import held, stop, stop_point


def test_a_stop_waits_for_the_next_stop_point_while_held():
    with pytest.raises(Terminated) as raised:
        with held():
            stop(signal.SIGTERM)  # recorded, not raised
            stop_point_reached = True
            stop_point()
    assert stop_point_reached and raised.value.signum == signal.SIGTERM and raised.value.code == 128 + 15
    stop_point()  # taken: nothing waits any more


def test_a_stop_still_waiting_is_raised_when_the_hold_ends():
    with pytest.raises(Terminated):
        with held():
            stop(signal.SIGINT)
    stop_point()


def test_a_second_stop_or_one_outside_a_hold_is_raised_at_once():
    with held():
        stop(signal.SIGTERM)
        with pytest.raises(Terminated):
            stop(signal.SIGTERM)  # asked twice: meant
        stop_point()  # the first was taken with the second
    with pytest.raises(Terminated, match="stopped by SIGINT"):
        stop(signal.SIGINT)


def test_a_sigterm_mid_publish_leaves_no_gap_in_the_run(library, publisher):
    """The signal lands after an event's envelope is numbered and before it is sent (the publisher is where the
    handler runs): the event still goes out, the run stops at the next epoch, its RunFailed numbered after it."""
    from esper_runtime.run.pipeline import _terminate_as_exit
    from streams.contracts import EpochCompleted

    from .tolaria.test_sdk_and_run_events import _run_events
    from .tolaria.test_training_run import _run

    class SignalledAtEpoch3:
        def __init__(self, inner):
            self.inner = inner

        def publish(self, event):
            if isinstance(event, EpochCompleted) and event.epoch == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler here, before the next line
            self.inner.publish(event)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    model, tamiyo, trainer = _run(library, publisher)
    trainer.publisher = SignalledAtEpoch3(publisher)
    with _terminate_as_exit(), pytest.raises(Terminated):
        trainer.train()
    folded, events = _run_events(publisher, trainer.run_id)
    assert folded.status == "failed" and "stopped by SIGTERM" in folded.failure
    assert folded.gaps == [] and folded.duplicates == 0 and max(folded.epochs) == 3
    own = [ev for ev in events if ev.envelope.originator_id == f"run/{trainer.run_id}"]  # across topics: no order
    assert type(max(own, key=lambda ev: ev.envelope.originator_version)).__name__ == "RunFailed"

"""Stop signals, held to a training loop's safe points.

A scheduler's SIGTERM (or a Ctrl-C) raised as an exception wherever the main thread happens to be can land between
an event's envelope being numbered and its being produced: the run's next event (its ``RunFailed``) then leaves a
gap in that sequence for good, and every later replay of the run reports it. So while a training loop holds stops
(``held()``), a signal is recorded and raised as ``Terminated`` at the loop's next safe point (``stop_point()``:
between steps, between epochs, or when the loop ends); a second signal while one waits is raised at once (a user
who presses Ctrl-C twice means it). Elsewhere, and in any thread but the main one, a stop is raised where it lands.

``stop(signum)`` is the body of the handler a command installs (``esper run`` installs it for SIGTERM and SIGINT);
without one, nothing here changes how a signal behaves.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

from esper_runtime.exceptions import Terminated

__all__ = ["stop", "held", "stop_point"]


class _Stops:
    pending: int | None = None  # the signal waiting for a safe point
    holding: int = 0  # held() depth in the main thread


_stops = _Stops()


def stop(signum: int) -> None:
    """A stop signal arrived (called in the main thread, from its handler): recorded while a loop holds stops and
    none is waiting yet, raised as ``Terminated`` otherwise."""
    if _stops.holding and _stops.pending is None:
        _stops.pending = signum
        return
    _stops.pending = None
    raise Terminated(signum)


def stop_point() -> None:
    """Raise the stop that waits, if one does: call where the loop may stop without leaving anything half done."""
    if _stops.pending is not None:
        signum, _stops.pending = _stops.pending, None
        raise Terminated(signum)


@contextmanager
def held():
    """Inside, a stop signal waits for the next ``stop_point()``, and one still waiting is raised on the way out.
    Only the main thread (where Python runs signal handlers) holds; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _stops.holding += 1
    try:
        yield
    finally:
        _stops.holding -= 1
    stop_point()

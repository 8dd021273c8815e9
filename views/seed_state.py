"""A seed's current state, folded from its ``SeedLifecycleTransition`` events: the one rule every reader shares.

``esper replay`` (through ``RunView``) and the seed-state materializer (the processors' app) both call ``fold_seed``,
so a replay and the live compacted state topic agree by construction, and a test can hold them to it. Events of a
seed apply strictly in ``originator_version`` order: an old version (or a redelivered one) is a duplicate, a version
that skips ahead is a gap — reported, never applied.
"""

from __future__ import annotations

from typing import Any

__all__ = ["fold_seed", "seed_key", "APPLIED", "DUPLICATE", "GAP"]

APPLIED, DUPLICATE, GAP = "applied", "duplicate", "gap"


def seed_key(run_id: str, originator_id: str) -> str:
    """The state topic's key for a seed: runs share seed names, so the run is part of it."""
    return f"{run_id}|{originator_id}"


def fold_seed(current: dict | None, ev: Any) -> tuple[str, dict | None]:
    """(outcome, new state) for a transition event applied to a seed's ``current`` state (None: never seen).

    The new state is None unless the outcome is ``APPLIED``. States are plain JSON-able dicts: they are what the
    compacted state topic holds.
    """
    env = ev.envelope
    expected = (current["version"] if current else 0) + 1
    if env.originator_version < expected:
        return DUPLICATE, None
    if env.originator_version > expected:
        return GAP, None
    return APPLIED, {
        "run_id": env.run_id,
        "seed": env.originator_id,
        "state": ev.to_state.value,
        "version": env.originator_version,
        "epoch": ev.epoch,
        "kernel_artifact_id": ev.kernel_artifact_id,
        "reason": ev.reason,
        "event_id": env.event_id,
        "occurred_at_ms": int(env.occurred_at.timestamp() * 1000),
    }

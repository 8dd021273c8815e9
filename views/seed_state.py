"""A seed's current state, folded from its ``SeedLifecycleTransition`` events: the one rule every reader shares.

``esper replay`` (through ``RunView``) and the seed-state materializer (the processors' app) both call ``fold_seed``
(the materializer on the decoded record, ``fold_seed_record``: the same rule, ``_fold``),
so a replay and the live compacted state topic agree by construction, and a test can hold them to it. Events of a
seed apply strictly in ``originator_version`` order: an old version (or a redelivered one) is a duplicate, a version
that skips ahead is a gap — reported, never applied.
"""

from __future__ import annotations

from typing import Any

__all__ = ["fold_seed", "fold_seed_record", "seed_key", "APPLIED", "DUPLICATE", "GAP"]

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
    return _fold(current, env.run_id, env.originator_id, env.originator_version, ev.to_state.value, ev.epoch,
                 ev.kernel_artifact_id, ev.reason, env.event_id, env.occurred_at)


def fold_seed_record(current: dict | None, record: dict) -> tuple[str, dict | None]:
    """``fold_seed`` for the decoded record (Avro data: enums as strings) instead of the generated event: the
    materializer's path, which spares a conversion per event (building the typed event costs more than the decode)."""
    env = record["envelope"]
    return _fold(current, env["run_id"], env["originator_id"], env["originator_version"], record["to_state"],
                 record["epoch"], record["kernel_artifact_id"], record["reason"], env["event_id"], env["occurred_at"])


def _fold(current, run_id, seed, version, to_state, epoch, kernel, reason, event_id, occurred_at):
    expected = (current["version"] if current else 0) + 1
    if version < expected:
        return DUPLICATE, None
    if version > expected:
        return GAP, None
    return APPLIED, {
        "run_id": run_id,
        "seed": seed,
        "state": to_state,
        "version": version,
        "epoch": epoch,
        "kernel_artifact_id": kernel,
        "reason": reason,
        "event_id": event_id,
        "occurred_at_ms": int(occurred_at.timestamp() * 1000),
    }

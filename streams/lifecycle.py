"""The lifecycle's state sets, defined once beside the generated ``SeedState`` (appendix B): Kasmina's controller,
Tamiyo, the run view, the API, Nissa's alerts and Simic all read these instead of keeping their own lists."""

from __future__ import annotations

from streams.contracts import SeedState

__all__ = ["IN_PROGRESS", "OUTCOMES", "LOCKED", "CHILD_BEARING", "IDLE", "sql_list"]

S = SeedState
# an adaptation under way: germinated and not yet ended
IN_PROGRESS = frozenset({S.GERMINATED, S.LOADING, S.TRAINING, S.GRAFTING, S.STABILIZATION, S.EVALUATING,
                         S.FINE_TUNING})
# where an adaptation ends: the outcome its field report carries
OUTCOMES = frozenset({S.FOSSILIZED, S.CULLED, S.CANCELLED, S.ROLLED_BACK})
# no command moves a seed out of these (a rollback locks, a fossil is for good)
LOCKED = frozenset({S.FOSSILIZED, S.ROLLED_BACK})
# the seed holds a loaded child module (training in isolation, on the path, or fossilized)
CHILD_BEARING = frozenset({S.TRAINING, S.GRAFTING, S.STABILIZATION, S.EVALUATING, S.FINE_TUNING, S.FOSSILIZED})
# no child and nothing under way: free to grow again (a CULLED seed after its embargo)
IDLE = frozenset({S.DORMANT, S.CULLED, S.CANCELLED})


def sql_list(states) -> str:
    """``('A', 'B')`` for a ClickHouse ``IN``, in the enum's order."""
    return "(" + ", ".join(f"'{s.value}'" for s in SeedState if s in states) + ")"

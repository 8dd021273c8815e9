"""The seed lifecycle of appendix B: states, commands, and the only transitions allowed.

Tamiyo commands transitions at epoch boundaries. Two transitions are Kasmina's own, because their trigger is an
outcome rather than a decision: the result of LOADING (TRAINING or GRAFTING on success, CULLED on failure), and
ERROR_RECOVERY when a loaded kernel raises at run time (the step must complete, so that cannot wait).
"""

from __future__ import annotations

from enum import IntEnum

from streams.contracts import SeedState
from streams.lifecycle import CHILD_BEARING, LOCKED, OUTCOMES

__all__ = ["SeedState", "Code", "Command", "COMMANDS", "next_state", "TERMINAL", "CHILD_STATES", "OUTCOME_CODES"]


class Code(IntEnum):
    """uint8 codes of the state tensor (the order of the Avro enum)."""

    DORMANT = 0
    GERMINATED = 1
    LOADING = 2
    TRAINING = 3
    GRAFTING = 4
    STABILIZATION = 5
    EVALUATING = 6
    FINE_TUNING = 7
    FOSSILIZED = 8
    CULLED = 9
    CANCELLED = 10
    ROLLED_BACK = 11
    ERROR_RECOVERY = 12

    @property
    def state(self) -> SeedState:
        return SeedState(self.name)


if [c.name for c in Code] != [s.value for s in SeedState]:
    raise RuntimeError("kasmina Code must list the SeedState Avro enum's symbols in order")


class Command:
    REQUEST_GERMINATION = "request_germination"
    PROMOTE = "promote"  # GERMINATED -> LOADING (then Kasmina loads: TRAINING / GRAFTING / CULLED)
    ADVANCE = "advance"  # the next state along the success path
    CULL = "cull"
    CANCEL = "cancel_germination"
    FOSSILIZE = "fossilize"
    RESET = "reset"  # CULLED / CANCELLED -> DORMANT (after the embargo for CULLED)
    ROLLBACK = "rollback"  # any live state -> ROLLED_BACK (a hard lock)


COMMANDS = {v for k, v in vars(Command).items() if k.isupper()}

# (state, command) -> target; "trainable" picks between two targets where the table forks on the kernel kind.
_TABLE: dict[tuple[Code, str], Code | tuple[Code | None, Code]] = {
    (Code.DORMANT, Command.REQUEST_GERMINATION): Code.GERMINATED,
    (Code.GERMINATED, Command.PROMOTE): Code.LOADING,
    (Code.GERMINATED, Command.CANCEL): Code.CANCELLED,
    (Code.TRAINING, Command.ADVANCE): Code.GRAFTING,
    (Code.TRAINING, Command.CULL): Code.CULLED,
    (Code.TRAINING, Command.CANCEL): Code.CANCELLED,
    (Code.GRAFTING, Command.ADVANCE): Code.STABILIZATION,
    (Code.STABILIZATION, Command.ADVANCE): Code.EVALUATING,
    (Code.EVALUATING, Command.ADVANCE): (Code.FINE_TUNING, Code.FOSSILIZED),  # (trainable, fixed-function)
    (Code.EVALUATING, Command.FOSSILIZE): (None, Code.FOSSILIZED),  # a trainable kernel fine-tunes first
    (Code.EVALUATING, Command.CULL): Code.CULLED,
    (Code.FINE_TUNING, Command.ADVANCE): Code.FOSSILIZED,
    (Code.FINE_TUNING, Command.FOSSILIZE): Code.FOSSILIZED,
    (Code.FINE_TUNING, Command.CULL): Code.CULLED,
    (Code.CULLED, Command.RESET): Code.DORMANT,
    (Code.CANCELLED, Command.RESET): Code.DORMANT,
    (Code.ERROR_RECOVERY, Command.CULL): Code.CULLED,
}
# Kasmina's own outcome transitions (not commands).
LOAD_OUTCOMES = {Code.TRAINING, Code.GRAFTING, Code.CULLED}

# the lifecycle's sets (``streams.lifecycle``) as codes of the state tensor
TERMINAL = frozenset(Code[s.value] for s in LOCKED)
CHILD_STATES = frozenset(Code[s.value] for s in CHILD_BEARING)  # forward differs from identity, or the child trains
OUTCOME_CODES = frozenset(Code[s.value] for s in OUTCOMES)
# Commands that need the seed to have signalled is_ready_for_transition.
NEEDS_READY = {(Code.TRAINING, Command.ADVANCE), (Code.GRAFTING, Command.ADVANCE),
               (Code.STABILIZATION, Command.ADVANCE), (Code.EVALUATING, Command.ADVANCE),
               (Code.EVALUATING, Command.FOSSILIZE)}


def next_state(state: Code, command: str, trainable: bool) -> Code | None:
    """The target of ``command`` from ``state``, or None when appendix B does not allow it."""
    if command == Command.ROLLBACK:
        return None if state in TERMINAL else Code.ROLLED_BACK
    target = _TABLE.get((state, command))
    if isinstance(target, tuple):
        return target[0] if trainable else target[1]
    return target

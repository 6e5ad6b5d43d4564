"""The lifecycle: one ordered table of the migration's states. The single source the CLI, `plan`, `rollback --to`,
`rehearse`, `status`, the runbooks, the flag reader and the tests read; no other module spells a state sequence
(tests/test_structure.py fails if one does).

Each stage names the command that enters it from the stage before, which side the application reads and writes
there, and what keeps the two sides in step. Rolling back leaves a state for the one before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from migrator.errors import BadInputError, WrongState

Side = Literal["legacy", "split"]


@dataclass(frozen=True)
class Stage:
    state: str
    # The command that enters this state from the one before (None for the start).
    enter: str | None
    reads: Side
    writes: Side
    sync: str
    # The split tables hold every legacy row (copied or quarantined): a full validation applies.
    split_complete: bool = False
    # The legacy table has been renamed to its archive.
    archived: bool = False
    # The archive has been dropped: nothing is left to roll back to.
    dropped: bool = False

    @property
    def past_legacy(self) -> bool:
        """The legacy table is no longer under its name: archived, or dropped with its archive."""
        return self.archived or self.dropped

    @property
    def reversible(self) -> bool:
        """Whether `rollback` can leave this state."""
        return not self.dropped


STAGES: tuple[Stage, ...] = (
    Stage("legacy", None, "legacy", "legacy", "none"),
    Stage("dual_write", "expand", "legacy", "legacy", "forward triggers legacy -> split"),
    Stage("backfilled", "backfill", "legacy", "legacy", "forward", split_complete=True),
    Stage("validated", "validate", "legacy", "legacy", "forward", split_complete=True),
    Stage("read_new", "switch-reads", "split", "legacy", "forward", split_complete=True),
    Stage(
        "write_new",
        "switch-writes",
        "split",
        "split",
        "both ways (reverse split -> legacy, forward kept)",
        split_complete=True,
    ),
    Stage("contracted", "contract", "split", "split", "none; legacy archived", archived=True),
    Stage(
        "finalized",
        "finalize",
        "split",
        "split",
        "none; archive dropped, key sequence owned by the base table",
        dropped=True,
    ),
)

STATES: tuple[str, ...] = tuple(s.state for s in STAGES)
START = STATES[0]
# The phases, in order: the commands that move the migration forward.
PHASE_NAMES: tuple[str, ...] = tuple(s.enter for s in STAGES if s.enter is not None)
# The last state a rollback can leave, and every state up to it: what `rollback --to`, rehearse and the
# advance-rollback-advance tests walk.
LAST_REVERSIBLE = [s.state for s in STAGES if s.reversible][-1]
REVERSIBLE: tuple[str, ...] = STATES[: STATES.index(LAST_REVERSIBLE) + 1]
READS_SPLIT = frozenset(s.state for s in STAGES if s.reads == "split")
WRITES_SPLIT = frozenset(s.state for s in STAGES if s.writes == "split")

_BY_STATE = {s.state: s for s in STAGES}


def stage(state: str) -> Stage:
    try:
        return _BY_STATE[state]
    except KeyError:
        raise BadInputError(f"unknown state {state!r}", hint=f"use one of: {', '.join(STATES)}") from None


def index(state: str) -> int:
    return STATES.index(stage(state).state)


def next_command(state: str) -> str | None:
    """The command that leaves `state` forward (None at the end): the hint an out-of-order command prints."""
    i = index(state)
    return STAGES[i + 1].enter if i + 1 < len(STAGES) else None


NO_ROLLBACK = "no rollback from {state}: the archive is gone"


def require_reversible(state: str) -> None:
    """Refuse, plainly, a rollback from a state that has none (exit 1)."""
    if not stage(state).reversible:
        raise WrongState(
            NO_ROLLBACK.format(state=state),
            hint="the split tables are the only copy of the data now; restore a backup (or the `finalize --dump` "
            "file) to go back",
        )


def previous(state: str) -> str | None:
    """The state a rollback from `state` returns to (None at the start); refuses a state with no rollback."""
    require_reversible(state)
    i = index(state)
    return STATES[i - 1] if i > 0 else None


def entered_by(phase: str) -> str:
    """The state the phase (command) `phase` enters."""
    for s in STAGES:
        if s.enter == phase:
            return s.state
    raise BadInputError(f"unknown phase {phase!r}", hint=f"use one of: {', '.join(PHASE_NAMES)}")


def left_by(phase: str) -> str:
    """The state the phase `phase` starts from (and, where it has one, the one its rollback returns to)."""
    i = index(entered_by(phase))
    assert i > 0
    return STATES[i - 1]


def between(first: str, last: str) -> tuple[str, ...]:
    """The states from `first` to `last`, both included, in lifecycle order."""
    return STATES[index(first) : index(last) + 1]


def past_legacy(state: str) -> bool:
    """The legacy table is no longer under its name in `state` (archived, or dropped with its archive)."""
    return stage(state).past_legacy


def reads_split(state: str) -> bool:
    return state in READS_SPLIT


def writes_split(state: str) -> bool:
    return state in WRITES_SPLIT

"""Moving between states: which phase's rollback undoes which state, and `rollback [--to STATE]`."""

from __future__ import annotations

from collections.abc import Callable

from migrator import state
from migrator.errors import BadInputError, WrongState
from migrator.phases import backfill, contract, expand, switch_reads, switch_writes, validate
from migrator.phases.base import Context

# state -> (the state its rollback returns to, the function that does it)
ROLLBACKS: dict[str, tuple[str, Callable[[Context], None]]] = {
    "dual_write": ("legacy", expand.rollback),
    "backfilled": ("dual_write", backfill.rollback),
    "validated": ("backfilled", validate.rollback),
    "read_new": ("validated", switch_reads.rollback),
    "write_new": ("read_new", switch_writes.rollback),
    "contracted": ("write_new", contract.rollback),
}


def current_state(ctx: Context) -> str:
    with ctx.require_db().connect(autocommit=True) as conn:
        return state.read(conn, ctx.spec).state


def rollback(ctx: Context, to: str | None = None) -> list[tuple[str, str]]:
    """Roll back one state, or step by step down to `to`; returns the (from, to) steps taken."""
    current = current_state(ctx)
    if to is not None and to not in state.STATES:
        raise BadInputError(f"unknown state {to!r}", hint=f"use one of: {', '.join(state.STATES)}")
    if current == "legacy":
        raise WrongState(
            "the migration is in legacy: there is nothing to roll back", hint="run `migrator expand` to start"
        )
    target = to if to is not None else ROLLBACKS.get(current, (None,))[0]
    if target is None or state.STATES.index(target) >= state.STATES.index(current):
        raise BadInputError(
            f"cannot roll back from {current} to {target}", hint="--to names an earlier state than the current one"
        )
    steps: list[tuple[str, str]] = []
    while current != target:
        if current not in ROLLBACKS:
            raise WrongState(f"rollback from {current} is not available in this version")
        previous, fn = ROLLBACKS[current]
        fn(ctx)
        steps.append((current, previous))
        current = previous
    return steps

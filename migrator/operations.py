"""What spans the phases: the phase registry (lifecycle order), `migrator plan` for every phase, and
`rollback [--to STATE]`, which walks the lifecycle back one state at a time through each phase's rollback."""

from __future__ import annotations

from typing import Any

import psycopg

from migrator import lifecycle, state
from migrator.engine.actions import Action, script
from migrator.engine.context import Context
from migrator.errors import BadInputError, WrongState
from migrator.phases.backfill import Backfill
from migrator.phases.base import Phase, RollbackOptions
from migrator.phases.contract import Contract
from migrator.phases.expand import Expand
from migrator.phases.finalize import Finalize
from migrator.phases.switch_reads import SwitchReads
from migrator.phases.switch_writes import SwitchWrites
from migrator.phases.validate import Validate
from migrator.spec import Spec

_CLASSES: dict[str, type[Phase[Any]]] = {
    cls.name: cls for cls in (Expand, Backfill, Validate, SwitchReads, SwitchWrites, Contract, Finalize)
}
# Every phase, in lifecycle order (the table decides the order; this only finds each name's class).
PHASES: dict[str, type[Phase[Any]]] = {name: _CLASSES[name] for name in lifecycle.PHASE_NAMES}


def phase_for(state_: str) -> type[Phase[Any]]:
    """The phase whose apply entered `state_` (and whose rollback leaves it)."""
    enter = lifecycle.stage(state_).enter
    if enter is None:
        raise WrongState(f"no phase enters {state_}")
    return PHASES[enter]


def plans(
    spec: Spec, only: list[str] | None = None, *, lock_timeout: float | None = None
) -> list[tuple[str, list[Action]]]:
    """Each phase's actions as `migrator plan` prints them: from the spec alone, default options."""
    ctx = Context(spec)
    if lock_timeout is not None:
        ctx.lock_timeout = lock_timeout
    return [(name, cls().plan(ctx)) for name, cls in PHASES.items() if only is None or name in only]


def live_plans(
    ctx: Context, only: list[str] | None = None, options: dict[str, Any] | None = None
) -> list[tuple[str, list[Action]]]:
    """Each phase's actions as it would run them on this database now: the catalog fills in what the offline
    plan leaves as comments (grants, dependents, CHECKs, policies). Read-only: every plan runs in a READ ONLY
    transaction that is rolled back. A phase whose plan needs what an earlier phase creates is planned offline."""
    out: list[tuple[str, list[Action]]] = []
    with ctx.require_db().connect(autocommit=True) as conn:
        conn.read_only = True
        for name, cls in PHASES.items():
            if only is not None and name not in only:
                continue
            phase = cls((options or {}).get(name))
            try:
                with conn.transaction(force_rollback=True):
                    out.append((name, phase.plan(ctx, conn)))
            except psycopg.Error:
                out.append((name, phase.plan(ctx)))
    return out


def render_script(phases: list[tuple[str, list[Action]]], *, lock_timeout: float | None = None) -> str:
    parts = []
    for name, actions in phases:
        parts.append(f"-- ===== phase: {name} ({len(actions)} steps) =====\n")
        parts.append(script(actions, lock_timeout))
    return "\n".join(parts)


def current_state(ctx: Context) -> str:
    with ctx.require_db().connect(autocommit=True) as conn:
        return state.read(conn, ctx.spec).state


def rollback(ctx: Context, to: str | None = None, opts: RollbackOptions | None = None) -> list[tuple[str, str]]:
    """Roll back one state, or step by step down to `to`; returns the (from, to) steps taken."""
    opts = opts or RollbackOptions()
    if to is not None:
        lifecycle.stage(to)  # BadInputError naming the states when `to` is not one
    current = current_state(ctx)
    lifecycle.require_reversible(current)  # finalized: "no rollback from finalized: the archive is gone"
    if current == lifecycle.START:
        raise WrongState(
            f"the migration is in {current}: there is nothing to roll back",
            hint=f"run `migrator {lifecycle.next_command(current)}` to start",
        )
    target = to if to is not None else lifecycle.previous(current)
    if target is None or lifecycle.index(target) >= lifecycle.index(current):
        raise BadInputError(
            f"cannot roll back from {current} to {target}", hint="--to names an earlier state than the current one"
        )
    steps: list[tuple[str, str]] = []
    while current != target:
        phase = phase_for(current)()
        phase.rollback(ctx, opts)
        steps.append((current, phase.left))
        current = phase.left
    return steps

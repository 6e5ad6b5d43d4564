"""`migrator plan`: every phase's actions in order, rendered from the spec alone."""

from __future__ import annotations

from collections.abc import Callable

from migrator.phases import backfill, contract, expand, switch_reads, switch_writes, validate
from migrator.phases.base import Action, Context, script
from migrator.spec import Spec

PHASES: dict[str, Callable[[Context], list[Action]]] = {
    "expand": expand.plan,
    "backfill": backfill.plan,
    "validate": validate.plan,
    "switch-reads": switch_reads.plan,
    "switch-writes": switch_writes.plan,
    "contract": contract.plan,
}


def plans(
    spec: Spec, only: list[str] | None = None, *, lock_timeout: float | None = None
) -> list[tuple[str, list[Action]]]:
    ctx = Context(spec)
    if lock_timeout is not None:
        ctx.lock_timeout = lock_timeout
    return [(name, fn(ctx)) for name, fn in PHASES.items() if only is None or name in only]


def render_script(phases: list[tuple[str, list[Action]]], *, lock_timeout: float | None = None) -> str:
    parts = []
    for name, actions in phases:
        parts.append(f"-- ===== phase: {name} ({len(actions)} steps) =====\n")
        parts.append(script(actions, lock_timeout))
    return "\n".join(parts)

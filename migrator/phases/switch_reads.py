"""switch-reads (validated -> read_new): applications start reading the split tables.

Only a flag moves: writes still go to legacy and the forward triggers keep the split side in step inside each
transaction, so a read from either side sees the same row. `--percent P` sends P% of request keys to the split
side (deterministically per key, see migrator.flags); raising P later is allowed.
"""

from __future__ import annotations

from migrator import guards, state
from migrator.sqlgen import names, triggers
from migrator.errors import BadInputError
from migrator.phases.base import Action, Context, Report, announce, run_actions
from migrator.sqlgen.compose import literal, render

name = "switch-reads"


def percent(ctx: Context) -> int:
    value = int(ctx.options.get("percent", 100))
    if not 1 <= value <= 100:
        raise BadInputError(f"--percent {value} is out of range", hint="use 1..100")
    return value


def plan(ctx: Context) -> list[Action]:
    spec = ctx.spec
    return [
        Action(
            "set the read flag (applications listening on migrator_flags pick it up at once)",
            render(
                "state_set_read_percent",
                state=names.state(spec, "state"),
                migration=literal(spec.migration_name),
                percent=literal(percent(ctx) if "percent" in ctx.options else 100),
            ),
        )
    ]


def apply(ctx: Context) -> None:
    """Guard: a fresh comparison is clean. Then move the flag (or raise the percentage in read_new)."""
    p = percent(ctx)
    db = ctx.require_db()
    with state.transition(db, ctx.spec, "switch-reads", ("validated", "read_new")) as tr:
        if tr.start.state == "read_new" and p < tr.start.read_percent:
            raise BadInputError(
                f"reads are at {tr.start.read_percent}%; --percent {p} would lower them",
                hint="use `migrator rollback` to send reads back to legacy",
            )
        guards.require_in_sync(ctx.require_db(), ctx.spec, "switch-reads")
        tr.finish("read_new", reason=ctx.options.get("reason"), details={"read_percent": p}, flags={"read_percent": p})


def verify(ctx: Context) -> Report:
    report = Report(name)
    with ctx.require_db().connect(autocommit=True) as conn:
        st = state.read(conn, ctx.spec)
    report.check(
        st.state == "read_new" and st.read_percent > 0,
        f"reads on split at {st.read_percent}%",
        f"state {st.state}, read percent {st.read_percent}",
    )
    return report


def rollback(ctx: Context) -> None:
    """read_new -> validated: reads go back to legacy. Writes never left legacy (or, after a rollback from
    write_new, the reverse triggers left on carried them there); those triggers are removed now."""
    with state.transition(ctx.require_db(), ctx.spec, "rollback", ("read_new",)) as tr:
        run_actions(
            tr.conn, triggers.drop_reverse_actions(ctx.spec), on_step=announce(ctx), lock_timeout=ctx.lock_timeout
        )
        tr.finish("validated", reason=ctx.options.get("reason"), flags={"read_percent": 0})

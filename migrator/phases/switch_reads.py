"""switch-reads (validated -> read_new): applications start reading the split tables.

Only a flag moves: writes still go to legacy and the forward triggers keep the split side in step inside each
transaction, so a read from either side sees the same row. `--percent P` sends P% of request keys to the split
side (deterministically per key, see migrator.flags); raising P later is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from migrator import guards, state
from migrator.engine.actions import Action, run_actions
from migrator.engine.context import Context, Report
from migrator.errors import BadInputError
from migrator.phases.base import Phase, RollbackOptions
from migrator.sqlgen import grants, names, triggers
from migrator.sqlgen.compose import ident, join, literal, render
from migrator.sqlgen.ddl import offline_sequence, resolve_sequence


@dataclass(frozen=True)
class Options:
    """The share of request keys that read the split tables, 1..100."""

    percent: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.percent <= 100:
            raise BadInputError(f"--percent {self.percent} is out of range", hint="use 1..100")


class SwitchReads(Phase[Options]):
    name = "switch-reads"
    options_type = Options

    def plan(self, ctx: Context, conn: psycopg.Connection[Any] | None = None) -> list[Action]:
        spec = ctx.spec
        return [
            *self.grant_actions(ctx, conn),
            Action(
                "set the read flag (applications listening on migrator_flags pick it up at once)",
                render(
                    "state_set_read_percent",
                    state=names.state(spec, "state"),
                    migration=literal(spec.migration_name),
                    percent=literal(self.options.percent),
                ),
            ),
        ]

    def grant_actions(self, ctx: Context, conn: psycopg.Connection[Any] | None) -> list[Action]:
        """The application's roles may now read (and later write) the split tables: mirror their legacy grants."""
        spec = ctx.spec
        legacy = grants.table_grants(conn, names.source(spec)) if conn is not None else None
        statements = grants.mirror_statements(legacy, [names.split(spec, t) for t in spec.split_tables()])
        sequence = resolve_sequence(conn, spec) if conn is not None else offline_sequence(spec)
        if sequence is not None:
            statements += grants.sequence_statements(legacy, ident(spec.source.schema_, sequence))
        if not statements:
            return []
        where = " (read from the catalog when it runs)" if conn is None else ""
        description = f"grant each role its privileges on {spec.source.table} on the split tables too{where}"
        return [Action(description, join(statements, ";\n"))]

    def apply(self, ctx: Context) -> None:
        """Guard: a fresh comparison is clean. Then move the flag (or raise the percentage in read_new)."""
        p = self.options.percent
        db = ctx.require_db()
        with state.transition(db, ctx.spec, self.name, (self.left, self.entered)) as tr:
            if tr.start.state == self.entered and p < tr.start.read_percent:
                raise BadInputError(
                    f"reads are at {tr.start.read_percent}%; --percent {p} would lower them",
                    hint="use `migrator rollback` to send reads back to legacy",
                )
            guards.require_in_sync(db, ctx.spec, self.name)
            guards.require_no_open_quarantine(tr.conn, ctx.spec, self.name)
            run_actions(
                tr.conn, self.grant_actions(ctx, tr.conn), on_step=ctx.announce(), lock_timeout=ctx.lock_timeout
            )
            tr.finish(self.entered, reason=ctx.reason, details={"read_percent": p}, flags={"read_percent": p})

    def verify(self, ctx: Context) -> Report:
        report = Report(self.name)
        with ctx.require_db().connect(autocommit=True) as conn:
            st = state.read(conn, ctx.spec)
        report.check(
            st.state == self.entered and st.read_percent > 0,
            f"reads on split at {st.read_percent}%",
            f"state {st.state}, read percent {st.read_percent}",
        )
        return report

    def rollback(self, ctx: Context, opts: RollbackOptions) -> None:
        """Reads go back to legacy. Writes never left legacy (or, after a rollback from
        write_new, the reverse triggers left on carried them there); those triggers are removed now."""
        with state.transition(ctx.require_db(), ctx.spec, "rollback", (self.entered,)) as tr:
            if guards.counting(tr.conn, ctx.spec, "split"):
                # Instances that have not seen the flag yet may still write the split tables; their writes reach
                # legacy only while the reverse sync is on, so it goes only once the split side has been quiet.
                guards.wait_for_quiet(
                    tr.conn, ctx.spec, "split", opts.quiet_period, opts.wait, "rollback", ctx.reporter.step
                )
            run_actions(
                tr.conn, triggers.drop_reverse_actions(ctx.spec), on_step=ctx.announce(), lock_timeout=ctx.lock_timeout
            )
            tr.finish(self.left, reason=ctx.reason, flags={"read_percent": 0})

"""switch-writes (read_new -> write_new): applications may now write the split tables.

Instances roll over one at a time, so for a while writes arrive on both sides. The forward triggers stay on
(an instance that has not seen the flag yet and still writes legacy loses nothing) and reverse triggers on
the split tables keep the legacy row complete for every split write; each side skips the rows its
counterpart is writing (the transaction-local setting migrator.origin). New ids come from the one legacy
sequence whichever side inserts, so no id is ever reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from migrator import guards, state
from migrator.engine.actions import Action, run_actions
from migrator.engine.context import Context, Report
from migrator.phases.base import Phase, RollbackOptions
from migrator.sqlgen import names, triggers
from migrator.sqlgen.ddl import legacy_before_triggers


@dataclass(frozen=True)
class Options:
    """switch-writes takes no options today."""


class SwitchWrites(Phase[Options]):
    name = "switch-writes"
    options_type = Options

    def plan(self, ctx: Context, conn: psycopg.Connection[Any] | None = None) -> list[Action]:
        # The legacy table's own BEFORE row triggers fire on the reverse sync's writes too; where it has any, each
        # reverse function writes their effect back to the split row (known from the catalog, so not offline).
        write_back = conn is not None and bool(legacy_before_triggers(conn, ctx.spec))
        # The forward sync marks its writes first, so the reverse triggers never copy them back.
        mark = triggers.forward_function_action(ctx.spec, mark_origin=True)
        return [mark, *triggers.reverse_actions(ctx.spec, write_back=write_back)]

    def apply(self, ctx: Context) -> None:
        """Guard: legacy equals split right before. Then reverse sync on, then the flag."""
        db = ctx.require_db()
        with state.transition(db, ctx.spec, self.name, (self.left,)) as tr:
            guards.require_in_sync(db, ctx.spec, self.name)
            guards.require_no_open_quarantine(tr.conn, ctx.spec, self.name)
            run_actions(tr.conn, self.plan(ctx, tr.conn), on_step=ctx.announce(), lock_timeout=ctx.lock_timeout)
            with tr.conn.transaction():
                guards.mark_legacy_writes(tr.conn, ctx.spec)  # the quiet period starts now
            tr.finish(self.entered, reason=ctx.reason, flags={"read_percent": 100})

    def verify(self, ctx: Context) -> Report:
        report = Report(self.name)
        with ctx.require_db().connect(autocommit=True) as conn:
            names_ = [names.trigger_name_text(ctx.spec, kind) for _, kind, _ in triggers.reverse_tables(ctx.spec)]
            row = conn.execute(
                "SELECT count(*) FROM pg_trigger WHERE tgname = ANY (%s) AND tgenabled <> 'D'", [names_]
            ).fetchone()
        report.check(
            bool(row and row[0] == len(names_)),
            "reverse triggers enabled on every split table",
            "reverse triggers missing",
        )
        return report

    def rollback(self, ctx: Context, opts: RollbackOptions) -> None:
        """write_new -> read_new: legacy was kept complete by the reverse triggers; check that it equals split,
        then flip the flag so applications write legacy again.

        The reverse triggers stay on: instances that have not seen the flag yet still write the split tables, and
        those writes must reach legacy. They cost nothing once nobody writes split; `rollback` from read_new (or
        `contract`) removes them.
        """
        db = ctx.require_db()
        with state.transition(db, ctx.spec, "rollback", (self.entered,)) as tr:
            guards.require_in_sync(db, ctx.spec, "rollback")
            ctx.reporter.step("reverse sync stays on until the next rollback, for instances still writing split")
            tr.finish(self.left, reason=ctx.reason)

"""expand (legacy -> dual_write): create the split tables, their constraints and indexes.

Each DDL step runs in its own short transaction under SET LOCAL lock_timeout and is retried, so a busy legacy
table never queues the application behind our lock. Foreign keys are added NOT VALID and validated in a later
step (VALIDATE takes only a SHARE UPDATE EXCLUSIVE lock); indexes are built CONCURRENTLY. Every step knows how
to tell it is already done, so re-running expand after a crash part-way finishes the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from migrator import state
from migrator.db import scalar
from migrator.engine.actions import Action, run_actions
from migrator.engine.context import Context, Report
from migrator.errors import GuardFailed, OperationalError, TableDoesNotExist
from migrator.phases.base import Phase, RollbackOptions
from migrator.spec import Spec, split_table_columns
from migrator.sqlgen import names, triggers
from migrator.sqlgen.compose import as_text, join, literal, load, render
from migrator.sqlgen.ddl import resolve_sequence, table_actions


@dataclass(frozen=True)
class Options:
    """expand takes no options today (the DDL lock timeout is the context's)."""


def preflight(conn: psycopg.Connection[Any], spec: Spec) -> None:
    """Refuse to start when the database does not match the spec; name what is wrong and how to fix it."""
    version = conn.info.server_version
    if version < 140000:
        raise OperationalError(
            f"PostgreSQL {version // 10000} is too old", hint="migrator needs PostgreSQL 14 or newer"
        )
    legacy = as_text(names.source(spec))
    cols = dict(conn.execute(load("preflight_columns"), {"table": legacy}).fetchall())
    if not cols:
        raise TableDoesNotExist(
            f"legacy table {spec.source.schema_}.{spec.source.table} does not exist",
            hint="check [source] in the spec, or run `migrator seed` to create the demo schema",
        )
    missing = [c for c in spec.legacy_columns() if c not in cols]
    if missing:
        raise GuardFailed(
            f"legacy table {spec.source.table} has no column(s) {', '.join(missing)}",
            hint="fix the column names in the spec",
        )
    row = conn.execute(load("preflight_primary_key"), {"table": legacy}).fetchone()
    if not row or row[0] != [spec.pk]:
        raise GuardFailed(
            f"{spec.source.table}'s primary key is {row[0] if row else 'missing'}, the spec says [{spec.pk}]",
            hint="set source.primary_key to the table's single-column primary key",
        )
    expected = split_table_columns(spec)
    for table, want in expected.items():
        have = dict(conn.execute(load("preflight_columns"), {"table": as_text(names.split(spec, table))}).fetchall())
        if have and set(have) != want:
            raise GuardFailed(
                f"table {spec.target_schema}.{table} already exists with other columns ({', '.join(have)})",
                hint="rename or drop it, or choose another table name in the spec",
            )


def _empty_stale_action(spec: Spec) -> Action:
    """Split rows left by an earlier expand that was rolled back are stale (legacy writes were not synced
    meanwhile) and the backfill never overwrites: empty the split tables before the triggers go on. Nothing
    reads them before read_new, so this loses nothing. Once the trigger exists, their rows are live: skip."""
    tables = [names.split(spec, t) for t in spec.split_tables()]
    empty = join([sql.SQL("NOT EXISTS (SELECT 1 FROM {})").format(t) for t in tables], " AND ")
    trigger_on = sql.SQL("EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass({}) AND tgname = {})").format(
        literal(as_text(names.source(spec))), literal(names.trigger_name_text(spec, "forward"))
    )
    statement = join(
        [
            sql.SQL("TRUNCATE {}").format(join(tables)),
            sql.SQL("DELETE FROM {} WHERE migration = {}").format(
                names.state(spec, "quarantine"), literal(spec.migration_name)
            ),
            sql.SQL("DELETE FROM {} WHERE migration = {}").format(
                names.state(spec, "backfill_ranges"), literal(spec.migration_name)
            ),
        ],
        ";\n",
    )
    return Action(
        "empty split tables left over from an earlier, rolled-back expand (stale), and reset backfill/quarantine",
        statement,
        done_check=sql.SQL("SELECT ({}) OR ({})").format(empty, trigger_on),
    )


class Expand(Phase[Options]):
    """legacy -> dual_write: state schema, split tables, constraints, indexes, then the forward triggers."""

    name = "expand"
    options_type = Options

    def plan(self, ctx: Context, conn: psycopg.Connection[Any] | None = None) -> list[Action]:
        sequence = resolve_sequence(conn, ctx.spec) if conn is not None else "auto"
        return [
            state.schema_action(ctx.spec),
            *table_actions(ctx.spec, sequence),
            _empty_stale_action(ctx.spec),
            *triggers.forward_actions(ctx.spec),
        ]

    def apply(self, ctx: Context) -> None:
        with state.transition(ctx.require_db(), ctx.spec, self.name, (self.left,)) as tr:
            preflight(tr.conn, ctx.spec)
            actions = self.plan(ctx, tr.conn)
            run_actions(tr.conn, actions, on_step=ctx.announce(), lock_timeout=ctx.lock_timeout)
            report = self._verify(ctx, tr.conn)
            if not report.ok:
                raise GuardFailed("expand finished but its checks failed: " + "; ".join(report.failures))
            tr.finish(
                self.entered,
                reason=ctx.reason,
                details={"steps": len(actions), "spec": ctx.spec.model_dump(mode="json", by_alias=True)},
            )

    def verify(self, ctx: Context) -> Report:
        """Split tables exist, every FK is validated, every index valid, forward triggers enabled."""
        with ctx.require_db().connect(autocommit=True) as conn:
            return self._verify(ctx, conn)

    def _verify(self, ctx: Context, conn: psycopg.Connection[Any]) -> Report:
        spec = ctx.spec
        report = Report(self.name)
        for table in spec.split_tables():
            exists = bool(scalar(conn, "SELECT to_regclass(%s) IS NOT NULL", [as_text(names.split(spec, table))]))
            report.check(exists, f"table {table} exists", f"table {table} is missing")
        report.check_done(conn, table_actions(spec, None))
        enabled = dict(
            conn.execute(
                load("trigger_state"),
                {
                    "table": as_text(names.source(spec)),
                    "names": [
                        names.trigger_name_text(spec, "forward"),
                        names.trigger_name_text(spec, "forward_truncate"),
                    ],
                },
            ).fetchall()
        )
        report.check(
            len(enabled) == 2 and all(v != "D" for v in enabled.values()),
            "forward triggers enabled",
            f"forward triggers missing or disabled ({enabled or 'none'})",
        )
        return report

    def rollback_plan(self, ctx: Context, opts: RollbackOptions) -> list[Action]:
        """Detach the triggers and drop their functions; drop the split tables only when asked to."""
        spec = ctx.spec
        acts = [
            *triggers.drop_forward_actions(spec),
            Action(
                "drop forward functions",
                join(
                    [
                        render("drop_function", function=names.function_name(spec, "forward")),
                        render("drop_function", function=names.function_name(spec, "forward_truncate")),
                        sql.SQL("DROP FUNCTION IF EXISTS {}({}, text, text)").format(
                            names.function_name(spec, "sync"), names.source(spec)
                        ),
                    ],
                    ";\n",
                ),
            ),
        ]
        if opts.drop_tables:
            for table in reversed(spec.split_tables()):
                acts.append(Action(f"drop split table {table}", render("drop_table", table=names.split(spec, table))))
        return acts

    def rollback(self, ctx: Context, opts: RollbackOptions) -> None:
        """dual_write -> legacy: the application never depended on the split tables, so nothing can be lost."""
        with state.transition(ctx.require_db(), ctx.spec, "rollback", (self.entered,)) as tr:
            run_actions(tr.conn, self.rollback_plan(ctx, opts), on_step=ctx.announce(), lock_timeout=ctx.lock_timeout)
            kept = "dropped" if opts.drop_tables else "kept (drop them with --drop-tables)"
            ctx.reporter.step(f"split tables {kept}")
            tr.finish(self.left, reason=ctx.reason, details={"drop_tables": opts.drop_tables})

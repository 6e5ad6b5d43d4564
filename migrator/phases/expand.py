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

from migrator import doctor, preflight, state
from migrator.db import scalar, table_exists
from migrator.engine.actions import Action, run_actions
from migrator.engine.context import Context, Report
from migrator.errors import GuardFailed
from migrator.phases.base import Phase, RollbackOptions
from migrator.spec import Spec
from migrator.sqlgen import names, triggers
from migrator.sqlgen.compose import as_text, join, literal, load, render
from migrator.sqlgen.ddl import (
    check_actions,
    legacy_checks,
    legacy_row_security,
    resolve_sequence,
    row_security_actions,
    table_actions,
)

# The doctor checks whose failure means expand cannot succeed, or would succeed into a migration that cannot finish
# (contract must rename the table, the backfill must see every row). The others (sessions, replication, disk)
# describe the moment, not the setup: the long jobs' health signals handle those as they happen.
# Preflight runs first: a missing table (legacy, referenced) is its to report, with its own error.
BLOCKING_CHECKS = ("server_version", "primary_key", "ownership", "create", "name_collisions", "row_level_security")


def _doctor_gate(ctx: Context) -> None:
    """Refuse before any DDL when a blocking doctor check fails, naming each finding and its fix."""
    report = doctor.run(ctx.require_db(), ctx.spec, checks=BLOCKING_CHECKS)
    failed = [f for f in report.findings if f.status == "fail"]
    if failed:
        lines = "; ".join(f"{f.message} (fix: {f.fix})" if f.fix else f.message for f in failed)
        raise GuardFailed(f"expand refused, nothing changed: {lines}", hint="`migrator doctor` shows every check")


@dataclass(frozen=True)
class Options:
    """expand takes no options today (the DDL lock timeout is the context's)."""


def _trigger_on(spec: Spec) -> sql.Composed:
    """True once the forward trigger exists: from then on the split rows are live and the generation has begun."""
    return sql.SQL("EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass({}) AND tgname = {})").format(
        literal(as_text(names.source(spec))), literal(names.trigger_name_text(spec, "forward"))
    )


def _record_action(spec: Spec) -> Action:
    """Record the split tables as migrator's: the only tables it will ever empty or drop (preflight has refused a
    table it did not create that holds rows; an empty one it takes over)."""
    rows = join(
        [sql.SQL("({}, 'table', {})").format(literal(spec.migration_name), literal(t)) for t in spec.split_tables()]
    )
    return Action(
        "record the split tables as created by migrator (the only tables it empties or drops)",
        sql.SQL("INSERT INTO {} (migration, kind, name) VALUES {} ON CONFLICT DO NOTHING").format(
            names.state(spec, "objects"), rows
        ),
    )


def _empty_stale_action(spec: Spec) -> Action:
    """Split rows left by an earlier expand that was rolled back are stale (legacy writes were not synced
    meanwhile) and the backfill never overwrites: empty the split tables before the triggers go on. Nothing
    reads them before read_new, so this loses nothing. Once the trigger exists, their rows are live: skip."""
    tables = [names.split(spec, t) for t in spec.split_tables()]
    empty = join([sql.SQL("NOT EXISTS (SELECT 1 FROM {})").format(t) for t in tables], " AND ")
    return Action(
        "empty split tables left over from an earlier, rolled-back expand (stale)",
        sql.SQL("TRUNCATE {}").format(join(tables)),
        done_check=sql.SQL("SELECT ({}) OR ({})").format(empty, _trigger_on(spec)),
    )


def _new_generation_action(spec: Spec) -> Action:
    """A new expand after a rollback is a new attempt: the earlier one's backfill ranges and quarantine are not
    its own (their keys and verdicts describe rows that changed since), so they are cleared before it begins."""
    owned = [names.state(spec, "quarantine"), names.state(spec, "backfill_ranges")]
    clear = [sql.SQL("DELETE FROM {} WHERE migration = {}").format(t, literal(spec.migration_name)) for t in owned]
    none = join(
        [
            sql.SQL("NOT EXISTS (SELECT 1 FROM {} WHERE migration = {})").format(t, literal(spec.migration_name))
            for t in owned
        ],
        " AND ",
    )
    return Action(
        "start a new generation: clear an earlier attempt's backfill ranges and quarantine",
        join(clear, ";\n"),
        done_check=sql.SQL("SELECT ({}) OR ({})").format(none, _trigger_on(spec)),
    )


def _earlier_attempt(conn: psycopg.Connection[Any], spec: Spec) -> dict[str, int]:
    """What an earlier attempt left in the state schema (the audit log of the new generation says it cleared it)."""
    out = {}
    for table in ("backfill_ranges", "quarantine"):
        if table_exists(conn, spec.state_schema, table):
            query = sql.SQL("SELECT count(*) FROM {} WHERE migration = %s").format(names.state(spec, table))
            out[table] = int(scalar(conn, query, [spec.migration_name]) or 0)
    return out


class Expand(Phase[Options]):
    """legacy -> dual_write: state schema, split tables, constraints, indexes, then the forward triggers."""

    name = "expand"
    options_type = Options

    def plan(self, ctx: Context, conn: psycopg.Connection[Any] | None = None) -> list[Action]:
        sequence = resolve_sequence(conn, ctx.spec) if conn is not None else "auto"
        return [
            state.schema_action(ctx.spec),
            *table_actions(ctx.spec, sequence),
            *(check_actions(ctx.spec, legacy_checks(conn, ctx.spec)[0]) if conn is not None else []),
            *(self._row_security(ctx.spec, conn) if conn is not None else []),
            _record_action(ctx.spec),
            _empty_stale_action(ctx.spec),
            _new_generation_action(ctx.spec),
            *triggers.forward_actions(ctx.spec),
        ]

    @staticmethod
    def _row_security(spec: Spec, conn: psycopg.Connection[Any]) -> list[Action]:
        enabled, forced, policies = legacy_row_security(conn, spec)
        return row_security_actions(spec, forced, policies) if enabled else []

    def apply(self, ctx: Context) -> None:
        with state.transition(ctx.require_db(), ctx.spec, self.name, (self.left,)) as tr:
            preflight.check(tr.conn, ctx.spec)
            _doctor_gate(ctx)
            earlier = _earlier_attempt(tr.conn, ctx.spec)
            actions = self.plan(ctx, tr.conn)
            run_actions(tr.conn, actions, on_step=ctx.announce(), lock_timeout=ctx.lock_timeout)
            report = self._verify(ctx, tr.conn)
            if not report.ok:
                raise GuardFailed("expand finished but its checks failed: " + "; ".join(report.failures))
            tr.finish(
                self.entered,
                reason=ctx.reason,
                details={
                    "steps": len(actions),
                    "spec": ctx.spec.model_dump(mode="json", by_alias=True),
                    "cleared_from_earlier_attempt": earlier,
                },
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

    def rollback_plan(self, ctx: Context, opts: RollbackOptions, recorded: set[str] | None = None) -> list[Action]:
        """Detach the triggers and drop their functions; drop the split tables only when asked to, and only those
        migrator recorded as its own (`recorded`; None in an offline plan: all of them)."""
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
                if recorded is not None and table not in recorded:
                    continue
                forget = sql.SQL("DELETE FROM {} WHERE migration = {} AND kind = 'table' AND name = {}").format(
                    names.state(spec, "objects"), literal(spec.migration_name), literal(table)
                )
                drop = render("drop_table", table=names.split(spec, table))
                acts.append(Action(f"drop split table {table}", join([drop, forget], ";\n")))
        return acts

    def rollback(self, ctx: Context, opts: RollbackOptions) -> None:
        """dual_write -> legacy: the application never depended on the split tables, so nothing can be lost."""
        with state.transition(ctx.require_db(), ctx.spec, "rollback", (self.entered,)) as tr:
            recorded = preflight.recorded_tables(tr.conn, ctx.spec)
            actions = self.rollback_plan(ctx, opts, recorded)
            run_actions(tr.conn, actions, on_step=ctx.announce(), lock_timeout=ctx.lock_timeout)
            kept = "dropped" if opts.drop_tables else "kept (drop them with --drop-tables)"
            ctx.reporter.step(f"split tables {kept}")
            tr.finish(self.left, reason=ctx.reason, details={"drop_tables": opts.drop_tables})

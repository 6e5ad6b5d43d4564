"""contract (write_new -> contracted): the split tables become the only truth.

Guards: legacy equals split, no open quarantine, and no application has written the legacy table directly
for the quiet period. Then: foreign keys that point at the legacy table are re-pointed at the base table
(NOT VALID, then VALIDATE, then the old one dropped), and in one short transaction the sync triggers go and
the legacy table is renamed to an archive (never dropped) — optionally replaced by a view of the same name
and shape over the split tables, with INSTEAD OF triggers, so code that still uses the old name keeps working.
The state moves to contracted in that same transaction.

Rollback (contracted -> write_new) renames the archive back, re-installs both directions of sync in the same
transaction, then refills the legacy rows from the split tables with a reverse backfill (migrator.copy.reverse)
that locks each legacy row before reading the split side, so a concurrent write is never overwritten by an older
copy; after a full validation it re-points the foreign keys back, the state moving with the last of them.

Both record each committed step in the state's progress (state.Transition.recorder): killed anywhere, re-running
the command finishes the job (every step has a done check), and `rollback` from write_new undoes an interrupted
contract's re-pointed foreign keys first (state.UNDO_INTERRUPTED).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from migrator import guards, state
from migrator.copy import reverse
from migrator.db import scalar
from migrator.engine.actions import Action, run_actions
from migrator.engine.context import Context, Report
from migrator.engine.pace import Pacer
from migrator.engine.session import MULTI_TABLE_LOCK_TIMEOUT
from migrator.errors import GuardFailed
from migrator.phases.base import Phase, RollbackOptions
from migrator.spec import Spec
from migrator.sqlgen import dependents, grants, names, repoint, triggers
from migrator.sqlgen.compose import as_text, ident, join


@dataclass(frozen=True)
class Options:
    """What `migrator contract` may be asked; every field has a CLI option of the same name."""

    # Seconds without a direct write to the legacy table before it may be archived.
    quiet_period: float = 60.0
    # Leave a view with the legacy name and shape over the split tables.
    compat_view: bool = False
    # Seconds to keep checking the quiet period (once a second) before refusing.
    wait: float = 0.0


class Contract(Phase[Options]):
    """write_new -> contracted: re-point the referencing foreign keys, stop both syncs, archive the legacy table."""

    name = "contract"
    options_type = Options

    def plan(self, ctx: Context, conn: psycopg.Connection[Any] | None = None) -> list[Action]:
        spec, compat_view = ctx.spec, self.options.compat_view
        acts = repoint.repoint_actions(spec, conn, "legacy")
        drops = [*triggers.drop_forward_actions(spec), *triggers.drop_reverse_actions(spec)]
        swap: list[sql.Composable] = [a.statement for a in drops]
        # The rename is the point of contract (guarded above), so the linter is told it is deliberate.
        swap.append(
            sql.SQL("-- squawk-ignore renaming-table\nALTER TABLE {} RENAME TO {}").format(
                names.source(spec), ident(names.archive_name(spec))
            )
        )
        legacy_grants = grants.table_grants(conn, names.source(spec)) if conn is not None else None
        swap += grants.revoke_writes(legacy_grants, names.archive(spec))
        if compat_view:
            swap += repoint.compat_view(spec)
            # Defaults in the same transaction: an insert through the view must never meet a view without them.
            swap += repoint.view_defaults(conn, spec) if conn is not None else []
            # The application's roles keep their privileges under the old name: the view gets the table's grants.
            swap += grants.mirror_statements(legacy_grants, [names.source(spec)])
            # Writes through the view are counted like direct legacy writes: finalize waits for them to stop.
            swap.append(repoint.compat_writes_counter(spec))
        view = ", create the compatibility view (with the table's column defaults and grants)" if compat_view else ""
        # What depends on the legacy table follows the rename unless moved in this same transaction (apply has
        # refused whatever cannot be moved); read before the rename, so each definition names the legacy table.
        moved = dependents.find(conn, spec) if conn is not None and compat_view else []
        swap += dependents.statements(moved)
        view += "".join(f"; {d.kind} {d.name}: {d.detail}" for d in moved if d.handling == "re-point")
        acts.append(
            Action(
                f"in one transaction: stop both syncs, archive {spec.source.table} as {names.archive_name(spec)}"
                + view,
                join(swap, ";\n"),
                lock_timeout=MULTI_TABLE_LOCK_TIMEOUT,
            )
        )
        return acts

    def apply(self, ctx: Context) -> None:
        spec, opts = ctx.spec, self.options
        with state.transition(ctx.require_db(), spec, self.name, (self.left,)) as tr:
            if tr.progress is not None:
                ctx.reporter.step(f"resuming: {state.describe_progress(tr.progress)}")
            # On a resume the guards run again: nothing was archived yet and both syncs are still on, so they hold
            # as before; the quiet period counts from the mark the first run left (no new wait unless legacy was
            # written directly since).
            guards.require_in_sync(ctx.require_db(), spec, self.name)
            guards.require_no_open_quarantine(tr.conn, spec, self.name)
            _require_references_covered(spec, tr.conn)
            dependents.require_movable(dependents.find(tr.conn, spec), opts.compat_view)
            # Not inside a transaction: the moved mark must be committed even when the guard refuses.
            guards.wait_for_quiet(tr.conn, spec, "legacy", opts.quiet_period, opts.wait, self.name, ctx.reporter.step)
            ctx.observer.gate("before-contract", archive=names.archive_name(spec), compat_view=opts.compat_view)
            acts = self.plan(ctx, tr.conn)
            details = {"archive": names.archive_name(spec), "compat_view": opts.compat_view}
            run_actions(
                tr.conn,
                acts,
                on_step=ctx.announce(),
                lock_timeout=ctx.lock_timeout,
                record=tr.recorder([a.description for a in acts]),
                # The state moves in the swap's own transaction: no kill leaves an archive behind a write_new state.
                finish=tr.finisher(self.entered, reason=ctx.reason, details=details),
            )

    def verify(self, ctx: Context) -> Report:
        spec = ctx.spec
        report = Report(self.name)
        with ctx.require_db().connect(autocommit=True) as conn:
            archived = scalar(conn, "SELECT to_regclass(%s) IS NOT NULL", [as_text(names.archive(spec))])
            report.check(
                bool(archived), f"legacy table archived as {names.archive_name(spec)}", "archive table missing"
            )
            for fk in repoint.references(spec, conn, "base"):
                report.check(
                    fk.old_name.endswith("split_fkey"),
                    f"{fk.table_text}.{fk.column} references the base table",
                    f"{fk.table_text}.{fk.column} still references the legacy table",
                )
        return report

    def rollback_plan(self, ctx: Context, conn: psycopg.Connection[Any] | None = None) -> list[Action]:
        spec = ctx.spec
        # What was re-pointed at the compatibility view (or made on it since) goes back to the table.
        moved = [d for d in dependents.find(conn, spec) if d.handling == "re-point"] if conn is not None else []
        base = names.split(spec, spec.base.table)
        write_grants = grants.restore_writes(
            grants.table_grants(conn, base) if conn is not None else None, names.source(spec)
        )
        return [
            Action(
                f"in one transaction: drop the compatibility view, rename {names.archive_name(spec)} back, "
                "re-install forward and reverse sync, give the application's roles their writes back"
                + "".join(f"; re-point {d.kind} {d.name}" for d in moved),
                join([*repoint.restore_statements(spec, dependents.statements(moved)), *write_grants], ";\n"),
                lock_timeout=MULTI_TABLE_LOCK_TIMEOUT,
                # Done once it committed: a resumed rollback must not drop "the view" that is the table again.
                done_check=repoint.restore_done_check(spec),
            )
        ]

    def rollback(self, ctx: Context, opts: RollbackOptions) -> None:
        """contracted -> write_new: the legacy table back, both syncs on, its rows refilled from the split side.

        Steps: restore (one transaction), reverse backfill, then the foreign keys back, one action at a time; each
        is recorded as it commits and the state moves with the last. Re-run after an interruption, the restore is
        skipped (done), the reverse backfill runs again (the syncs kept legacy current since; it only catches up)
        and re-pointing skips what is done."""
        spec = ctx.spec
        db = ctx.require_db()
        with state.transition(db, spec, "rollback", (self.entered,)) as tr:
            if tr.progress is not None:
                ctx.reporter.step(f"resuming: {state.describe_progress(tr.progress)}")
            guards.require_legacy_checks_hold(tr.conn, spec)
            restore = self.rollback_plan(ctx, tr.conn)
            refill = "reverse backfill: refill the legacy rows from the split tables"
            steps = [*(a.description for a in restore), refill]
            back_planned = [a.description for a in repoint.repoint_actions(spec, None, "base")]
            run_actions(
                tr.conn,
                restore,
                on_step=ctx.announce(),
                lock_timeout=ctx.lock_timeout,
                record=tr.recorder([*steps, *back_planned]),
            )
            result = reverse.reverse_backfill(
                tr.conn,
                spec,
                ctx.reporter,
                opts.max_rows_per_second,
                health=ctx.health(opts.health),
                pacer=None if opts.full_speed else Pacer(lambda: db.raw_connect(autocommit=True), ctx.reporter.step),
            )
            ctx.reporter.step(
                f"reverse backfill: {result.updated:,} legacy rows refreshed, {result.inserted:,} added, "
                f"{result.deleted:,} removed in {result.seconds:.1f} s"
            )
            repoint_back = repoint.repoint_actions(spec, tr.conn, "base")
            steps += [a.description for a in repoint_back]
            with tr.conn.transaction():
                tr.recorder(steps, len(restore))(tr.conn, 0)
            # Before the foreign keys go back, so the state can move with the last of them.
            guards.require_in_sync(db, spec, "rollback")
            details = {"updated": result.updated, "inserted": result.inserted, "deleted": result.deleted}
            run_actions(
                tr.conn,
                repoint_back,
                on_step=ctx.announce(),
                lock_timeout=ctx.lock_timeout,
                record=tr.recorder(steps, len(restore) + 1),
                finish=tr.finisher(
                    self.left, reason=ctx.reason, details=details, before=lambda c: guards.mark_legacy_writes(c, spec)
                ),
            )


def _require_references_covered(spec: Spec, conn: psycopg.Connection[Any]) -> None:
    """Every row of a referencing table must point at a base row, or re-pointing its FK fails half-way: a row that
    references an accepted-quarantine legacy row (it has no split row) would stop the VALIDATE with a raw 23503."""
    for fk in repoint.references(spec, conn, "legacy"):
        rows = conn.execute(repoint.dangling_references_sql(spec, fk)).fetchall()
        if rows:
            keys = ", ".join(r[0] for r in rows[:5]) + (", …" if len(rows) > 5 else "")
            raise GuardFailed(
                f"`contract` refused: {fk.table_text}.{fk.column} references {spec.source.table} rows that have no "
                f"{spec.base.table} row (keys {keys}) — the FK cannot be re-pointed",
                hint=f"fix those {spec.source.table} rows (they are in quarantine) or delete the {fk.table_text} "
                "rows that reference them, then run `migrator contract` again",
            )

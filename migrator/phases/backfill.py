"""backfill (dual_write -> backfilled): copy every legacy row the triggers have not touched yet.

The copy itself (ranges, workers, chunks, the race rules they keep) is migrator.copy.forward. This phase plans
it, coordinates it — holding the migration's lock and surviving a server restart while the workers copy, or
with --join lending workers to a backfill another host coordinates — then builds the deferred indexes, checks
the result and records the transition.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from migrator import state
from migrator.copy import forward, forward_sql
from migrator.copy.forward import CAREFUL_CHUNKS, CHUNK_LOCK_TIMEOUT, Options
from migrator.copy.planner_stats import FIRST_ROWS, GROWTH, LOCK_TIMEOUT, analyze_sql
from migrator.engine import retry
from migrator.engine.actions import Action, run_actions
from migrator.engine.context import Context, Report
from migrator.engine.health import Health, Limits
from migrator.errors import GuardFailed
from migrator.phases.base import Phase, RollbackOptions
from migrator.spec import Spec
from migrator.sqlgen.ddl import check_validate_actions, index_actions, legacy_checks

__all__ = ["Backfill", "Options"]

T = TypeVar("T")


class Backfill(Phase[Options]):
    """dual_write -> backfilled: every legacy row copied under its own key, or quarantined."""

    name = "backfill"
    options_type = Options

    def plan(self, ctx: Context, conn: psycopg.Connection[Any] | None = None) -> list[Action]:
        """What one backfill runs: the range plan, then per chunk (repeated) the copy, the re-sync of rejected
        rows under lock, and the checkpoint — each chunk one transaction under a short lock_timeout."""
        spec = ctx.spec
        timeout = CHUNK_LOCK_TIMEOUT
        return [
            Action(
                "plan key ranges (once): upper bound, row count, boundaries for parallel workers",
                forward_sql.boundaries_sql(spec),
                statement_timeout=0,
            ),
            Action(
                "copy one chunk (repeated; keyset on the primary key; FOR KEY SHARE; only rows not copied yet; "
                "foreign keys checked set-based, their triggers off where the role may set session_replication_role)",
                forward_sql.chunk_sql(spec, True),
                lock_timeout=timeout,
            ),
            Action(
                "a chunk that met a row a trigger wrote meanwhile (unique violation): redone, and the next "
                f"{CAREFUL_CHUNKS} chunks run, with ON CONFLICT DO NOTHING",
                forward_sql.chunk_sql(spec, True, careful=True),
                lock_timeout=timeout,
            ),
            Action(
                "rows the split schema rejects: lock them and sync through the trigger's function (quarantine)",
                forward_sql.sync_keys_sql(spec),
                lock_timeout=timeout,
            ),
            Action(
                "checkpoint the range's cursor in the chunk's transaction (resume point after kill -9)",
                forward_sql.checkpoint_sql(spec),
                lock_timeout=timeout,
            ),
            Action(
                f"refresh the planner's statistics of the split tables at {FIRST_ROWS:,} rows copied and at each "
                f"{GROWTH}-fold growth: the application's cached plans of the trigger's statements are made again",
                analyze_sql(spec),
                lock_timeout=LOCK_TIMEOUT,
            ),
            # One sorted build per index once the rows are in, rather than maintaining it row by row during the copy.
            *index_actions(spec, self.name),
            analyze_action(spec),
        ]

    def apply(self, ctx: Context) -> None:
        """Run the backfill (or, with --join, lend workers to one another host coordinates)."""
        if self.options.join:
            self._join(ctx)
            return
        db, spec, opts = ctx.require_db(), ctx.spec, self.options
        with state.transition(db, spec, self.name, (self.left,)) as tr:

            def on_session(op: Callable[[psycopg.Connection[Any]], T]) -> T:
                # The coordinator's session holds the advisory lock and sits idle while the workers copy; a server
                # restart ends it (and frees the lock). Take a new session, the lock and the state check again,
                # then redo the step: each step below is a read or one transaction, so redoing it is safe.
                def step() -> T:
                    if tr.conn.closed:
                        tr.reconnect()
                    return op(tr.conn)

                return retry.survive_connection_loss(
                    step, lambda exc: ctx.reporter.step(f"backfill: {retry.lost_message(exc)}; reconnecting")
                )

            def start(conn: psycopg.Connection[Any]) -> tuple[int, int, int, int]:
                forward.ensure_ranges(conn, spec, opts.workers)
                done, ranges_done, ranges = forward.progress_totals(conn, spec)
                return done, ranges_done, ranges, max(forward.legacy_estimate(conn, spec), done)

            done, ranges_done, ranges, total = on_session(start)
            if done:
                ctx.reporter.step(f"resuming: {done:,} rows already copied, {ranges_done}/{ranges} ranges done")

            def keepalive() -> None:
                # Touch the coordinator's session while the workers copy, so that after a restart it takes the
                # lock back within a second or so, not only when the copy is over (meanwhile another operator
                # could).
                on_session(lambda c: c.execute("SELECT 1"))

            t0 = time.monotonic()
            shared = _shared(ctx, total, done, self.options.health)
            while True:
                forward.run_workers(db, spec, opts, shared, keepalive=keepalive)
                _, ranges_done, ranges = on_session(lambda c: forward.progress_totals(c, spec))
                if ranges_done == ranges:
                    break
                # Ranges still held by workers on other hosts: wait, and take over any whose worker died.
                time.sleep(1.0)
            built = on_session(lambda c: self._built_after_copy(c, spec))
            on_session(lambda c: run_actions(c, built, on_step=ctx.announce(), lock_timeout=ctx.lock_timeout))
            report = on_session(lambda c: self._verify(ctx, c))
            if not report.ok:
                raise GuardFailed(
                    "backfill finished but " + "; ".join(report.failures),
                    hint="run `migrator backfill` again; `migrator status` shows the quarantine",
                )
            details = {
                "rows": shared.rows,
                "seconds": round(time.monotonic() - t0, 3),
                "workers": opts.workers,
                **_paused(shared.health),
                **report.details,
            }
            # Should the connection drop during this very COMMIT, its outcome is unknown: the redo's reconnect
            # then finds the state already moved and says so (WrongState) rather than recording it twice.
            on_session(lambda _c: tr.finish(self.entered, reason=ctx.reason, details=details))

    def _join(self, ctx: Context) -> None:
        db, spec = ctx.require_db(), ctx.spec
        with db.connect(autocommit=True) as conn:
            state.require(state.read(conn, spec), (self.left,), "backfill --join")
            done, _, ranges = forward.progress_totals(conn, spec)
            if not ranges:
                raise GuardFailed("no backfill is running to join", hint="start one with `migrator backfill`")
            total = max(forward.legacy_estimate(conn, spec), done)
        forward.run_workers(db, spec, self.options, _shared(ctx, total, done, self.options.health))

    def verify(self, ctx: Context) -> Report:
        """Every legacy row is in the base table or in quarantine; foreign keys hold; the indexes are built."""
        with ctx.require_db().connect(autocommit=True) as conn:
            return self._verify(ctx, conn)

    def _verify(self, ctx: Context, conn: psycopg.Connection[Any]) -> Report:
        report = Report(self.name)
        forward.check_copy(conn, ctx.spec, report)
        report.check_done(conn, self._built_after_copy(conn, ctx.spec))
        return report

    def _built_after_copy(self, conn: psycopg.Connection[Any], spec: Spec) -> list[Action]:
        """What is cheaper once the rows are in: the deferred indexes (one sorted build each) and the validation of
        the CHECK constraints expand carried over from legacy."""
        return [
            *index_actions(spec, self.name),
            *check_validate_actions(spec, legacy_checks(conn, spec)[0]),
            analyze_action(spec),
        ]

    def rollback(self, ctx: Context, opts: RollbackOptions) -> None:
        """backfilled -> dual_write: the copied rows stay (the triggers keep them in step); only the state moves."""
        with state.transition(ctx.require_db(), ctx.spec, "rollback", (self.entered,)) as tr:
            tr.finish(self.left, reason=ctx.reason)


def analyze_action(spec: Spec) -> Action:
    """The last step: statistics of the full tables, for the application's reads from switch-reads on."""
    return Action("refresh the planner's statistics of the full split tables", analyze_sql(spec), statement_timeout=0)


def _paused(health: Health | None) -> dict[str, Any]:
    """How often and how long the job waited for the database's health (for the audit log)."""
    if health is None:
        return {}
    return {"health_pauses": health.pauses, "health_paused_seconds": round(health.paused_seconds, 3)}


def _shared(ctx: Context, total: int, done: int, limits: Limits) -> forward.Shared:
    """The workers' view of the reporter (progress counted from the rows a resumed backfill had already copied) and
    of the database's health, which they wait on between chunks."""
    lock = threading.Lock()

    def on_chunk(fields: dict[str, Any]) -> None:
        with lock:
            ctx.reporter.progress(done + fields["rows_total"], total, **fields)

    def on_step(message: str) -> None:
        with lock:
            ctx.reporter.step(message)

    return forward.Shared(on_chunk=on_chunk, on_step=on_step, health=ctx.health(limits, on_step))

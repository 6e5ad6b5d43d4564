"""validate (backfilled -> validated): row-level proof that the split tables hold exactly the legacy rows.

The proof itself is the verifier's (migrator/verify/: the checks, their statements, the chunked runner, the
reports); this phase runs it, writes the reports, accepts the quarantine when asked, and moves the state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from migrator import lifecycle, state
from migrator.engine.actions import Action
from migrator.engine.context import Context, Report
from migrator.engine.health import Health, Limits
from migrator.errors import GuardFailed
from migrator.phases.base import Phase, RollbackOptions
from migrator.verify.checks import SQL_CHECKS
from migrator.verify.queries import Queries, Scope
from migrator.verify.reports import write_json, write_junit
from migrator.verify.result import ValidationFailed, ValidationResult
from migrator.verify.runner import DEFAULT_WORKERS, STATEMENT_TIMEOUT, run_validation

# Validation is read-only, so it may run as the guard of every later phase; `apply` moves the state only from
# backfilled. In dual_write the backfill may not be done, and after contract there is no legacy table to compare.
ALLOWED_STATES = tuple(s.state for s in lifecycle.STAGES if s.split_complete)


@dataclass(frozen=True)
class Options:
    """What validate may be asked; every field has a CLI option of the same name."""

    junit: Path | None = None
    report: Path | None = None
    accept_quarantine: bool = False
    chunk_rows: int | None = None  # None: PACED_CHUNK_ROWS, or DEFAULT_CHUNK_ROWS with full_speed
    workers: int = DEFAULT_WORKERS
    max_rows_per_second: float | None = None
    # Off: the reads pace themselves by the application's load (engine/pace.py); on: as fast as the server goes.
    full_speed: bool = False
    health: Limits = field(default_factory=Limits)


class Validate(Phase[Options]):
    """Validate; from backfilled, a clean result (quarantine empty or accepted) moves the state to validated."""

    name = "validate"
    options_type = Options

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        # What the last apply() found, for the caller to print or report (also when the state did not move).
        self.result: ValidationResult | None = None
        self.health: Health | None = None

    def plan(self, ctx: Context, conn: psycopg.Connection[Any] | None = None) -> list[Action]:
        """The statements a validation runs, each read-only; chunked ones show a key range [lo, hi)."""
        q = Queries(ctx.spec)
        chunk = Scope("lo", "hi")
        actions = [
            Action("find the next chunk boundary (repeated: an index walk of chunk_rows keys)", q.chunk_bound(True)),
            Action("open quarantine keys per chunk (read once)", q.quarantine_buckets()),
            Action(
                "hash one chunk, legacy and split side in one statement (REPEATABLE READ, READ ONLY; repeated)",
                q.chunk_hash(chunk),
                statement_timeout=STATEMENT_TIMEOUT,
            ),
            Action("where a chunk's hashes differ: its rows that differ, column by column", q.row_diff(chunk)),
        ]
        for check in SQL_CHECKS:
            query = check.statement(q, chunk)
            if query is not None:
                when = "every chunk" if check.every_chunk else "where a chunk's hashes differ"
                actions.append(Action(f"check {check.name} ({when}): {check.description}", query))
        actions.append(Action("quarantine summary", q.quarantine_summary()))
        return actions

    def apply(self, ctx: Context) -> None:
        """In later states it only checks (the guard of switch-reads, switch-writes, contract). Mismatches raise
        ValidationFailed (exit 1) and leave the state where it was; the reports are written either way."""
        db, spec, opts = ctx.require_db(), ctx.spec, self.options
        self.result = None
        self.health = health = ctx.health(opts.health)
        with state.transition(db, spec, self.name, ALLOWED_STATES) as tr:
            result = run_validation(
                db,
                spec,
                chunk_rows=opts.chunk_rows,
                workers=opts.workers,
                max_rows_per_second=opts.max_rows_per_second,
                reporter=ctx.reporter,
                health=health,
                full_speed=opts.full_speed,
            )
            self.result = result
            self._write_reports(result)
            if not result.ok:
                raise ValidationFailed(result, hint="the --report/--junit files list every row; fix them and re-run")
            if tr.start.state != self.left:
                ctx.reporter.step(f"state stays {tr.start.state}: validate moves the state only from {self.left}")
                return
            quarantine = result.quarantine
            if quarantine.unaccepted and not opts.accept_quarantine:
                raise GuardFailed(
                    f"{quarantine.unaccepted:,} row(s) are in quarantine (by SQLSTATE: "
                    f"{', '.join(f'{k} {v:,}' for k, v in sorted(quarantine.by_sqlstate.items()))})",
                    hint=f"fix them in {spec.source.table} (the trigger then syncs them), or accept them with "
                    "--accept-quarantine",
                )
            self._finish(tr, ctx, result)

    def _write_reports(self, result: ValidationResult) -> None:
        if self.options.junit:
            write_junit(result, self.options.junit)
        if self.options.report:
            write_json(result, self.options.report)

    def _finish(self, tr: state.Transition, ctx: Context, result: ValidationResult) -> None:
        """Accept the quarantine this validation saw and move to validated, in one transaction."""
        spec, q, accept = ctx.spec, Queries(ctx.spec), self.options.accept_quarantine
        params = {"migration": spec.migration_name}
        with tr.conn.transaction():
            accepted = 0
            if accept and result.quarantine.keys:
                accepted = tr.conn.execute(q.quarantine_accept(), {**params, "keys": result.quarantine.keys}).rowcount
            row = tr.conn.execute(q.quarantine_unaccepted(), params).fetchone()
            left = int(row[0]) if row else 0
            if left:
                raise GuardFailed(
                    f"{left:,} row(s) were quarantined while validation ran; nothing was accepted",
                    hint="run `migrator validate` again",
                )
            state.record(
                tr.conn,
                spec,
                from_state=tr.start.state,
                to_state=self.entered,
                command=tr.command,
                reason=ctx.reason,
                duration_ms=int((time.monotonic() - tr.started) * 1000),
                details={
                    "rows": result.rows,
                    "chunks": result.chunks,
                    "seconds": round(result.seconds, 3),
                    "counts": {c.name: c.count for c in result.checks},
                    "quarantine_open": result.quarantine.open,
                    "quarantine_accepted_now": accepted,
                    "accept_quarantine": accept,
                    "quarantine_referenced_by": result.quarantine.referenced_by,
                    "health_pauses": self.health.pauses if self.health else 0,
                    "health_paused_seconds": round(self.health.paused_seconds, 3) if self.health else 0.0,
                },
            )

    def verify(self, ctx: Context) -> Report:
        """A fresh validation as a Report: the guard switch-reads, switch-writes and contract check before they
        move."""
        opts = self.options
        result = run_validation(
            ctx.require_db(), ctx.spec, chunk_rows=opts.chunk_rows, workers=opts.workers, reporter=ctx.reporter
        )
        report = Report(self.name, details={"result": result, "counts": {c.name: c.count for c in result.checks}})
        for c in result.checks:
            first = f"; first: {c.failures[0].key}: {c.failures[0].detail}" if c.failures else ""
            report.check(c.ok, f"{c.name}: ok", f"{c.name}: {c.count:,} failing row(s){first}")
        return report

    def rollback(self, ctx: Context, opts: RollbackOptions) -> None:
        """validated -> backfilled: only the state moves (validation changed no data; accepted quarantine stays)."""
        with state.transition(ctx.require_db(), ctx.spec, "rollback", (self.entered,)) as tr:
            tr.finish(self.left, reason=ctx.reason)

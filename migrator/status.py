"""`migrator status`: state, flags, table sizes and row counts, quarantine, and a transition in flight (running now,
or left interrupted)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from migrator import jobs, lifecycle, state
from migrator.db import Database, advisory_key, lock_holder
from migrator.engine.session import set_local
from migrator.spec import Spec
from migrator.sqlgen import names
from migrator.sqlgen.compose import ident, render

# Exact counts are what a DBA trusts; on a table too big to count quickly we show the planner's estimate instead.
COUNT_TIMEOUT = 10.0


@dataclass
class TableStatus:
    role: str
    table: str
    exists: bool
    rows: int | None = None
    exact: bool = True
    bytes: int | None = None


@dataclass
class Status:
    migration: str
    database: str
    state: str
    next_command: str | None
    read_percent: int
    paused: bool
    updated_at: Any
    updated_by: str | None
    tables: list[TableStatus] = field(default_factory=list)
    quarantine_open: int | None = None
    # A multi-step transition killed part-way (state.progress): one line saying how far it got and the way out,
    # and the progress itself ({"command", "from", "steps", "done"}); None when nothing is in flight.
    interrupted: str | None = None
    progress: dict[str, Any] | None = None
    # The same progress while its command still runs (another session holds the migration's lock): who runs it.
    in_progress: str | None = None
    # Where `rollback` cannot go back from here, why ("no rollback from finalized: the archive is gone").
    no_rollback: str | None = None
    # The long jobs running now (migrator.jobs): what each does, how far, its pace, the signal holding it back.
    jobs: list[dict[str, Any]] = field(default_factory=list)
    # One line per job, as the text output shows them.
    job_lines: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _table_status(conn: psycopg.Connection[Any], role: str, schema: str, table: str) -> TableStatus:
    qualified = f"{schema}.{table}"
    row = conn.execute(render("table_stats", table=names.regclass_literal(schema, table))).fetchone()
    if row is None:
        return TableStatus(role, qualified, exists=False)
    estimate, size = row
    try:
        with conn.transaction():
            set_local(conn, statement_timeout=COUNT_TIMEOUT)
            counted = conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(ident(schema, table))).fetchone()
        return TableStatus(role, qualified, True, int(counted[0]) if counted else 0, True, int(size))
    except psycopg.errors.QueryCanceled:
        return TableStatus(role, qualified, True, max(int(estimate), 0), False, int(size))


def _legacy_status(conn: psycopg.Connection[Any], spec: Spec, stage: lifecycle.Stage) -> TableStatus:
    """The legacy table's row: the table, its archive once contracted, or the archive's absence once dropped."""
    schema, archive_name = spec.source.schema_, names.archive_name(spec)
    if stage.dropped:
        return TableStatus("legacy (dropped)", f"{schema}.{archive_name}", exists=False)
    if stage.archived:
        archive = _table_status(conn, "legacy (archived)", schema, archive_name)
        # An interrupted rollback already renamed the archive back: the legacy table is what is there.
        return archive if archive.exists else _table_status(conn, "legacy (restored)", schema, spec.source.table)
    return _table_status(conn, "legacy", schema, spec.source.table)


def collect(db: Database, spec: Spec) -> Status:
    with db.connect(autocommit=True) as conn:
        st = state.read(conn, spec)
        result = Status(
            migration=spec.migration_name,
            database=db.display,
            state=st.state,
            next_command=lifecycle.next_command(st.state),
            read_percent=st.read_percent,
            paused=st.paused,
            updated_at=st.updated_at,
            updated_by=st.updated_by,
        )
        progress = state.read_progress(conn, spec)
        holder = lock_holder(conn, advisory_key(*state.lock_parts(spec))) if progress is not None else None
        if progress is not None and holder is not None:
            # Its command still runs: an on-call reading "interrupted, run X" would start X beside it.
            result.progress, result.in_progress = progress, state.describe_running(progress, holder.describe())
            result.next_command = None
        elif progress is not None:
            result.progress, result.interrupted = progress, state.describe_progress(progress)
            # What finishes it comes next (in contracted, where no forward command is left: the rollback).
            result.next_command = str(progress.get("command") or result.next_command)
        running = jobs.read(conn, spec)
        result.jobs = [{**asdict(j), "stale": j.stale} for j in running]
        result.job_lines = [f"{j.job}: {j.describe()}" for j in running]
        stage = lifecycle.stage(st.state)
        if not stage.reversible:
            result.no_rollback = lifecycle.NO_ROLLBACK.format(state=st.state)
        result.tables.append(_legacy_status(conn, spec, stage))
        result.tables.append(_table_status(conn, "base", spec.target_schema, spec.base.table))
        for v in spec.variants:
            result.tables.append(_table_status(conn, f"variant {v.when}", spec.target_schema, v.table))
        if spec.meta:
            result.tables.append(_table_status(conn, "meta", spec.target_schema, spec.meta.table))
        if st.updated_at is not None:
            row = conn.execute(
                psycopg.sql.SQL("SELECT count(*) FROM {} WHERE migration = %s AND resolved_at IS NULL").format(
                    names.state(spec, "quarantine")
                ),
                [spec.migration_name],
            ).fetchone()
            result.quarantine_open = int(row[0]) if row else 0
    return result

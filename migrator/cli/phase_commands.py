"""The phase commands (expand … contract), pause/resume and rollback: parse the options into the phase's typed
Options, run it, render the outcome."""

from __future__ import annotations

from pathlib import Path

import click

from migrator import console
from migrator.cli.app import App, cli, context, defaulted, done, examples, pass_app, reason_option


@cli.command()
@reason_option
@examples("migrator expand", "migrator --spec payments.toml --lock-timeout 0.5 expand --reason 'CHG-1234'")
@pass_app
def expand(app: App, reason: str | None) -> None:
    """legacy -> dual_write: create the split tables, constraints and indexes, then the forward sync triggers.

    Every DDL step runs under SET LOCAL lock_timeout and is retried; indexes are built CONCURRENTLY; foreign
    keys are added NOT VALID and validated afterwards. Re-running after a crash finishes the job.
    """
    from migrator.phases.expand import Expand

    Expand().apply(context(app, reason=reason))
    done(app, "expand", "dual_write")


@cli.command()
@defaulted(
    "--workers", click.IntRange(1, 64), 1, "Parallel workers in this process (they claim key ranges with SKIP LOCKED)."
)
@defaulted("--chunk-time", click.FloatRange(0.005, 60), 0.1, "Target seconds per chunk; the chunk size adapts to it.")
@click.option("--batch-size", type=click.IntRange(1, 1_000_000), help="Fixed rows per chunk instead.")
@click.option("--max-rows-per-second", type=click.FloatRange(min=1), help="Throttle the copy.")
@click.option("--throttle-query", help="SQL returning a number; > 0 means wait (e.g. replica lag in seconds).")
@defaulted(
    "--chunk-lock-timeout",
    click.FloatRange(0.001, 10),
    0.05,
    "Seconds a chunk waits for an application's row lock before it retries smaller.",
)
@click.option("--join", "join_", is_flag=True, help="Lend workers to a backfill another process coordinates.")
@reason_option
@examples(
    "migrator backfill",
    "migrator --json backfill --workers 2 --max-rows-per-second 20000",
    'migrator backfill --throttle-query "SELECT max(extract(epoch FROM replay_lag)) - 5 FROM pg_stat_replication"',
    "migrator backfill --join --workers 4     # on a second host",
)
@pass_app
def backfill(
    app: App,
    workers: int,
    chunk_time: float,
    batch_size: int | None,
    max_rows_per_second: float | None,
    throttle_query: str | None,
    chunk_lock_timeout: float,
    join_: bool,
    reason: str | None,
) -> None:
    """dual_write -> backfilled: copy every legacy row into the split tables, keeping ids.

    Keyset chunks over the primary key, one short transaction each, checkpointed: kill it at any moment and
    run it again to resume. `migrator pause` / `resume` stop and restart every worker within one chunk.
    """
    from migrator.phases import backfill as phase

    opts = phase.Options(
        workers=workers,
        chunk_time=chunk_time,
        batch_size=batch_size,
        max_rows_per_second=max_rows_per_second,
        throttle_query=throttle_query,
        lock_timeout=chunk_lock_timeout,
        join=join_,
    )
    reporter = console.JsonReporter() if app.json else console.ProgressReporter("backfill")
    with reporter.running():
        phase.Backfill(opts).apply(context(app, reporter, reason=reason))
    done(app, "backfill", "dual_write (joined)" if join_ else "backfilled")


@cli.command()
@examples("migrator pause", "migrator resume")
@pass_app
def pause(app: App) -> None:
    """Pause every backfill worker (they stop within one chunk and wait)."""
    _set_paused(app, True)
    done(app, "pause", "paused")


@cli.command()
@examples("migrator resume")
@pass_app
def resume(app: App) -> None:
    """Let paused backfill workers continue."""
    _set_paused(app, False)
    done(app, "resume", "running")


def _set_paused(app: App, paused: bool) -> None:
    from migrator import state

    with app.db.connect(autocommit=True) as conn:
        state.set_flags(conn, app.spec, paused=paused)


@cli.command()
@click.option("--junit", type=click.Path(dir_okay=False), help="Write JUnit XML (one testcase per check).")
@click.option("--report", type=click.Path(dir_okay=False), help="Write the full report as JSON.")
@click.option("--accept-quarantine", is_flag=True, help="Let quarantined rows pass (audited; they stay in legacy).")
@click.option("--chunk-rows", type=click.IntRange(min=100), help="Keys per compared chunk.")
@click.option("--workers", type=click.IntRange(min=1), help="Chunks compared at once (default 2).")
@click.option(
    "--max-rows-per-second", type=click.FloatRange(min=1), help="Throttle the reads (leaves CPU to the application)."
)
@reason_option
@examples(
    "migrator validate",
    "migrator validate --workers 1 --max-rows-per-second 50000",
    "migrator validate --junit validation.xml --report validation.json",
    "migrator validate --accept-quarantine --reason 'legacy rows without a course, agreed with product'",
)
@pass_app
def validate(
    app: App,
    junit: str | None,
    report: str | None,
    accept_quarantine: bool,
    chunk_rows: int | None,
    workers: int | None,
    max_rows_per_second: float | None,
    reason: str | None,
) -> None:
    """Compare every legacy row with its split rows (chunked: hash, then rows, then columns) and run every
    check in validators/. Exit 0 clean, 1 on any mismatch (naming every id and column). From backfilled, a clean
    result moves the state to validated; in later states it only checks."""
    from migrator.phases import validate as phase
    from migrator.verify.result import ValidationFailed

    reporter = console.JsonReporter() if app.json else console.ProgressReporter("validate")
    defaults = phase.Options()
    opts = phase.Options(
        junit=Path(junit) if junit else None,
        report=Path(report) if report else None,
        accept_quarantine=accept_quarantine,
        chunk_rows=chunk_rows or defaults.chunk_rows,
        workers=workers or defaults.workers,
        max_rows_per_second=max_rows_per_second,
    )
    validation = phase.Validate(opts)
    try:
        with reporter.running():
            validation.apply(context(app, reporter, reason=reason))
    except ValidationFailed as exc:
        if app.json:
            console.print_json({"event": "done", "command": "validate", **exc.result.as_dict()})
        raise
    result = validation.result
    assert result is not None
    if app.json:
        console.print_json({"event": "done", "command": "validate", **result.as_dict()})
    else:
        console.success(result.summary())


@cli.command("switch-reads")
@defaulted(
    "--percent", click.IntRange(1, 100), 100, "Share of request keys that read the split tables (raise it again later)."
)
@reason_option
@examples("migrator switch-reads --percent 10", "migrator switch-reads            # 100%")
@pass_app
def switch_reads(app: App, percent: int, reason: str | None) -> None:
    """validated -> read_new: applications read the split tables (P% of request keys). Guard: legacy equals
    split right now."""
    from migrator.phases import switch_reads as phase

    phase.SwitchReads(phase.Options(percent=percent)).apply(context(app, reason=reason))
    done(app, "switch-reads", f"read_new ({percent}% of reads on split)")


@cli.command("switch-writes")
@reason_option
@examples("migrator switch-writes")
@pass_app
def switch_writes(app: App, reason: str | None) -> None:
    """read_new -> write_new: applications write the split tables; reverse triggers keep legacy complete and
    the forward triggers stay on for instances not yet switched."""
    from migrator.phases.switch_writes import SwitchWrites

    SwitchWrites().apply(context(app, reason=reason))
    done(app, "switch-writes", "write_new")


@cli.command()
@defaulted(
    "--quiet-period", click.FloatRange(min=0), 60, "Seconds the legacy table must have gone without direct writes."
)
@click.option("--compat-view", is_flag=True, help="Leave a view with the legacy name and shape over the split tables.")
@defaulted(
    "--wait", click.FloatRange(min=0), 0, "Seconds to keep waiting for the quiet period instead of refusing at once."
)
@reason_option
@examples("migrator contract --compat-view", "migrator --yes contract --quiet-period 300")
@pass_app
def contract(app: App, quiet_period: float, compat_view: bool, wait: float, reason: str | None) -> None:
    """write_new -> contracted: re-point foreign keys at the base table, stop the sync, archive the legacy table
    (renamed, never dropped)."""
    from migrator.phases import contract as phase
    from migrator.sqlgen.names import archive_name

    console.confirm(
        f"archive {app.spec.source.table} as {archive_name(app.spec)} and stop the sync?", assume_yes=app.yes
    )
    opts = phase.Options(quiet_period=quiet_period, compat_view=compat_view, wait=wait)
    phase.Contract(opts).apply(context(app, reason=reason))
    done(app, "contract", "contracted")


@cli.command()
@click.option("--to", "to_state", help="Roll back step by step down to this state.")
@click.option("--drop-tables", is_flag=True, help="From dual_write: also drop the (empty-able) split tables.")
@click.option(
    "--max-rows-per-second",
    type=click.FloatRange(min=1),
    help="From contracted: throttle the reverse backfill (leaves CPU to the application).",
)
@defaulted(
    "--quiet-period",
    click.FloatRange(min=0),
    60,
    "Before the reverse sync goes: seconds the split tables must have gone without direct writes.",
)
@defaulted("--wait", click.FloatRange(min=0), 0, "Seconds to keep waiting for that quiet period instead of refusing.")
@reason_option
@examples(
    "migrator rollback",
    "migrator rollback --to legacy --drop-tables --yes",
    "migrator rollback --to validated --wait 120     # lets lagging app instances stop writing the split tables",
)
@pass_app
def rollback(
    app: App,
    to_state: str | None,
    drop_tables: bool,
    max_rows_per_second: float | None,
    quiet_period: float,
    wait: float,
    reason: str | None,
) -> None:
    """Go back one state (or down to --to STATE) without losing a write made meanwhile."""
    from migrator import operations
    from migrator.phases.base import RollbackOptions

    if drop_tables:
        console.confirm(f"drop the split tables {', '.join(app.spec.split_tables())}?", assume_yes=app.yes)
    opts = RollbackOptions(
        drop_tables=drop_tables, max_rows_per_second=max_rows_per_second, quiet_period=quiet_period, wait=wait
    )
    steps = operations.rollback(context(app, reason=reason), to_state, opts)
    if app.json:
        console.print_json(
            {"event": "done", "command": "rollback", "steps": steps, "state": steps[-1][1] if steps else None}
        )
    else:
        for frm, to in steps:
            console.success(f"rolled back {frm} -> {to}")

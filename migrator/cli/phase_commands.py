"""The phase commands (expand … contract), pause/resume and rollback: parse the options into the phase's typed
Options, check the spec against the server, run the phase, report the outcome (migrator.results)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from migrator import console, lifecycle
from migrator.cli.app import (
    App,
    ByteSize,
    begin,
    cli,
    context,
    defaulted,
    done,
    examples,
    finite,
    moved,
    pass_app,
    reason_option,
    reporter,
)
from migrator.engine.health import Limits
from migrator.errors import BadInputError, OperationalError, WrongState

# The state a backfill runs in: the only one where pausing it means something.
BACKFILL_STATE = lifecycle.left_by("backfill")

F = TypeVar("F", bound=Callable[..., Any])
_LIMITS = Limits()


def long_job(fn: F) -> F:
    """The options every long job (backfill, validate, rollback's reverse backfill) shares, declared once: the
    health limits it waits on between chunks (given to the command as one `health` Limits), --full-speed (passed
    on as it is), and its metrics (served and/or written while the command runs)."""

    @functools.wraps(fn)
    def command(
        *args: Any,
        max_transaction_age: float,
        max_replica_lag_bytes: int,
        max_replica_lag_seconds: float,
        health_fail_open: bool,
        metrics_port: int | None,
        metrics_address: str,
        metrics_file: str | None,
        **kwargs: Any,
    ) -> Any:
        from migrator import metrics

        kwargs["health"] = Limits(
            max_transaction_age=max_transaction_age,
            max_lag_bytes=max_replica_lag_bytes,
            max_lag_seconds=max_replica_lag_seconds,
            fail_open=health_fail_open,
        )
        if metrics_port is None and metrics_file is None:
            return fn(*args, **kwargs)
        app = click.get_current_context().find_object(App)
        assert app is not None
        path = Path(metrics_file) if metrics_file else None
        with contextlib.ExitStack() as stack:
            try:
                watched, port = stack.enter_context(metrics.serving(fn.__name__, metrics_port, metrics_address, path))
            except OSError as exc:
                raise OperationalError(f"cannot serve or write the metrics: {exc}") from exc
            app.observer.observers.append(watched)
            stack.callback(app.observer.observers.remove, watched)
            if port is not None:
                console.info(f"metrics: http://{metrics_address}:{port}/metrics")
            return fn(*args, **kwargs)

    options = [
        defaulted(
            "--max-transaction-age",
            finite(0, min_open=True),
            _LIMITS.max_transaction_age,
            "Health: wait while another session's transaction has been open longer than this (seconds).",
        ),
        click.option(
            "--max-replica-lag-bytes",
            type=ByteSize(),
            default="1GiB",
            show_default=True,
            help="Health: wait while a replication slot retains, or a standby is behind by, more WAL than this.",
        ),
        defaulted(
            "--max-replica-lag-seconds",
            finite(0, min_open=True),
            _LIMITS.max_lag_seconds,
            "Health: wait while a standby's replay lag is longer than this (seconds).",
        ),
        click.option(
            "--health-fail-open",
            is_flag=True,
            help="A health signal that cannot be read counts as green (default: red, the job waits).",
        ),
        click.option(
            "--full-speed",
            is_flag=True,
            help="Run as fast as the server goes, instead of the pace the application's load allows (the default).",
        ),
        click.option(
            "--metrics-port",
            type=click.IntRange(0, 65535),
            help="Serve Prometheus metrics on this port while the job runs (0: any free port, printed).",
        ),
        defaulted("--metrics-address", str, "0.0.0.0", "The address --metrics-port listens on."),  # noqa: S104
        click.option(
            "--metrics-file",
            type=click.Path(dir_okay=False),
            help="Write the metrics in the node-exporter textfile format (*.prom) now and then, and at the end.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command  # type: ignore[return-value]


@cli.command()
@reason_option
@examples("migrator expand", "migrator --spec payments.toml --lock-timeout 0.5 expand --reason 'CHG-1234'")
@pass_app
def expand(app: App, reason: str | None) -> None:
    """legacy -> dual_write: create the split tables, constraints and indexes, then the forward sync triggers.

    Every DDL step runs under SET LOCAL lock_timeout and is retried; indexes are built CONCURRENTLY; foreign
    keys are added NOT VALID and validated afterwards. Re-running after a crash finishes the job. Before any DDL,
    every type the spec names must resolve on the server and every legacy column it names must exist (exit 2).
    """
    from migrator.phases.expand import Expand

    begin(app, check_spec=True)
    Expand().apply(context(app, reason=reason))
    done(app)
    _said(app, "expand")


def _said(app: App, command: str) -> None:
    if not app.json:
        console.success(f"{command}: {moved(app)}")


@cli.command()
@defaulted(
    "--workers", click.IntRange(1, 64), 1, "Parallel workers in this process (they claim key ranges with SKIP LOCKED)."
)
@defaulted("--chunk-time", finite(0.005, 60), 0.1, "Target seconds per chunk; the chunk size adapts to it.")
@click.option("--batch-size", type=click.IntRange(1, 1_000_000), help="Fixed rows per chunk instead.")
@click.option("--max-rows-per-second", type=finite(min=1), help="Throttle the copy.")
@click.option("--throttle-query", help="SQL returning a number; > 0 means wait (e.g. replica lag in seconds).")
@defaulted(
    "--chunk-lock-timeout",
    finite(0.001, 10),
    0.05,
    "Seconds a chunk waits for an application's row lock before it retries smaller.",
)
@click.option("--join", "join_", is_flag=True, help="Lend workers to a backfill another process coordinates.")
@long_job
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
    full_speed: bool,
    reason: str | None,
    health: Limits,
) -> None:
    """dual_write -> backfilled: copy every legacy row into the split tables, keeping ids.

    Keyset chunks over the primary key, one short transaction each, checkpointed: kill it at any moment and
    run it again to resume. `migrator pause` / `resume` stop and restart every worker within one chunk; a pause
    still set when the backfill finishes is cleared.
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
        full_speed=full_speed,
        health=health,
    )
    begin(app, check_spec=True)
    progress = reporter(app, "backfill")
    with progress.running():
        phase.Backfill(opts).apply(context(app, progress, reason=reason))
    cleared = False if join_ else _clear_pause(app)
    done(app, details={"joined": join_, "pause_cleared": cleared})
    if not app.json:
        console.success("backfill: workers lent until the copy finished" if join_ else f"backfill: {moved(app)}")


def _clear_pause(app: App) -> bool:
    """A pause set while the last chunks ran has nothing left to pause: clear it, so it does not linger."""
    from migrator import state
    from migrator.cli.app import read_state

    if not read_state(app).paused:
        return False
    with app.db.connect(autocommit=True) as conn:
        state.set_flags(conn, app.spec, paused=False)
    return True


@cli.command()
@examples("migrator pause", "migrator resume")
@pass_app
def pause(app: App) -> None:
    """Pause every backfill worker (they stop within one chunk and wait). Only while a backfill can run (in
    dual_write); the flag is cleared by `resume`, or when the backfill finishes."""
    current = begin(app)
    if current.state != BACKFILL_STATE:
        raise WrongState(
            f"`pause` stops backfill workers, which run only in {BACKFILL_STATE}; the migration is in {current.state}",
            hint="nothing was paused"
            + (
                f"; `migrator {lifecycle.next_command(current.state)}` starts the migration"
                if current.state == lifecycle.START
                else ""
            ),
        )
    _set_paused(app, True)
    app.observer.event("paused")
    done(app, "backfill workers pause within one chunk (`migrator resume` lets them go on)", details={"paused": True})


@cli.command()
@examples("migrator resume")
@pass_app
def resume(app: App) -> None:
    """Let paused backfill workers continue (in any state: it only clears the pause flag)."""
    begin(app)
    _set_paused(app, False)
    app.observer.event("resumed")
    done(app, "backfill workers may continue", details={"paused": False})


def _set_paused(app: App, paused: bool) -> None:
    from migrator import state

    with app.db.connect(autocommit=True) as conn:
        if state.read(conn, app.spec).updated_at is None:
            return  # no migration recorded yet (no state schema): nothing is or was paused
        state.set_flags(conn, app.spec, paused=paused)


@cli.command()
@click.option("--junit", type=click.Path(dir_okay=False), help="Write JUnit XML (one testcase per check).")
@click.option("--report", type=click.Path(dir_okay=False), help="Write the full report as JSON.")
@click.option("--accept-quarantine", is_flag=True, help="Let quarantined rows pass (audited; they stay in legacy).")
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=100),
    help="Keys per compared chunk (default 2,000: short bursts the pace rests between; 50,000 with --full-speed).",
)
@click.option("--workers", type=click.IntRange(min=1), help="Chunks compared at once (default 2).")
@click.option("--max-rows-per-second", type=finite(min=1), help="Throttle the reads (leaves CPU to the application).")
@long_job
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
    full_speed: bool,
    reason: str | None,
    health: Limits,
) -> None:
    """Compare every legacy row with its split rows (chunked: hash, then rows, then columns) and run every
    check in validators/. Exit 0 clean, 1 on any mismatch (naming every id and column). From backfilled, a clean
    result moves the state to validated; in later states it only checks."""
    from migrator.phases import validate as phase
    from migrator.verify.result import ValidationFailed, ValidationResult

    defaults = phase.Options()
    opts = phase.Options(
        junit=Path(junit) if junit else None,
        report=Path(report) if report else None,
        accept_quarantine=accept_quarantine,
        chunk_rows=chunk_rows,
        workers=workers or defaults.workers,
        max_rows_per_second=max_rows_per_second,
        full_speed=full_speed,
        health=health,
    )
    start = begin(app, check_spec=True)
    progress = reporter(app, "validate")
    validation = phase.Validate(opts)

    def details(result: ValidationResult, moved_to: str | None) -> dict[str, object]:
        found = result.as_dict()
        # The state the comparison ran in; the result's `state` is where the migration is now.
        found["validated_in"] = found.pop("state")
        quarantine = result.quarantine
        # validate accepts every open row it reported, in the transaction that moves the state.
        accepted_now = quarantine.unaccepted if moved_to and accept_quarantine else 0
        found["quarantine"] = {
            **found["quarantine"],
            "accepted": quarantine.accepted + accepted_now,
            "accepted_now": accepted_now,
        }
        return found

    try:
        with progress.running():
            validation.apply(context(app, progress, reason=reason))
    except ValidationFailed as exc:
        app.outcome.details.update(details(exc.result, None))
        app.observer.event("validation-failed", mismatches=exc.result.mismatches, summary=exc.result.summary())
        raise
    except BaseException:
        if validation.result is not None:
            app.outcome.details.update(details(validation.result, None))
        raise
    result = validation.result
    assert result is not None
    done(app)
    after = app.outcome.after
    moved_to = after.state if after is not None and after.state != start.state else None
    app.outcome.details.update(details(result, moved_to))
    if not app.json:
        console.success(result.summary() + (f"; the migration is now in {moved_to}" if moved_to else ""))


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

    begin(app, check_spec=True)
    phase.SwitchReads(phase.Options(percent=percent)).apply(context(app, reason=reason))
    done(app, details={"read_percent": percent})
    if not app.json:
        console.success(f"switch-reads: {moved(app)}, {percent}% of reads on the split tables")


@cli.command("switch-writes")
@reason_option
@examples("migrator switch-writes")
@pass_app
def switch_writes(app: App, reason: str | None) -> None:
    """read_new -> write_new: applications write the split tables; reverse triggers keep legacy complete and
    the forward triggers stay on for instances not yet switched."""
    from migrator.phases.switch_writes import SwitchWrites

    begin(app, check_spec=True)
    SwitchWrites().apply(context(app, reason=reason))
    done(app)
    _said(app, "switch-writes")


@cli.command()
@defaulted("--quiet-period", finite(min=0), 60, "Seconds the legacy table must have gone without direct writes.")
@click.option("--compat-view", is_flag=True, help="Leave a view with the legacy name and shape over the split tables.")
@defaulted("--wait", finite(min=0), 0, "Seconds to keep waiting for the quiet period instead of refusing at once.")
@reason_option
@examples("migrator contract --compat-view", "migrator --yes contract --quiet-period 300")
@pass_app
def contract(app: App, quiet_period: float, compat_view: bool, wait: float, reason: str | None) -> None:
    """write_new -> contracted: re-point foreign keys at the base table, stop the sync, archive the legacy table
    (renamed, never dropped)."""
    from migrator.phases import contract as phase
    from migrator.sqlgen.names import archive_name

    begin(app, check_spec=True)
    console.confirm(
        f"archive {app.spec.source.table} as {archive_name(app.spec)} and stop the sync?", assume_yes=app.yes
    )
    opts = phase.Options(quiet_period=quiet_period, compat_view=compat_view, wait=wait)
    phase.Contract(opts).apply(context(app, reason=reason))
    done(app, details={"archive": archive_name(app.spec), "compat_view": compat_view})
    _said(app, "contract")


@cli.command()
@click.option(
    "--to", "to_state", type=click.Choice(lifecycle.STATES), help="Roll back step by step down to this state."
)
@click.option(
    "--drop-tables",
    is_flag=True,
    help=f"On the rollback from {BACKFILL_STATE} to {lifecycle.START}: also drop the split tables migrator created.",
)
@click.option(
    "--max-rows-per-second",
    type=finite(min=1),
    help="From contracted: throttle the reverse backfill (leaves CPU to the application).",
)
@defaulted(
    "--quiet-period",
    finite(min=0),
    60,
    "Before the reverse sync goes: seconds the split tables must have gone without direct writes.",
)
@defaulted("--wait", finite(min=0), 0, "Seconds to keep waiting for that quiet period instead of refusing.")
@long_job
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
    full_speed: bool,
    reason: str | None,
    health: Limits,
) -> None:
    """Go back one state (or down to --to STATE) without losing a write made meanwhile."""
    from migrator import operations
    from migrator.phases.base import RollbackOptions

    current = begin(app)
    target = to_state or lifecycle.previous(current.state)
    if drop_tables and target is not None and target != lifecycle.START:
        # The split tables go only with the last step back (to the start): refused here, before anything is asked
        # or changed, rather than confirmed and then ignored.
        raise BadInputError(
            f"--drop-tables drops the split tables on the rollback to {lifecycle.START}, and this rollback ends in "
            f"{target} (the migration is in {current.state})",
            hint=f"run `migrator rollback --to {lifecycle.START} --drop-tables` to go all the way back and drop "
            "them, or leave out --drop-tables",
        )
    if drop_tables:
        console.confirm(f"drop the split tables {', '.join(app.spec.split_tables())}?", assume_yes=app.yes)
    opts = RollbackOptions(
        drop_tables=drop_tables,
        max_rows_per_second=max_rows_per_second,
        quiet_period=quiet_period,
        wait=wait,
        full_speed=full_speed,
        health=health,
    )
    steps = operations.rollback(context(app, reason=reason), to_state, opts)
    done(app, details={"steps": [list(step) for step in steps], "drop_tables": drop_tables})
    if not app.json:
        for frm, to in steps:
            console.success(f"rolled back {frm} -> {to}")

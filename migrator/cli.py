"""The `migrator` command: parse options, call one library function, render the result. No SQL here."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click
import psycopg
from sqlalchemy import exc as sa_exc

from migrator import console
from migrator.db import DEFAULT_LOCK_TIMEOUT, Database, mask_dsn
from migrator.errors import BadInputError, GuardFailed, MigratorError
from migrator.spec import Spec, load_spec

F = TypeVar("F", bound=Callable[..., Any])

# The same names as planning.PHASES (a test keeps them equal); listed here so `--help` stays fast.
PHASE_NAMES = ("expand", "backfill", "validate", "switch-reads", "switch-writes", "contract")

_verbose = False
_secrets: list[str] = []


@dataclass
class App:
    """Global options and lazily built spec/database, shared by every command."""

    dsn: str | None
    spec_path: str | None
    json: bool
    yes: bool
    verbose: bool
    lock_timeout: float
    _spec: Spec | None = field(default=None, repr=False)
    _db: Database | None = field(default=None, repr=False)

    @property
    def spec(self) -> Spec:
        if self._spec is None:
            self._spec = load_spec(self.spec_path)
        return self._spec

    @property
    def db(self) -> Database:
        if self._db is None:
            dsn = self.dsn
            if not dsn:
                from migrator import embedded

                dsn = embedded.dsn()
                if not self.json:
                    console.info(f"no --dsn or DATABASE_URL: using the embedded PostgreSQL in {embedded.default_dir()}")
            self._db = Database(dsn)
            if self._db.password:
                _secrets.append(self._db.password)
        return self._db


pass_app = click.make_pass_decorator(App)


def _scrub(text: str) -> str:
    for secret in _secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _remember_secret(dsn: str | None) -> None:
    # Record the password before anything can fail, so even a DSN that does not parse is never echoed back.
    if not dsn:
        return
    match = re.search(r"://[^:/@]*:([^@]*)@", dsn) or re.search(r"password\s*=\s*'?([^'\s]+)", dsn)
    if match and match.group(1):
        _secrets.append(match.group(1))


def examples(*lines: str) -> Callable[[F], F]:
    """Append an Examples section to a command's --help."""

    def deco(fn: F) -> F:
        text = "\n\n\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
        fn.__doc__ = (fn.__doc__ or "") + text
        return fn

    return deco


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--dsn", envvar="DATABASE_URL", help="PostgreSQL DSN (default: $DATABASE_URL, else embedded).")
@click.option("--spec", "spec_path", envvar="MIGRATOR_SPEC", help="Spec TOML file (default: built-in projects).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--yes", "-y", is_flag=True, help="Answer yes to confirmations (scripts, CI).")
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks on errors.")
@click.option(
    "--lock-timeout",
    type=float,
    default=DEFAULT_LOCK_TIMEOUT,
    show_default=True,
    help="Seconds a DDL step waits for its lock before it retries.",
)
@click.version_option(package_name="migrator")
@click.pass_context
def cli(
    ctx: click.Context,
    dsn: str | None,
    spec_path: str | None,
    as_json: bool,
    yes: bool,
    verbose: bool,
    lock_timeout: float,
) -> None:
    """Split a live wide PostgreSQL table into a normalized schema, phase by phase, without downtime.

    \b
    Phases:  expand -> backfill -> validate -> switch-reads -> switch-writes -> contract
    Any state can be rolled back with `migrator rollback`.
    """
    global _verbose  # noqa: PLW0603 — the error handler runs after click's context is gone
    _verbose = verbose
    _remember_secret(dsn)
    ctx.obj = App(dsn or None, spec_path, as_json, yes, verbose, lock_timeout)


@cli.command()
@click.option("--rows", type=click.IntRange(min=0), default=10_000, show_default=True, help="Projects to insert.")
@click.option(
    "--dirty-ratio",
    type=click.FloatRange(0, 1),
    default=0.05,
    show_default=True,
    help="Share of rows missing required variant fields, as the legacy app allowed.",
)
@click.option("--random-seed", type=int, default=42, show_default=True, help="Same seed, same data.")
@examples("migrator seed --rows 1000000", "migrator --dsn postgresql://app@db/shop seed --rows 5000 --dirty-ratio 0.1")
@pass_app
def seed(app: App, rows: int, dirty_ratio: float, random_seed: int) -> None:
    """Create the seed document's legacy schema (core_project & co) and insert synthetic rows."""
    from migrator import seed as seed_mod

    reporter = console.JsonReporter() if app.json else console.ProgressReporter("seeding core_project")
    with reporter.running(), app.db.connect() as conn:
        try:
            result = seed_mod.seed(
                conn, rows, dirty_ratio=dirty_ratio, random_seed=random_seed, on_progress=reporter.progress
            )
        except ValueError as exc:
            raise BadInputError(str(exc)) from None
    if app.json:
        console.print_json(
            {
                "event": "done",
                "rows": result.rows,
                "dirty": result.dirty,
                "users": result.users,
                "seconds": round(result.seconds, 3),
            }
        )
    else:
        console.success(
            f"seeded {result.rows:,} projects ({result.dirty:,} dirty) and {result.users:,} users "
            f"in {result.seconds:.1f} s"
        )


@cli.command()
@click.argument("phase", required=False, type=click.Choice(PHASE_NAMES))
@examples("migrator plan", "migrator plan expand > expand.sql", "migrator --spec payments.toml plan --json")
@pass_app
def plan(app: App, phase: str | None) -> None:
    """Print the SQL each phase would run, in order. Writes nothing and needs no database."""
    from migrator import planning

    phases = planning.plans(app.spec, [phase] if phase else None, lock_timeout=app.lock_timeout)
    if app.json:
        console.print_json(
            [
                {
                    "phase": p,
                    "steps": [
                        {"description": a.description, "sql": a.text(), "transactional": a.transactional}
                        for a in actions
                    ],
                }
                for p, actions in phases
            ]
        )
        return
    console.sql_script(planning.render_script(phases, lock_timeout=app.lock_timeout))


@cli.command()
@examples("migrator status", "migrator status --json | jq .state")
@pass_app
def status(app: App) -> None:
    """Show the migration state, flags, table sizes and row counts, and the quarantine."""
    from migrator import status as status_mod

    st = status_mod.collect(app.db, app.spec)
    if app.json:
        console.print_json(st.as_dict())
        return
    nxt = f"   next: migrator {st.next_command}" if st.next_command else ""
    console.out.print(f"[bold]{st.migration}[/] on {st.database}")
    console.out.print(f"state: [bold cyan]{st.state}[/]{nxt}")
    if st.read_percent or st.paused:
        console.out.print(f"reads on split: {st.read_percent}%   paused: {console._fmt(st.paused)}")
    rows = [
        (
            t.role,
            t.table,
            t.rows if t.exists else "absent" if t.rows is None else t.rows,
            "" if t.exact or not t.exists else "estimate",
            console.human_bytes(t.bytes),
        )
        for t in st.tables
    ]
    console.table("tables", ["role", "table", "rows", "", "size"], rows)
    if st.quarantine_open is not None:
        console.out.print(f"quarantine: {st.quarantine_open:,} open row(s)")


def _context(app: App, reporter: Any = None, **options: Any) -> Any:
    from migrator.phases.base import Context

    return Context(
        app.spec,
        app.db,
        lock_timeout=app.lock_timeout,
        reporter=reporter or (console.JsonReporter() if app.json else console.StepReporter()),
        options=options,
    )


def _done(app: App, command: str, to_state: str, **extra: Any) -> None:
    if app.json:
        console.print_json({"event": "done", "command": command, "state": to_state, **extra})
    else:
        console.success(f"{command}: the migration is now in {to_state}")


@cli.command()
@click.option("--reason", help="Why, for the audit log.")
@examples("migrator expand", "migrator --spec payments.toml --lock-timeout 0.5 expand --reason 'CHG-1234'")
@pass_app
def expand(app: App, reason: str | None) -> None:
    """legacy -> dual_write: create the split tables, constraints and indexes, then the forward sync triggers.

    Every DDL step runs under SET LOCAL lock_timeout and is retried; indexes are built CONCURRENTLY; foreign
    keys are added NOT VALID and validated afterwards. Re-running after a crash finishes the job.
    """
    from migrator.phases import expand as phase

    phase.apply(_context(app, reason=reason))
    _done(app, "expand", "dual_write")


@cli.command()
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Parallel workers in this process (they claim key ranges with SKIP LOCKED).",
)
@click.option(
    "--chunk-time",
    type=click.FloatRange(0.005, 60),
    default=0.1,
    show_default=True,
    help="Target seconds per chunk; the chunk size adapts to it.",
)
@click.option("--batch-size", type=click.IntRange(1, 1_000_000), help="Fixed rows per chunk instead.")
@click.option("--max-rows-per-second", type=click.FloatRange(min=1), help="Throttle the copy.")
@click.option("--throttle-query", help="SQL returning a number; > 0 means wait (e.g. replica lag in seconds).")
@click.option(
    "--chunk-lock-timeout",
    type=click.FloatRange(0.001, 10),
    default=0.05,
    show_default=True,
    help="Seconds a chunk waits for an application's row lock before it retries smaller.",
)
@click.option("--join", "join_", is_flag=True, help="Lend workers to a backfill another process coordinates.")
@click.option("--reason", help="Why, for the audit log.")
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
        phase.apply(_context(app, reporter, backfill=opts, reason=reason))
    _done(app, "backfill", "dual_write (joined)" if join_ else "backfilled")


@cli.command()
@examples("migrator pause", "migrator resume")
@pass_app
def pause(app: App) -> None:
    """Pause every backfill worker (they stop within one chunk and wait)."""
    from migrator import state

    with app.db.connect(autocommit=True) as conn:
        state.set_flags(conn, app.spec, paused=True)
    _done(app, "pause", "paused")


@cli.command()
@examples("migrator resume")
@pass_app
def resume(app: App) -> None:
    """Let paused backfill workers continue."""
    from migrator import state

    with app.db.connect(autocommit=True) as conn:
        state.set_flags(conn, app.spec, paused=False)
    _done(app, "resume", "running")


@cli.command()
@click.option("--junit", type=click.Path(dir_okay=False), help="Write JUnit XML (one testcase per check).")
@click.option("--report", type=click.Path(dir_okay=False), help="Write the full report as JSON.")
@click.option("--accept-quarantine", is_flag=True, help="Let quarantined rows pass (audited; they stay in legacy).")
@click.option("--chunk-rows", type=click.IntRange(min=100), help="Keys per compared chunk.")
@click.option("--workers", type=click.IntRange(min=1), help="Chunks compared at once (default 2).")
@click.option(
    "--max-rows-per-second", type=click.FloatRange(min=1), help="Throttle the reads (leaves CPU to the application)."
)
@click.option("--reason", help="Why, for the audit log.")
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

    reporter = console.JsonReporter() if app.json else console.ProgressReporter("validate")
    try:
        with reporter.running():
            result = phase.apply(
                _context(
                    app,
                    reporter,
                    junit=junit,
                    report=report,
                    accept_quarantine=accept_quarantine,
                    chunk_rows=chunk_rows,
                    workers=workers,
                    max_rows_per_second=max_rows_per_second,
                    reason=reason,
                )
            )
    except phase.ValidationFailed as exc:
        if app.json:
            console.print_json({"event": "done", "command": "validate", **exc.result.as_dict()})
        raise
    if app.json:
        console.print_json({"event": "done", "command": "validate", **result.as_dict()})
    else:
        console.success(result.summary())


@cli.command()
@click.option(
    "--snapshot",
    type=click.Path(exists=True),
    required=True,
    help="pg_dump file (-Fp, .sql.gz, -Fc, -Ft) or -Fd directory.",
)
@click.option("--junit", type=click.Path(dir_okay=False), help="Write JUnit XML (one testcase per step and per check).")
@click.option("--report", type=click.Path(dir_okay=False), help="Write the full report as JSON.")
@click.option("--chunk-rows", type=click.IntRange(min=100), help="Keys per compared chunk.")
@examples(
    "migrator --dsn postgresql://ci@db-ci/postgres rehearse --snapshot prod.dump --junit rehearsal.xml",
    "migrator rehearse --snapshot prod.sql.gz --report rehearsal.json   # on a temporary embedded PostgreSQL",
)
@pass_app
def rehearse(app: App, snapshot: str, junit: str | None, report: str | None, chunk_rows: int | None) -> None:
    """Restore a pg_dump into a throwaway database on the --dsn server (a temporary embedded one when none), run
    every phase and every rollback on it, validating at each step; the database is dropped afterwards. Exit 0
    when every step passed, 1 otherwise."""
    from pathlib import Path

    from migrator import rehearse as mod
    from migrator.phases import validate as phase

    reporter = console.JsonReporter() if app.json else console.StepReporter()
    with reporter.running():
        # app.dsn, not app.db: without a DSN the rehearsal gets a temporary embedded server, not the kept one.
        result = mod.rehearse(
            app.dsn,
            Path(snapshot),
            app.spec,
            junit=Path(junit) if junit else None,
            report=Path(report) if report else None,
            reporter=reporter,
            chunk_rows=chunk_rows or phase.DEFAULT_CHUNK_ROWS,
        )
    if app.json:
        console.print_json({"event": "done", "command": "rehearse", **result.as_dict()})
    else:
        console.table(
            "rehearsal",
            ["step", "ok", "s", "state", "error"],
            [
                (s.name, "skipped" if s.skipped else s.ok, round(s.seconds, 2), s.state or "", s.error or "")
                for s in result.steps
            ],
        )
    if not result.ok:
        raise GuardFailed(result.summary(), hint="the --junit/--report files list each step and every failing row")
    if not app.json:
        console.success(result.summary())


@cli.command("switch-reads")
@click.option(
    "--percent",
    type=click.IntRange(1, 100),
    default=100,
    show_default=True,
    help="Share of request keys that read the split tables (raise it again later).",
)
@click.option("--reason", help="Why, for the audit log.")
@examples("migrator switch-reads --percent 10", "migrator switch-reads            # 100%")
@pass_app
def switch_reads(app: App, percent: int, reason: str | None) -> None:
    """validated -> read_new: applications read the split tables (P% of request keys). Guard: legacy equals
    split right now."""
    from migrator.phases import switch_reads as phase

    phase.apply(_context(app, percent=percent, reason=reason))
    _done(app, "switch-reads", f"read_new ({percent}% of reads on split)")


@cli.command("switch-writes")
@click.option("--reason", help="Why, for the audit log.")
@examples("migrator switch-writes")
@pass_app
def switch_writes(app: App, reason: str | None) -> None:
    """read_new -> write_new: applications write the split tables; reverse triggers keep legacy complete and
    the forward triggers stay on for instances not yet switched."""
    from migrator.phases import switch_writes as phase

    phase.apply(_context(app, reason=reason))
    _done(app, "switch-writes", "write_new")


@cli.command()
@click.option(
    "--quiet-period",
    type=click.FloatRange(min=0),
    default=60,
    show_default=True,
    help="Seconds the legacy table must have gone without direct writes.",
)
@click.option("--compat-view", is_flag=True, help="Leave a view with the legacy name and shape over the split tables.")
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Seconds to keep waiting for the quiet period instead of refusing at once.",
)
@click.option("--reason", help="Why, for the audit log.")
@examples("migrator contract --compat-view", "migrator --yes contract --quiet-period 300")
@pass_app
def contract(app: App, quiet_period: float, compat_view: bool, wait: float, reason: str | None) -> None:
    """write_new -> contracted: re-point foreign keys at the base table, stop the sync, archive the legacy table
    (renamed, never dropped)."""
    from migrator.phases import contract as phase

    console.confirm(
        f"archive {app.spec.source.table} as {phase.archive_name(app.spec)} and stop the sync?", assume_yes=app.yes
    )
    phase.apply(_context(app, quiet_period=quiet_period, compat_view=compat_view, wait=wait, reason=reason))
    _done(app, "contract", "contracted")


@cli.command()
@click.option("--to", "to_state", help="Roll back step by step down to this state.")
@click.option("--drop-tables", is_flag=True, help="From dual_write: also drop the (empty-able) split tables.")
@click.option(
    "--max-rows-per-second",
    type=click.FloatRange(min=1),
    help="From contracted: throttle the reverse backfill (leaves CPU to the application).",
)
@click.option("--reason", help="Why, for the audit log.")
@examples("migrator rollback", "migrator rollback --to legacy --drop-tables --yes")
@pass_app
def rollback(
    app: App, to_state: str | None, drop_tables: bool, max_rows_per_second: float | None, reason: str | None
) -> None:
    """Go back one state (or down to --to STATE) without losing a write made meanwhile."""
    from migrator import lifecycle

    if drop_tables:
        console.confirm(f"drop the split tables {', '.join(app.spec.split_tables())}?", assume_yes=app.yes)
    ctx = _context(app, drop_tables=drop_tables, max_rows_per_second=max_rows_per_second, reason=reason)
    steps = lifecycle.rollback(ctx, to_state)
    if app.json:
        console.print_json(
            {"event": "done", "command": "rollback", "steps": steps, "state": steps[-1][1] if steps else None}
        )
    else:
        for frm, to in steps:
            console.success(f"rolled back {frm} -> {to}")


@cli.command()
@click.argument(
    "state_name",
    metavar="[STATE]",
    required=False,
    type=click.Choice(["legacy", "dual_write", "backfilled", "validated", "read_new", "write_new", "contracted"]),
)
@examples("migrator runbook", "migrator runbook write_new")
@pass_app
def runbook(app: App, state_name: str | None) -> None:
    """Print the on-call page for the current state (or the one given): health checks, rollback, how to verify."""
    from migrator import runbooks

    if state_name is None:
        from migrator import state as state_mod

        with app.db.connect(autocommit=True) as conn:
            state_name = state_mod.read(conn, app.spec).state
    text = runbooks.page(state_name)
    if app.json:
        console.print_json({"state": state_name, "markdown": text, "commands": runbooks.commands(text)})
    else:
        console.markdown(text)


@cli.command()
@click.option("--rows", type=click.IntRange(min=100), default=100_000, show_default=True, help="Legacy rows to seed.")
@click.option(
    "--rate",
    type=click.FloatRange(min=1),
    default=100,
    show_default=True,
    help="The live writer's transactions per second.",
)
@examples("migrator demo", "migrator demo --rows 1000000", "migrator --dsn postgresql://me@localhost/postgres demo")
@pass_app
def demo(app: App, rows: int, rate: float) -> None:
    """The whole lifecycle under a live writer, in a database of its own (`migrator_demo`, re-created).

    With no DSN it runs on the embedded PostgreSQL. Ends in `contracted` with a summary: time per phase, the
    writer's transactions and failures (0), quarantined rows.
    """
    from migrator import demo as demo_mod

    reporter = console.JsonReporter() if app.json else console.ProgressReporter("demo")
    server = app.db.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with reporter.running():
        result = demo_mod.run(
            server, rows, reporter, rate=rate, on_phase=None if app.json else lambda t: console.info(f"▶ {t}")
        )
    if app.json:
        console.print_json(
            {
                "event": "done",
                "database": result.database,
                "rows": result.rows,
                "phases": [{"phase": p, "seconds": round(s, 3), "state": st} for p, s, st in result.phases],
                "writer": result.writer.__dict__,
                "quarantined": result.quarantined_before_fix,
                "state": result.final_state,
            }
        )
        return
    console.table(
        f"demo: {result.rows:,} rows in database {result.database}",
        ["phase", "seconds", "state after"],
        [(p, round(s, 2), st) for p, s, st in result.phases],
    )
    w = result.writer
    console.table(
        "live writer",
        ["transactions", "to legacy", "to split", "failures"],
        [(w.transactions, w.legacy_writes, w.split_writes, w.failures)],
    )
    console.out.print(
        f"quarantined rows found by the backfill (then fixed by the 'application'): {result.quarantined_before_fix:,}"
    )
    for e in w.errors:
        console.warn(f"writer error: {e}")
    if w.failures:
        raise GuardFailed(f"the live writer saw {w.failures} failed transactions")
    console.success(f"demo finished in state {result.final_state} with 0 failed writer transactions")


@cli.command("embedded")
@click.option("--stop", is_flag=True, help="Stop the kept embedded server.")
@examples("migrator embedded", "migrator embedded --stop")
@pass_app
def embedded_cmd(app: App, stop: bool) -> None:
    """Start (or show) the embedded PostgreSQL used when no DSN is given; --stop stops it."""
    from migrator import embedded

    if stop:
        stopped = embedded.stop()
        console.success("embedded PostgreSQL stopped" if stopped else "no embedded PostgreSQL was running")
        return
    dsn = embedded.dsn()
    if app.json:
        console.print_json({"dsn": mask_dsn(dsn), "data_dir": str(embedded.default_dir())})
    else:
        console.out.print(dsn)


def _handle(exc: BaseException) -> int:
    """One line for a human (a traceback only with -v); the exit code DESIGN.md assigns."""
    if _verbose:
        console.traceback()
    if isinstance(exc, MigratorError):
        console.error(_scrub(str(exc)))
        return exc.exit_code
    if isinstance(exc, sa_exc.DBAPIError | psycopg.Error):
        orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
        state = getattr(orig, "sqlstate", None)
        first = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
        console.error(
            _scrub(f"database error{f' {state}' if state else ''}: {first}")
            + ("" if _verbose else "  (run with -v for the traceback)")
        )
        return 3
    if isinstance(exc, OSError):
        console.error(_scrub(f"{exc}"))
        return 3
    console.error(_scrub(f"unexpected error: {type(exc).__name__}: {exc}") + "  (run with -v for the traceback)")
    return 3


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="migrator", standalone_mode=False)
    except click.exceptions.Abort:
        console.error("aborted")
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(BadInputError.exit_code if exc.exit_code == 2 else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.error("interrupted; every completed step is committed, re-run the command to continue")
        sys.exit(130)
    except Exception as exc:
        sys.exit(_handle(exc))
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()

"""Commands that are not phases: seed, plan, status, rehearse, runbook, demo, embedded. Each reports its result
(migrator.results) through `done`."""

from __future__ import annotations

from pathlib import Path

import click

from migrator import console, lifecycle
from migrator.cli.app import App, begin, cli, context, defaulted, done, examples, finite, pass_app, reporter
from migrator.db import libpq_dsn, mask_dsn
from migrator.errors import BadInputError, GuardFailed


@cli.command()
@click.option("--rows", type=click.IntRange(min=0), default=10_000, show_default=True, help="Projects to insert.")
@defaulted(
    "--dirty-ratio",
    finite(0, 1),
    0.05,
    "Share of rows missing required variant fields, as the legacy app allowed.",
)
@click.option("--random-seed", type=int, default=42, show_default=True, help="Same seed, same data.")
@examples("migrator seed --rows 1000000", "migrator --dsn postgresql://app@db/shop seed --rows 5000 --dirty-ratio 0.1")
@pass_app
def seed(app: App, rows: int, dirty_ratio: float, random_seed: int) -> None:
    """Create the seed document's legacy schema (core_project & co) and insert synthetic rows."""
    from migrator import seed as seed_mod

    begin(app)
    progress = reporter(app, "seeding core_project")
    with progress.running(), app.db.connect() as conn:
        try:
            result = seed_mod.seed(
                conn, rows, dirty_ratio=dirty_ratio, random_seed=random_seed, on_progress=progress.progress
            )
        except ValueError as exc:
            raise BadInputError(str(exc)) from None
    done(
        app,
        f"seeded {result.rows:,} projects ({result.dirty:,} dirty) and {result.users:,} users "
        f"in {result.seconds:.1f} s",
        details={
            "rows": result.rows,
            "dirty": result.dirty,
            "users": result.users,
            "seconds": round(result.seconds, 3),
        },
        changed=result.rows > 0 or result.users > 0,
    )


@cli.command()
@click.argument("phase", required=False, type=click.Choice(lifecycle.PHASE_NAMES))
@click.option(
    "--live",
    is_flag=True,
    help="Plan against the database (read-only): grants, dependents, CHECKs and policies as they are now.",
)
@click.option("--compat-view", is_flag=True, help="With --live: plan contract with its compatibility view.")
@examples(
    "migrator plan",
    "migrator plan expand > expand.sql",
    "migrator --spec payments.toml --json plan | jq '.details.phases[0].steps[].sql'",
    "migrator plan --live --compat-view contract     # what contract will do with each view on the table",
)
@pass_app
def plan(app: App, phase: str | None, live: bool, compat_view: bool) -> None:
    """Print the SQL each phase would run, in order. Writes nothing; needs no database unless --live."""
    from migrator import operations
    from migrator.phases import contract

    only = [phase] if phase else None
    if live:
        options = {"contract": contract.Options(compat_view=compat_view)}
        phases = operations.live_plans(context(app), only, options)
    else:
        if compat_view:
            raise BadInputError("--compat-view plans contract against the database", hint="add --live")
        phases = operations.plans(app.spec, only, lock_timeout=app.lock_timeout)
    listed = [
        {
            "phase": p,
            "steps": [
                {"description": a.description, "sql": a.text(), "transactional": a.transactional} for a in actions
            ],
        }
        for p, actions in phases
    ]
    done(app, details={"phases": listed}, changed=False)
    if not app.json:
        console.sql_script(operations.render_script(phases, lock_timeout=app.lock_timeout))


@cli.command()
@examples("migrator status", "migrator --json status | jq -r .state")
@pass_app
def status(app: App) -> None:
    """Show the migration state, flags, table sizes and row counts, and the quarantine."""
    from migrator import status as status_mod

    st = status_mod.collect(app.db, app.spec)
    found = st.as_dict()
    legacy = next((t for t in st.tables if t.role == "legacy"), None)
    problem = None
    if legacy is not None and not legacy.exists:
        # Nothing to migrate here: "next: expand" would only send the operator into a failing command.
        problem = (
            f"the legacy table {legacy.table} does not exist in {st.database}: check --dsn / DATABASE_URL and "
            "[source] in the spec (`migrator seed` creates the demo schema)"
        )
        found["next_command"] = None
    found["problem"] = problem
    done(app, details=found, state=st.state, from_state=st.state, changed=False)
    if app.json:
        return
    nxt = f"   next: migrator {st.next_command}" if st.next_command and not problem else ""
    console.out.print(f"[bold]{st.migration}[/] on {st.database}")
    console.out.print(f"state: [bold cyan]{st.state}[/]{nxt}")
    if st.interrupted:
        console.out.print(f"[bold yellow]interrupted:[/] {st.interrupted}")
    if st.in_progress:
        console.out.print(f"[bold cyan]in progress:[/] {st.in_progress}", highlight=False)
    if st.no_rollback:
        console.out.print(f"[bold red]{st.no_rollback}[/]")
    for line in st.job_lines:
        console.out.print(f"running: {line}", markup=False, highlight=False)
    if problem:
        console.warn(problem)
    if st.read_percent or st.paused:
        console.out.print(f"reads on split: {st.read_percent}%   paused: {console.fmt(st.paused)}")
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
@defaulted(
    "--quiet-period",
    finite(min=0),
    1.0,
    "The rehearsal's quiet periods (contract, and the rollback that removes the reverse sync); a real run's: 60 s.",
)
@defaulted(
    "--writer-rate",
    finite(min=0),
    40.0,
    "Transactions/s of the synthetic application (built-in spec only; 0: none).",
)
@examples(
    "migrator --dsn postgresql://ci@db-ci/postgres rehearse --snapshot prod.dump --junit rehearsal.xml",
    "migrator rehearse --snapshot prod.sql.gz --report rehearsal.json   # on a temporary embedded PostgreSQL",
    "migrator --json rehearse --snapshot prod.dump | jq -r '.details.failed_step // \"passed\"'",
)
@pass_app
def rehearse(
    app: App,
    snapshot: str,
    junit: str | None,
    report: str | None,
    chunk_rows: int | None,
    quiet_period: float,
    writer_rate: float,
) -> None:
    """Restore a pg_dump into a throwaway database on the --dsn server (a temporary embedded one when none) and
    run the whole lifecycle on it with the real guards: every phase through contract --compat-view, every rollback
    one state at a time back to legacy (the one from contracted included), and every phase again, validating after
    each step where the split side is complete, under a synthetic writer that follows the flags (built-in spec).
    Quiet periods are shortened and validate accepts the quarantine; the report's notes say so. The database is
    dropped afterwards. Exit 0 when every step passed, 1 otherwise."""
    from migrator import rehearse as mod
    from migrator.verify.runner import DEFAULT_CHUNK_ROWS

    settings = mod.Settings(
        quiet_period=quiet_period, writer_rate=writer_rate, chunk_rows=chunk_rows or DEFAULT_CHUNK_ROWS
    )
    progress = console.JsonReporter() if app.json else console.StepReporter()
    with progress.running():
        # app.dsn, not app.db: without a DSN the rehearsal gets a temporary embedded server, not the kept one.
        result = mod.rehearse(
            app.dsn,
            Path(snapshot),
            app.spec,
            junit=Path(junit) if junit else None,
            report=Path(report) if report else None,
            reporter=progress,
            settings=settings,
        )
    details = result.as_dict()
    # The full validation report is in --report; the result keeps its counts.
    if details["validation"] is not None:
        details["validation"] = {k: details["validation"][k] for k in ("ok", "rows", "mismatches", "counts")}
    done(app, details=details, changed=False)
    if not app.json:
        console.table(
            "rehearsal",
            ["step", "ok", "s", "state", "legacy rows", "base rows", "quarantined"],
            [
                (
                    s.name,
                    "skipped" if s.skipped else s.ok,
                    round(s.seconds, 2),
                    s.state or "",
                    *_legacy_and_base(s.details.get("rows", {})),
                    s.details.get("quarantine_open"),
                )
                for s in result.steps
            ],
        )
        for note in result.notes:
            console.info(f"note: {note}")
    if not result.ok:
        raise GuardFailed(result.summary(), hint="the --junit/--report files list each step and every failing row")
    if not app.json:
        console.success(result.summary())


def _legacy_and_base(rows: dict[str, int]) -> tuple[int | None, int | None]:
    """A step's legacy (or archived) and base table row counts: the first two of its counts (status's order)."""
    counts = list(rows.values())
    return (counts[0] if counts else None, counts[1] if len(counts) > 1 else None)


@cli.command()
@click.argument(
    "state_name",
    metavar="[STATE]",
    required=False,
    type=click.Choice(lifecycle.STATES),
)
@examples("migrator runbook", "migrator runbook write_new")
@pass_app
def runbook(app: App, state_name: str | None) -> None:
    """Print the on-call page for the current state (or the one given): health checks, rollback, how to verify."""
    from migrator import runbooks

    page = state_name or begin(app).state
    text = runbooks.page(page)
    found = {"page": page, "markdown": text, "commands": runbooks.commands(text)}
    done(app, details=found, changed=False)
    # Kept at the top level too, for scripts written against 0.1 (`.commands`).
    app.outcome.extra.update({"markdown": text, "commands": found["commands"]})
    if not app.json:
        console.markdown(text)


@cli.command()
@click.option("--rows", type=click.IntRange(min=100), default=100_000, show_default=True, help="Legacy rows to seed.")
@defaulted("--rate", finite(min=1), 100, "The live writer's transactions per second.")
@examples("migrator demo", "migrator demo --rows 1000000", "migrator --dsn postgresql://me@localhost/demo demo --yes")
@pass_app
def demo(app: App, rows: int, rate: float) -> None:
    """The whole lifecycle under a live writer, in the database the DSN names (created when missing); with no
    DSN, the embedded PostgreSQL's default database, so a plain `migrator status` afterwards shows it.

    What an earlier demo left there is dropped; tables of the demo's names that a demo did not create are dropped
    only after confirmation (--yes). Ends in `contracted` with a summary: time per phase, the writer's
    transactions and failures (0), quarantined rows.
    """
    from migrator import demo as demo_mod

    dsn = libpq_dsn(app.db.url)
    shown = mask_dsn(dsn)
    console.info(f"demo database: {shown}")
    progress = reporter(app, "demo")
    with progress.running():
        result = demo_mod.run(
            dsn,
            rows,
            progress,
            rate=rate,
            on_phase=None if app.json else lambda t: console.info(f"▶ {t}"),
            confirm=lambda question: console.confirm(question, assume_yes=app.yes),
        )
    status_cmd = "migrator status" if not app.dsn else f"migrator --dsn '{shown}' status"
    w = result.writer
    done(
        app,
        details={
            "dsn": shown,
            "database": result.database,
            "created_database": result.created_database,
            "dropped": result.dropped,
            "rows": result.rows,
            "phases": [{"phase": p, "seconds": round(s, 3), "state": st} for p, s, st in result.phases],
            "writer": w.__dict__,
            "quarantined": result.quarantined_before_fix,
            "status_command": status_cmd,
        },
        state=result.final_state,
        from_state=lifecycle.START,
        changed=True,
    )
    if w.failures:
        raise GuardFailed(f"the live writer saw {w.failures} failed transactions: {'; '.join(w.errors)}")
    if app.json:
        return
    console.table(
        f"demo: {result.rows:,} rows in database {result.database}",
        ["phase", "seconds", "state after"],
        [(p, round(s, 2), st) for p, s, st in result.phases],
    )
    console.table(
        "live writer",
        ["transactions", "to legacy", "to split", "failures"],
        [(w.transactions, w.legacy_writes, w.split_writes, w.failures)],
    )
    console.out.print(
        f"quarantined rows found by the backfill (then fixed by the 'application'): {result.quarantined_before_fix:,}"
    )
    console.success(f"demo finished in state {result.final_state} with 0 failed writer transactions")
    console.info(f"the demo database is {shown}; look at it with: {status_cmd}")


@cli.command("embedded")
@click.option("--stop", is_flag=True, help="Stop the kept embedded server.")
@click.option("--purge", is_flag=True, help="Stop it and delete its data directory (asks first; --yes).")
@examples("migrator embedded", "migrator embedded --stop", "migrator --yes embedded --purge")
@pass_app
def embedded_cmd(app: App, stop: bool, purge: bool) -> None:
    """Start (or show) the embedded PostgreSQL used when no DSN is given; --stop stops it; --purge stops it and
    removes its data directory (every database in it, the demo's included)."""
    from migrator import embedded

    data_dir = embedded.default_dir()
    if purge:
        if not data_dir.exists():
            done(
                app, f"nothing to purge: {data_dir} does not exist", details={"data_dir": str(data_dir)}, changed=False
            )
            return
        console.confirm(
            f"stop the embedded PostgreSQL and delete {data_dir} with every database in it?", assume_yes=app.yes
        )
        freed = embedded.purge()
        done(
            app,
            f"embedded PostgreSQL removed: {data_dir} deleted ({console.human_bytes(freed)})",
            details={"data_dir": str(data_dir), "purged": True, "bytes_freed": freed},
            changed=True,
        )
        return
    if stop:
        stopped = embedded.stop()
        message = "embedded PostgreSQL stopped" if stopped else "no embedded PostgreSQL was running"
        done(app, message, details={"data_dir": str(data_dir), "stopped": stopped}, changed=stopped)
        return
    dsn = embedded.dsn()
    done(app, details={"dsn": mask_dsn(dsn), "data_dir": str(data_dir)}, changed=False)
    if not app.json:
        console.out.print(dsn)

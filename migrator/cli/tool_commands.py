"""Commands that are not phases: seed, plan, status, rehearse, runbook, demo, embedded."""

from __future__ import annotations

from pathlib import Path

import click

from migrator import console, lifecycle
from migrator.cli.app import App, cli, defaulted, examples, pass_app
from migrator.db import mask_dsn
from migrator.errors import BadInputError, GuardFailed


@cli.command()
@click.option("--rows", type=click.IntRange(min=0), default=10_000, show_default=True, help="Projects to insert.")
@defaulted(
    "--dirty-ratio",
    click.FloatRange(0, 1),
    0.05,
    "Share of rows missing required variant fields, as the legacy app allowed.",
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
@click.argument("phase", required=False, type=click.Choice(lifecycle.PHASE_NAMES))
@examples("migrator plan", "migrator plan expand > expand.sql", "migrator --spec payments.toml plan --json")
@pass_app
def plan(app: App, phase: str | None) -> None:
    """Print the SQL each phase would run, in order. Writes nothing and needs no database."""
    from migrator import operations

    phases = operations.plans(app.spec, [phase] if phase else None, lock_timeout=app.lock_timeout)
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
    console.sql_script(operations.render_script(phases, lock_timeout=app.lock_timeout))


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
@examples(
    "migrator --dsn postgresql://ci@db-ci/postgres rehearse --snapshot prod.dump --junit rehearsal.xml",
    "migrator rehearse --snapshot prod.sql.gz --report rehearsal.json   # on a temporary embedded PostgreSQL",
)
@pass_app
def rehearse(app: App, snapshot: str, junit: str | None, report: str | None, chunk_rows: int | None) -> None:
    """Restore a pg_dump into a throwaway database on the --dsn server (a temporary embedded one when none), run
    every phase and every rollback on it, validating at each step; the database is dropped afterwards. Exit 0
    when every step passed, 1 otherwise."""
    from migrator import rehearse as mod
    from migrator.verify.runner import DEFAULT_CHUNK_ROWS

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
            chunk_rows=chunk_rows or DEFAULT_CHUNK_ROWS,
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
@defaulted("--rate", click.FloatRange(min=1), 100, "The live writer's transactions per second.")
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

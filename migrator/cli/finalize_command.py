"""`migrator finalize`: contracted -> finalized, the last step (migrator.phases.finalize). No SQL here."""

from __future__ import annotations

from pathlib import Path

import click

from migrator import console
from migrator.cli.app import App, begin, cli, context, defaulted, done, examples, finite, moved, pass_app, reason_option
from migrator.errors import BadInputError


@cli.command()
@defaulted("--min-age", str, "7d", "Retention: how long after contract (e.g. 7d, 12h, 30m, 0; shorter is audited).")
@defaulted("--quiet-period", finite(min=0), 60, "Seconds the compatibility view must have gone without writes.")
@defaulted("--wait", finite(min=0), 0, "Seconds to keep waiting for that quiet period instead of refusing at once.")
@click.option("--dump", type=click.Path(dir_okay=False), help="Write the archive to FILE first (pg_dump -t, or CSV).")
@click.option("--keep-compat-view", is_flag=True, help="Keep the compatibility view (its key default moves along).")
@reason_option
@examples(
    "migrator finalize --dump core_project_archived.dump",
    "migrator --yes finalize --min-age 0 --quiet-period 300 --reason 'CHG-1234: archive kept 30 days elsewhere'",
)
@pass_app
def finalize(
    app: App,
    min_age: str,
    quiet_period: float,
    wait: float,
    dump: str | None,
    keep_compat_view: bool,
    reason: str | None,
) -> None:
    """contracted -> finalized: give the base table's key its own sequence, then drop the compatibility view
    (unless kept), the sync functions and counters, and the archived legacy table. THERE IS NO ROLLBACK FROM
    FINALIZED. Guards: contracted for --min-age, no write through the compatibility view for --quiet-period, and
    nothing else depending on what it drops. A second run is a no-op (exit 0)."""
    from migrator import lifecycle
    from migrator.phases import finalize as phase
    from migrator.sqlgen.names import archive_name

    seconds = phase.parse_duration(min_age)
    if dump is not None and Path(dump).exists():
        raise BadInputError(f"--dump {dump} already exists", hint="name a new file; finalize never overwrites one")
    current = begin(app, check_spec=True)
    entered = lifecycle.entered_by("finalize")
    if current.state != entered:
        view = "" if keep_compat_view else f", the compatibility view {app.spec.source.table}"
        console.confirm(
            f"drop {app.spec.source.schema_}.{archive_name(app.spec)}{view} and the sync functions, for good? There "
            "is no rollback from finalized. Writes through the compatibility view are counted (the quiet period); "
            "reads cannot be — make sure nothing reads it any more",
            assume_yes=app.yes,
        )
    opts = phase.Options(
        min_age=seconds,
        quiet_period=quiet_period,
        wait=wait,
        dump=Path(dump) if dump else None,
        keep_compat_view=keep_compat_view,
    )
    run = phase.Finalize(opts)
    run.apply(context(app, reason=reason))
    done(app, details={"noop": run.noop, "min_age_seconds": seconds, "keep_compat_view": keep_compat_view})
    if not app.json:
        if run.noop:
            console.success(f"finalize: already {entered}, nothing to do (there is no rollback from it)")
        else:
            console.success(f"finalize: {moved(app)}; the archive is gone and there is no rollback from here")

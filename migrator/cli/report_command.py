"""`migrator report`: the seed's expectations against measurements on this database (migrator.report)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from migrator import console
from migrator.cli.app import App, begin, cli, defaulted, done, examples, pass_app

F = TypeVar("F", bound=Callable[..., Any])


def _dedented(fn: F) -> F:
    # examples() appends an unindented section, after which click no longer strips the docstring's own indent.
    fn.__doc__ = inspect.cleandoc(fn.__doc__ or "")
    return fn


@cli.command()
@defaulted("--runs", click.IntRange(1, 100), 5, "Measured runs per query (the median is reported).")
@defaulted("--statement-timeout", click.FloatRange(0.1, 3600), 30.0, "Seconds any one measured statement may take.")
@click.option("--query", "only", multiple=True, help="Measure only this query (repeatable; see the JSON names).")
@click.option("--analyze", is_flag=True, help="ANALYZE both sides first (writes planner statistics, nothing else).")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write a self-contained HTML page with bar charts to this file.",
)
@examples(
    "migrator report",
    "migrator report --runs 11 --analyze --html report.html",
    "migrator --json report | tail -1 | jq '.details.expectations[] | [.claim, .measured, .verdict]'",
)
@_dedented
@pass_app
def report(
    app: App, runs: int, statement_timeout: float, only: tuple[str, ...], analyze: bool, html_file: Path | None
) -> None:
    """Measure the seed document's claims on this data, from backfilled on: storage per side (heap, TOAST, each
    index), the seed's queries timed on both schemas (median of N runs, EXPLAIN ANALYZE BUFFERS), and each
    expectation (-15..25% storage, 20-40% faster queries, O(1) draft cleanup) next to the measured figure with
    a verdict. Read-only: catalog sizes, a READ ONLY transaction, statement and lock timeouts."""
    from migrator import report as report_mod

    begin(app)
    rep = report_mod.measure(
        app.db,
        app.spec,
        runs=runs,
        statement_timeout_ms=int(statement_timeout * 1000),
        only=list(only) or None,
        analyze=analyze,
    )
    details = rep.as_dict()
    if html_file is not None:
        html_file.write_text(report_mod.render_html(details), encoding="utf-8")
        details["html"] = str(html_file)
    done(app, details=details, changed=False)
    if not app.json:
        console.measured_report(details)

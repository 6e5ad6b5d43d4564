"""`migrator cleanup-drafts`: delete abandoned drafts in short batches on the side the application writes
(migrator.cleanup)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

import click

from migrator import console
from migrator.cli.app import App, begin, cli, context, defaulted, done, examples, pass_app, reason_option, reporter
from migrator.cli.phase_commands import long_job
from migrator.engine.health import Limits

F = TypeVar("F", bound=Callable[..., Any])


def _dedented(fn: F) -> F:
    # examples() appends an unindented section, after which click no longer strips the docstring's own indent.
    fn.__doc__ = inspect.cleandoc(fn.__doc__ or "")
    return fn


@cli.command("cleanup-drafts")
@click.option("--older-than", required=True, help="Delete drafts created longer ago than this: 24h, 90m, 7d, 2w.")
@click.option("--dry-run", is_flag=True, help="Count the drafts it would delete; delete nothing.")
@defaulted(
    "--batch-size",
    click.IntRange(1, 100_000),
    500,
    "Drafts per batch, one short transaction each (without the partial index: keys examined per batch).",
)
@click.option("--draft-column", help="The boolean draft flag (default: the spec's partial index, else is_draft).")
@click.option("--created-column", help="The creation time (default: the spec's partial index, else created_at).")
@long_job
@reason_option
@examples(
    "migrator cleanup-drafts --older-than 24h --dry-run",
    "migrator --json cleanup-drafts --older-than 7d --batch-size 1000 | tail -1 | jq .details.deleted",
)
@_dedented
@pass_app
def cleanup_drafts(
    app: App,
    older_than: str,
    dry_run: bool,
    batch_size: int,
    draft_column: str | None,
    created_column: str | None,
    full_speed: bool,
    reason: str | None,
    health: Limits,
) -> None:
    """Delete abandoned drafts (draft flag true, created before the cutoff) in short batches: from the legacy
    table before write_new (the forward triggers delete their split rows), from the base table from write_new on
    (children and meta rows cascade). Each batch is an index range scan of the partial index `created WHERE
    draft` where it exists. One cleaner at a time; killed, it simply continues on the next run. Every run is in
    the audit log. JSON details: deleted, would_delete, side, table, index, cutoff, batches, seconds."""
    from migrator import cleanup

    opts = cleanup.Options(
        older_than=cleanup.parse_age(older_than),
        dry_run=dry_run,
        batch_size=batch_size,
        full_speed=full_speed,
        health=health,
        draft_column=draft_column,
        created_column=created_column,
        reason=reason,
    )
    begin(app)
    progress = reporter(app, "cleanup-drafts")
    with progress.running():
        result = cleanup.run(context(app, progress, reason=reason), opts)
    done(app, details=asdict(result), changed=result.deleted > 0)
    if not app.json:
        where = f"{result.table} ({result.side} side, {result.state})"
        if dry_run:
            console.success(f"cleanup-drafts --dry-run: {result.would_delete:,} draft(s) would be deleted from {where}")
        else:
            console.success(f"cleanup-drafts: {result.deleted:,} draft(s) deleted from {where}")

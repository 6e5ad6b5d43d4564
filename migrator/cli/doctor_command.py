"""`migrator doctor`: the read-only preflight (migrator.doctor), rendered as a table or one JSON object."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import click

from migrator import console
from migrator.cli.app import App, cli, defaulted, done, examples, pass_app
from migrator.errors import GuardFailed

F = TypeVar("F", bound=Callable[..., Any])


def _dedented(fn: F) -> F:
    # examples() appends an unindented section, after which click no longer strips the docstring's own indent.
    fn.__doc__ = inspect.cleandoc(fn.__doc__ or "")
    return fn


@cli.command()
@defaulted(
    "--long-transaction-seconds",
    click.FloatRange(min=0),
    60.0,
    "Warn about transactions open longer than this.",
)
@defaulted(
    "--idle-seconds",
    click.FloatRange(min=0),
    5.0,
    "Warn about sessions idle in a transaction longer than this.",
)
@examples(
    "migrator doctor",
    "migrator --dsn postgresql://migrator@db/shop doctor --long-transaction-seconds 30",
    "migrator doctor --json | tail -1 | jq '.details.findings[] | select(.status != \"ok\")'",
)
@_dedented
@pass_app
def doctor(app: App, long_transaction_seconds: float, idle_seconds: float) -> None:
    """Preflight, read-only, at any time: server version, legacy table and primary key, the migration role's
    privileges for every phase, application roles, long and idle transactions, replication slots and standby lag,
    disk headroom, a pooler on the DSN, name collisions, dependent objects, PUBLIC CREATE on a schema in use,
    row-level security and user triggers. Each finding names its fix. Exit 0 when no check fails, 1 otherwise."""
    from migrator import doctor as doctor_mod

    report = doctor_mod.run(
        app.db,
        app.spec,
        long_transaction_seconds=long_transaction_seconds,
        idle_transaction_seconds=idle_seconds,
    )
    done(app, details=report.as_dict(), state=report.state, from_state=report.state, changed=False)
    if not app.json:
        rows = [
            (f.check, f.status, "\n".join([f.message, *(f"  · {d}" for d in f.details)]), f.fix or "")
            for f in report.findings
        ]
        state = f" (state {report.state})" if report.state else ""
        title = f"doctor: {report.migration} on {report.database}{state}"
        console.table(title, ["check", "status", "finding", "fix"], rows)
    if not report.ok:
        hint = "apply the fix of each failing finding, then run `migrator doctor` again"
        raise GuardFailed(report.summary(), hint=hint)
    if not app.json:
        console.success(report.summary())

"""Guards the transitions share: a fresh row-level comparison, the quarantine, and the quiet period of a side whose
sync a transition removes (contract: legacy; a rollback: split)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg import sql

from migrator.db import Database
from migrator.errors import GuardFailed
from migrator.spec import Spec
from migrator.sqlgen import ddl, names, views
from migrator.sqlgen.compose import as_text, ident, join, render
from migrator.verify.queries import text_compared
from migrator.verify.runner import run_validation


def diff(conn: psycopg.Connection[Any], spec: Spec, limit: int = 1000) -> list[tuple[str, Any]]:
    """(side, key) of rows where legacy and split disagree, open quarantine left out. One statement, so both
    sides are read in one snapshot while the application writes."""
    # EXCEPT needs an equality operator per column: types without one (json) are compared by their text.
    types = {spec.pk: spec.source.primary_key_type, **{c: cs.type for _, _, c, cs in spec.iter_columns()}}
    columns = join(
        [
            sql.SQL("(x.{0})::text AS {0}").format(ident(c))
            if text_compared(types[c])
            else sql.SQL("x.{}").format(ident(c))
            for c in spec.legacy_columns()
        ]
    )

    def comparable(query: sql.Composed) -> sql.Composed:
        return sql.SQL("SELECT {} FROM ({}) AS x").format(columns, query)

    query = render(
        "guard_diff",
        legacy=comparable(views.legacy_normalized(spec)),
        split=comparable(views.split_as_legacy(spec)),
        quarantine=names.state(spec, "quarantine"),
        pk=ident(spec.pk),
    )
    rows = conn.execute(query, {"migration": spec.migration_name, "limit": limit}).fetchall()
    return [(str(r[0]), r[1]) for r in rows]


def require_in_sync(db: Database, spec: Spec, command: str) -> None:
    """Refuse `command` unless every legacy row equals its split rows right now: the full chunked validation
    (short REPEATABLE READ snapshots per key range, never one long snapshot on a big table)."""
    # One worker: a guard runs while the application is live, and a second busy core is the application's.
    result = run_validation(db, spec, workers=1)
    if not result.ok:
        raise GuardFailed(
            f"`{command}` refused: {result.summary()}",
            hint="run `migrator validate --report FILE` for every differing row, and fix them first",
        )


def open_quarantine(conn: psycopg.Connection[Any], spec: Spec) -> int:
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE migration = %s AND resolved_at IS NULL AND accepted_at IS NULL").format(
            names.state(spec, "quarantine")
        ),
        [spec.migration_name],
    ).fetchone()
    return int(row[0]) if row else 0


Side = Literal["legacy", "split"]


def writes(conn: psycopg.Connection[Any], spec: Spec, side: Side) -> int:
    """How many direct write statements one side's counter has seen (0 before switch-writes creates it)."""
    counter = names.writes_sequence(spec, side)
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [as_text(counter)]).fetchone()
    if not row or not row[0]:
        return 0
    value = conn.execute(
        sql.SQL("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {}").format(counter)
    ).fetchone()
    return int(value[0]) if value else 0


def counting(conn: psycopg.Connection[Any], spec: Spec, side: Side) -> bool:
    """Whether that side's writes are being counted (its counter trigger is attached: both syncs are on)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_trigger WHERE tgname = %s)",
        [names.trigger_name_text(spec, f"{side}_writes")],
    ).fetchone()
    return bool(row and row[0])


def require_no_open_quarantine(conn: psycopg.Connection[Any], spec: Spec, command: str) -> None:
    """Refuse `command` while rows the split schema rejected are in quarantine and not accepted: readers of the split
    tables would miss them. Rows quarantined after validate count too (a NULL or unknown discriminator written
    since), which is why every forward transition asks, not only validate."""
    rows = conn.execute(
        sql.SQL(
            "SELECT key, sqlstate FROM {} WHERE migration = %s AND resolved_at IS NULL AND accepted_at IS NULL "
            "ORDER BY first_seen, key LIMIT 6"
        ).format(names.state(spec, "quarantine")),
        [spec.migration_name],
    ).fetchall()
    if not rows:
        return
    total = open_quarantine(conn, spec)
    keys = ", ".join(f"{key} ({sqlstate})" for key, sqlstate in rows[:5]) + (", …" if total > 5 else "")
    raise GuardFailed(
        f"`{command}` refused: {total:,} legacy row(s) are in quarantine, not in the split tables: {keys}",
        hint=f"fix those rows in {spec.source.table} (the sync then moves them out of quarantine and into the split "
        "tables), then run the command again; `migrator validate --report FILE` lists them all",
    )


def mark_writes(conn: psycopg.Connection[Any], spec: Spec, side: Side) -> tuple[int, datetime, bool]:
    """Compare one side's writes counter with its stored mark; move the mark when the counter moved.
    Returns (counter, quiet since, moved)."""
    count = writes(conn, spec, side)
    mark, mark_at = sql.Identifier(f"{side}_mark"), sql.Identifier(f"{side}_mark_at")
    state_table = names.state(spec, "state")
    row = conn.execute(
        sql.SQL("SELECT {}, {}, now() FROM {} WHERE migration = %s").format(mark, mark_at, state_table),
        [spec.migration_name],
    ).fetchone()
    assert row is not None
    marked, marked_at, now = row
    if marked is None or marked != count or marked_at is None:
        conn.execute(
            sql.SQL("UPDATE {} SET {} = %s, {} = now() WHERE migration = %s").format(state_table, mark, mark_at),
            [count, spec.migration_name],
        )
        return count, now, True
    return count, marked_at, False


def mark_legacy_writes(conn: psycopg.Connection[Any], spec: Spec) -> tuple[int, datetime, bool]:
    return mark_writes(conn, spec, "legacy")


class NotQuiet(GuardFailed):
    """A side that a transition stops syncing saw direct writes within the quiet period."""


# side -> (how long it has been quiet, who must stop writing it)
_QUIET = {
    "legacy": ("the legacy table has been free of direct writes", "writes the split tables"),
    "split": ("the split tables have been free of direct writes", "writes the legacy table again"),
}


def require_quiet(conn: psycopg.Connection[Any], spec: Spec, side: Side, quiet_seconds: float, command: str) -> None:
    """Refuse `command`, which stops syncing `side`, while applications still write it directly: an instance that
    has not seen the flag yet would lose its writes. Call it outside a transaction (autocommit): the mark it moves
    must stay moved when it refuses, or the quiet period would never start."""
    count, since, moved = mark_writes(conn, spec, side)
    now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    quiet_for = 0.0 if moved else (now - since).total_seconds()
    if quiet_for < quiet_seconds:
        what, must = _QUIET[side]
        raise NotQuiet(
            f"`{command}` refused: {what} for {quiet_for:.0f} s of the required {quiet_seconds:.0f} s "
            f"({count} direct write statements since switch-writes)",
            hint=f"make sure every application instance {must}, then retry in {quiet_seconds - quiet_for:.0f} s "
            "(or pass --wait to keep checking, or --quiet-period with a shorter time)",
        )


def wait_for_quiet(
    conn: psycopg.Connection[Any],
    spec: Spec,
    side: Side,
    quiet: float,
    wait: float,
    command: str,
    on_wait: Callable[[str], None],
) -> None:
    """require_quiet, checked once a second for up to `wait` seconds before it refuses."""
    deadline = time.monotonic() + wait
    announced = False
    while True:
        try:
            require_quiet(conn, spec, side, quiet, command)
            return
        except NotQuiet as exc:
            if time.monotonic() >= deadline:
                raise
            if not announced:
                on_wait(f"waiting for the {side} side to stay quiet for {quiet:.0f} s ({exc.message})")
                announced = True
            time.sleep(1.0)


def require_legacy_checks_hold(conn: psycopg.Connection[Any], spec: Spec, command: str = "rollback") -> None:
    """Refuse `command` (the rollback from contracted) before any DDL while split rows exist that a CHECK of the
    archived legacy table would refuse: the refill would fail part-way on them. Names each such constraint with
    its first keys and how many rows break it. CHECKs over columns the spec does not cover cannot be evaluated on
    the split side and are left to the refill."""
    archived = conn.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL", [as_text(names.archive(spec))])
    row = archived.fetchone()
    table = names.archive(spec) if row and row[0] else names.source(spec)
    covered = set(spec.legacy_columns())
    broken = []
    for check in ddl.table_checks(conn, table):
        if not check.columns <= covered:
            continue
        keys_sql, count_sql = ddl.check_violations_sql(spec, check)
        keys = [r[0] for r in conn.execute(keys_sql).fetchall()]
        if keys:
            total = int(conn.execute(count_sql).fetchone()[0])  # type: ignore[index]
            more = f", … ({total:,} rows)" if total > len(keys) else f" ({total:,} row{'s' if total > 1 else ''})"
            broken.append(f"{check.name}: {spec.pk} {', '.join(keys)}{more}")
    if broken:
        raise GuardFailed(
            f"`{command}` refused: split rows that the legacy table's CHECK constraints refuse would stop the "
            f"refill part-way — {'; '.join(broken)}",
            hint=f"fix those rows in the split tables (or drop the constraint on {spec.source.schema_}."
            f"{names.archive_name(spec)} if it no longer holds), then run `migrator {command}` again; nothing "
            "was changed",
        )

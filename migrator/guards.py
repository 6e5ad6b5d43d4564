"""Guards the transitions share: a fresh row-level comparison, the quarantine, the legacy quiet period."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from migrator.db import Database
from migrator.errors import GuardFailed
from migrator.spec import Spec
from migrator.sqlgen import names, views
from migrator.sqlgen.compose import as_text, ident, render
from migrator.verify.runner import run_validation


def diff(conn: psycopg.Connection[Any], spec: Spec, limit: int = 1000) -> list[tuple[str, Any]]:
    """(side, key) of rows where legacy and split disagree, open quarantine left out. One statement, so both
    sides are read in one snapshot while the application writes."""
    query = render(
        "guard_diff",
        legacy=views.legacy_normalized(spec),
        split=views.split_as_legacy(spec),
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


def legacy_writes(conn: psycopg.Connection[Any], spec: Spec) -> int:
    """How many direct legacy write statements the counter has seen (0 before switch-writes)."""
    counter = names.legacy_writes_sequence(spec)
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [as_text(counter)]).fetchone()
    if not row or not row[0]:
        return 0
    value = conn.execute(
        sql.SQL("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {}").format(counter)
    ).fetchone()
    return int(value[0]) if value else 0


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


def mark_legacy_writes(conn: psycopg.Connection[Any], spec: Spec) -> tuple[int, datetime, bool]:
    """Compare the legacy-writes counter with the stored mark; move the mark when the counter moved.
    Returns (counter, quiet since, moved)."""
    count = legacy_writes(conn, spec)
    row = conn.execute(
        sql.SQL("SELECT legacy_mark, legacy_mark_at, now() FROM {} WHERE migration = %s").format(
            names.state(spec, "state")
        ),
        [spec.migration_name],
    ).fetchone()
    assert row is not None
    mark, mark_at, now = row
    if mark is None or mark != count or mark_at is None:
        conn.execute(
            sql.SQL("UPDATE {} SET legacy_mark = %s, legacy_mark_at = now() WHERE migration = %s").format(
                names.state(spec, "state")
            ),
            [count, spec.migration_name],
        )
        return count, now, True
    return count, mark_at, False


class LegacyNotQuiet(GuardFailed):
    """The legacy table saw direct writes within the quiet period."""


def require_legacy_quiet(conn: psycopg.Connection[Any], spec: Spec, quiet_seconds: float) -> None:
    """Refuse contract while applications still write the legacy table directly. Call it outside a transaction
    (autocommit): the mark it moves must stay moved when it refuses, or the quiet period would never start."""
    count, since, moved = mark_legacy_writes(conn, spec)
    now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    quiet_for = 0.0 if moved else (now - since).total_seconds()
    if quiet_for < quiet_seconds:
        wait = quiet_seconds - quiet_for
        raise LegacyNotQuiet(
            f"`contract` refused: the legacy table has been free of direct writes for "
            f"{quiet_for:.0f} s of the required {quiet_seconds:.0f} s "
            f"({count} direct write statements since switch-writes)",
            hint=f"make sure every application instance writes the split tables, then retry in {wait:.0f} s "
            "(or pass --quiet-period with a shorter time)",
        )

"""Assertions shared by tests: does the split side equal the legacy side, row for row?"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from migrator import names, views
from migrator.spec import Spec
from migrator.sqlfiles import ident


def diff(conn: psycopg.Connection[Any], spec: Spec) -> list[tuple[str, Any]]:
    """('legacy_only' | 'split_only', key) for every row that differs, leaving out open quarantine keys."""
    q = sql.SQL(
        "WITH l AS ({legacy}), s AS ({split}), "
        "q AS (SELECT key FROM {quarantine} WHERE migration = %(m)s AND resolved_at IS NULL) "
        "SELECT 'legacy_only', x.{pk} FROM (SELECT * FROM l EXCEPT SELECT * FROM s) x "
        " WHERE x.{pk}::text NOT IN (SELECT key FROM q) "
        "UNION ALL "
        "SELECT 'split_only', y.{pk} FROM (SELECT * FROM s EXCEPT SELECT * FROM l) y "
        " WHERE y.{pk}::text NOT IN (SELECT key FROM q) "
        "ORDER BY 2, 1"
    ).format(
        legacy=views.legacy_normalized(spec),
        split=views.split_as_legacy(spec),
        quarantine=names.state(spec, "quarantine"),
        pk=ident(spec.pk),
    )
    return [(r[0], r[1]) for r in conn.execute(q, {"m": spec.migration_name}).fetchall()]


def quarantined(conn: psycopg.Connection[Any], spec: Spec) -> dict[str, str]:
    """Open quarantine rows: key -> SQLSTATE."""
    rows = conn.execute(
        sql.SQL("SELECT key, sqlstate FROM {} WHERE migration = %s AND resolved_at IS NULL").format(
            names.state(spec, "quarantine")
        ),
        [spec.migration_name],
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def split_rows_for(conn: psycopg.Connection[Any], spec: Spec, key: Any) -> int:
    """How many rows, across every split table, belong to `key`."""
    total = 0
    base = names.split(spec, spec.base.table)
    total += conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(base, ident(spec.pk)), [key]
    ).fetchone()[0]  # type: ignore[index]
    for table in spec.split_tables()[1:]:
        total += conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
                names.split(spec, table), ident(spec.base.link_column)
            ),
            [key],
        ).fetchone()[0]  # type: ignore[index]
    return total


def count(conn: psycopg.Connection[Any], table: str) -> int:
    return int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ident(*table.split(".")))).fetchone()[0])  # type: ignore[index]

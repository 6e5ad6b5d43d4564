"""Keep the planner's picture of the split tables current while a copy fills them.

The application's sessions cache the plans of the forward trigger's statements (PL/pgSQL) and of the foreign keys'
checks. A plan made while a split table looked empty or tiny (right after expand, once autovacuum has analyzed the
few rows the triggers wrote) is a sequential scan, and it stays in the session's cache while the backfill fills the
table. Measured with pgbench on persistent connections (200k rows, 200 writes/s): each application write scanned up
to 90,000 base rows (28 ms instead of 0.05 ms) and the writer fell 16 s behind its schedule. A pooled application's
connections live for hours; autovacuum analyzes a table at most once a minute.

ANALYZE rewrites the table's pg_class row, which invalidates every cached plan that reads the table: the next
execution is planned again for the table's real size. So the copy analyzes the tables it fills when its row count
has grown GROWTH-fold since the last time (from FIRST_ROWS rows), and once when it is done (backfill's last steps).
Each runs in a short transaction under a lock timeout: it waits for nobody (autovacuum's own ANALYZE then did it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from migrator.engine.session import transaction
from migrator.spec import Spec
from migrator.sqlgen import names
from migrator.sqlgen.compose import join

FIRST_ROWS = 1000
GROWTH = 4
LOCK_TIMEOUT = 0.5


def analyze_sql(spec: Spec) -> sql.Composed:
    """One ANALYZE of every split table (table owner's right: the migration role created them)."""
    return sql.SQL("ANALYZE {}").format(join([names.split(spec, t) for t in spec.split_tables()]))


class PlannerStats:
    """Shared by the workers of one copy: `grown(conn, rows)` after each chunk, holding no lock of the copy."""

    def __init__(self, spec: Spec, on_step: Callable[[str], None]) -> None:
        self._sql = analyze_sql(spec)
        self._on_step = on_step
        self._lock = threading.Lock()
        self._next = FIRST_ROWS
        self.analyzed = 0  # times it ran (the tests read it)

    def grown(self, conn: psycopg.Connection[Any], rows: int) -> None:
        with self._lock:
            if rows < self._next:
                return
            self._next = rows * GROWTH
        try:
            with transaction(conn, lock_timeout=LOCK_TIMEOUT):
                conn.execute(self._sql)
        except psycopg.errors.LockNotAvailable:
            # Autovacuum (or a concurrent index build) holds the table: try again at the next step of growth.
            return
        self.analyzed += 1
        if self.analyzed == 1:
            self._on_step("planner statistics: the split tables are analyzed as they grow (cached plans follow)")

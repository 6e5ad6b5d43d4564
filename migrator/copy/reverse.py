"""The reverse copy engine: make every legacy row equal the split rows again, chunk by chunk (rollback from
contracted, where the split side is the truth).

Two passes. The insert pass, over base keys, gives a legacy row to every split row created after contract. The
refresh pass, over legacy keys, finds the legacy rows that differ from the split side, locks them before reading
the split side, and refreshes or removes them: a concurrent write is never overwritten by an older copy, and rows
that did not change while contracted are neither locked nor written.

Each chunk commits on its own and the whole copy is idempotent (it writes only rows that differ), so an
interrupted copy is simply run again: the syncs, on since the restore, kept every row written meanwhile current.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from migrator.copy.forward import BACKEND_FLUSH_AFTER
from migrator.engine.actions import boundary
from migrator.engine.chunking import ChunkSizer, RateLimiter, after_cursor
from migrator.engine.context import Reporter
from migrator.engine.session import set_local
from migrator.spec import Spec
from migrator.sqlgen import names, views
from migrator.sqlgen.compose import ident, join, raw, render

# Target seconds per chunk: the refresh pass holds its legacy rows' locks for a chunk's length, and the application
# waits that long.
REVERSE_CHUNK_TIME = 0.02
# The passes have no retry loop (a chunk that gives up fails the whole rollback), so a chunk waits out the
# application's short transactions on its rows rather than giving up at the first one; still bounded, so a session
# that sits on a row lock stops the rollback with an error instead of hanging it.
REVERSE_CHUNK_LOCK_TIMEOUT = 5.0

# Statements of a first chunk (True) and of the ones after a cursor (False).
ChunkStatements = dict[bool, tuple[sql.Composed, sql.Composed]]


@dataclass
class ReverseResult:
    updated: int = 0
    inserted: int = 0
    deleted: int = 0
    seconds: float = 0.0


def chunk_settings(conn: psycopg.Connection[Any]) -> None:
    """A reverse chunk's settings, for its transaction only.

    origin = split: these legacy writes come from the split side, the forward triggers must not echo them.
    A chunk joins a few hundred base rows to their children: index probes per row, whatever the statistics say
    (the split tables are often never analyzed here). A merge or hash join reads each child table from its start
    (or whole) once per chunk, and so does a materialized scan of a table the planner believes tiny (the meta
    table, never analyzed: 135 ms for a 300-row chunk of 20,000 rows, 3 ms probing), so the pass would slow
    down with every chunk. Its legacy writes are flushed as they go, like the forward copy's (BACKEND_FLUSH_AFTER).
    """
    set_local(
        conn,
        lock_timeout=REVERSE_CHUNK_LOCK_TIMEOUT,
        migrator__origin="split",
        enable_mergejoin=False,
        enable_hashjoin=False,
        enable_material=False,
        backend_flush_after=BACKEND_FLUSH_AFTER,
    )


def reverse_backfill(
    conn: psycopg.Connection[Any], spec: Spec, reporter: Reporter, max_rows_per_second: float | None = None
) -> ReverseResult:
    """Make every legacy row equal the split rows, chunk by chunk (the split side is the truth now)."""
    t0 = time.monotonic()
    copy = _ReverseCopy(conn, spec, reporter, ChunkSizer(REVERSE_CHUNK_TIME), RateLimiter(max_rows_per_second))
    copy.insert_pass()
    copy.refresh_pass()
    copy.result.seconds = time.monotonic() - t0
    return copy.result


def insert_pass_statements(spec: Spec) -> ChunkStatements:
    """The insert pass's (bound, insert) for a first chunk (True) and for the ones after a cursor (False).
    Parameters: lo (the cursor), hi (the chunk's last base key, from bound), limit."""
    pk, pk_type = ident(spec.pk), raw(spec.source.primary_key_type)
    cols = spec.legacy_columns()
    split = views.split_as_legacy(spec)
    # Pass 1, over base keys: rows created after contract get a legacy row. A split write racing this pass may
    # find no legacy row yet (its trigger then changes nothing) or see ours inserted from an older snapshot;
    # pass 2 then finds every legacy row that differs from the split side and refreshes it under lock, so
    # neither can survive.
    # Each chunk's upper key comes from the base table's primary key first, so the chunk reads a closed key range.
    base = names.split(spec, spec.base.table)
    upper = sql.SQL("s.{} <= %(hi)s::{}").format(pk, pk_type)
    return {
        first: (
            render("reverse_bound", legacy=base, pk=pk, lower=after_cursor(spec, "l", not first)),
            render(
                "reverse_insert",
                split=split,
                lower=sql.SQL("{} AND {}").format(after_cursor(spec, "s", not first), upper),
                pk=pk,
                legacy=names.source(spec),
                cols=join([ident(c) for c in cols]),
            ),
        )
        for first in (True, False)
    }


def refresh_pass_statements(spec: Spec) -> ChunkStatements:
    """The refresh pass's (bound, candidates) for a first chunk (True) and for the ones after a cursor (False):
    the chunk's last legacy key, then the keys in (lo, hi] whose legacy row differs from the split rows."""
    pk, pk_type = ident(spec.pk), raw(spec.source.primary_key_type)
    split = views.split_as_legacy(spec)
    legacy_cols, split_cols = _compared_columns(spec)
    out = {}
    for first in (True, False):
        lower = after_cursor(spec, "l", not first)
        out[first] = (
            render("reverse_bound", legacy=names.source(spec), pk=pk, lower=lower),
            render(
                "reverse_candidates",
                legacy=names.source(spec),
                split=split,
                pk=pk,
                pk_type=pk_type,
                lower=lower,
                lower_s=after_cursor(spec, "s", not first),
                legacy_cols=legacy_cols,
                split_cols=split_cols,
            ),
        )
    return out


def refresh_statements(spec: Spec) -> tuple[sql.Composed, sql.Composed, sql.Composed]:
    """The refresh pass's writes for a chunk's candidate keys: (lock, update, delete)."""
    pk, pk_type = ident(spec.pk), raw(spec.source.primary_key_type)
    legacy_cols, split_cols = _compared_columns(spec)
    lock = render("reverse_lock", legacy=names.source(spec), pk=pk, pk_type=pk_type)
    update = render(
        "reverse_update",
        legacy=names.source(spec),
        cols=join([ident(c) for c in spec.legacy_columns()]),
        split_cols=split_cols,
        split=views.split_as_legacy(spec),
        pk=pk,
        pk_type=pk_type,
        legacy_cols=legacy_cols,
    )
    delete = render(
        "reverse_delete",
        legacy=names.source(spec),
        base=names.split(spec, spec.base.table),
        pk=pk,
        pk_type=pk_type,
        quarantine=names.state(spec, "quarantine"),
    )
    return lock, update, delete


def _compared_columns(spec: Spec) -> tuple[sql.Composed, sql.Composed]:
    """The legacy columns as l.<col>, … and as s.<col>, … (legacy table vs the split side as legacy rows)."""
    cols = spec.legacy_columns()
    return join([sql.SQL("l.{}").format(ident(c)) for c in cols]), join(
        [sql.SQL("s.{}").format(ident(c)) for c in cols]
    )


@dataclass
class _ReverseCopy:
    """One reverse backfill: its session, pace and counts, shared by both passes."""

    conn: psycopg.Connection[Any]
    spec: Spec
    reporter: Reporter
    sizer: ChunkSizer
    limiter: RateLimiter
    result: ReverseResult = field(default_factory=ReverseResult)

    def insert_pass(self) -> None:
        def insert(statement: sql.Composed, cursor: str | None, hi: Any, size: int) -> None:
            out = self.conn.execute(statement, {"lo": cursor, "hi": hi, "limit": size}).fetchone()
            assert out is not None
            self.result.inserted += int(out[2])

        self._walk(insert_pass_statements(self.spec), insert, lambda: self.result.inserted, "insert")

    def refresh_pass(self) -> None:
        # Pass 2, over legacy keys: find the rows that differ (read-only), then lock those legacy rows first (a
        # concurrent reverse trigger then waits for us and applies its newer change on top) and only then read the
        # split side, in a later statement and snapshot; legacy rows whose key left the split side (deleted after
        # contract) are removed. Rows that did not change while contracted are neither locked nor written.
        lock, update, delete = refresh_statements(self.spec)

        def refresh(candidates: sql.Composed, cursor: str | None, hi: Any, size: int) -> None:
            keys = [r[0] for r in self.conn.execute(candidates, {"lo": cursor, "hi": hi}).fetchall()]
            if keys:
                keys = [r[0] for r in self.conn.execute(lock, {"keys": keys}).fetchall()]
                self.result.updated += self.conn.execute(update, {"keys": keys}).rowcount
                params = {"keys": keys, "migration": self.spec.migration_name}
                self.result.deleted += self.conn.execute(delete, params).rowcount

        progress = lambda: self.result.updated + self.result.deleted  # noqa: E731 — read at each chunk
        self._walk(refresh_pass_statements(self.spec), refresh, progress, "update")

    def _walk(
        self,
        stmts: ChunkStatements,
        work: Callable[[sql.Composed, str | None, Any, int], None],
        progress: Callable[[], int],
        name: str,
    ) -> None:
        """Keyset chunks, one transaction each: find the chunk's upper key (bound), then `work` on (cursor, hi]."""
        cursor: str | None = None
        while True:
            bound, statement = stmts[cursor is None]
            size = self.sizer.next()
            c0 = time.monotonic()
            with self.conn.transaction():
                chunk_settings(self.conn)
                row = self.conn.execute(bound, {"lo": cursor, "limit": size}).fetchone()
                assert row is not None
                n, hi = int(row[0]), row[1]
                if n:
                    work(statement, cursor, hi, size)
            boundary(self.conn)  # a chunk committed: the kill hook's statement boundary (tests)
            self.sizer.observe(n, time.monotonic() - c0)
            self.limiter.done(n)
            self.reporter.progress(progress(), None, phase=f"reverse backfill: {name}")
            if n < size:
                return
            cursor = hi

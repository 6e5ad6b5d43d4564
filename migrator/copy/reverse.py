"""The reverse copy engine: make every legacy row equal the split rows again, chunk by chunk (rollback from
contracted, where the split side is the truth).

Two passes. The insert pass, over base keys, gives a legacy row to every split row created after contract: it
tests each key against the legacy primary key and reads only the missing rows whole from the split side (reading
every row as a legacy row cost twice the refresh pass: 0.46 s against 0.24 s for 100k rows; the key test 0.06 s).
The refresh pass, over legacy keys, finds the legacy rows that differ from the split side, locks them before reading
the split side, and refreshes or removes them: a concurrent write is never overwritten by an older copy, and rows
that did not change while contracted are neither locked nor written.

Each chunk commits on its own and the whole copy is idempotent (it writes only rows that differ), so an
interrupted copy is simply run again: the syncs, on since the restore, kept every row written meanwhile current.
"""

from __future__ import annotations

import threading
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
from migrator.engine.health import Health
from migrator.engine.pace import Pacer
from migrator.engine.session import set_local
from migrator.spec import Spec, written
from migrator.sqlgen import names, rules, triggers, views
from migrator.sqlgen.compose import ident, join, raw, render
from migrator.sqlgen.ddl import legacy_before_triggers

# Target seconds per chunk: the refresh pass holds its legacy rows' locks for a chunk's length, and the application
# waits that long.
REVERSE_CHUNK_TIME = 0.02
# While the application works, the pace's short chunks (engine/pace.py): 5 ms, as the forward copy's. Of the
# requests that overlapped a chunk, 20% were slow at 10 ms and 8% at 5 ms; in an interleaved A/B (bench/pace_ab.py,
# session 12) 1.28% of all requests were slow against 1.99%, the copy taking about a quarter longer. 2 ms (a few
# rows) paid a commit per handful of rows, and each commit slows the application's about as much as a 100-row one
# (docs/BENCHMARKS.md, session 10).
REVERSE_ACTIVE_CHUNK_TIME = 0.005
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
    No parallel query: the candidates statement is a plain SELECT, and from about 900 rows the planner gave it a
    parallel worker (a Gather over a parallel scan of the whole legacy table for 900 rows: 20 ms instead of 4), which
    also takes the application's second core for the chunk's length.
    """
    set_local(
        conn,
        lock_timeout=REVERSE_CHUNK_LOCK_TIMEOUT,
        migrator__origin="split",
        enable_mergejoin=False,
        enable_hashjoin=False,
        enable_material=False,
        backend_flush_after=BACKEND_FLUSH_AFTER,
        max_parallel_workers_per_gather=0,
    )


def reverse_backfill(
    conn: psycopg.Connection[Any],
    spec: Spec,
    reporter: Reporter,
    max_rows_per_second: float | None = None,
    health: Health | None = None,
    pacer: Pacer | None = None,
) -> ReverseResult:
    """Make every legacy row equal the split rows, chunk by chunk (the split side is the truth now), waiting
    between chunks while `health` has a red signal and resting as the adaptive `pacer` says."""
    t0 = time.monotonic()
    copy = _ReverseCopy(conn, spec, reporter, RateLimiter(max_rows_per_second))
    copy.health = health
    copy.pacer = pacer or Pacer(None)
    if legacy_before_triggers(conn, spec):
        copy.write_back = write_back_statements(spec)
        # The restore re-installed the reverse sync without knowing the legacy table's triggers: give its
        # functions the write-back too (same names, so the attached triggers call them from the next write on).
        # A split write in between is found by the refresh pass below and refreshed, and its chunk written back.
        with conn.transaction():
            for _, kind, body in triggers.reverse_tables(spec, write_back=True):
                conn.execute(triggers.definer_function(spec, names.function_name(spec, kind), body))
    with copy.pacer:
        copy.insert_pass()
        copy.refresh_pass()
    copy.result.seconds = time.monotonic() - t0
    return copy.result


def insert_pass_statements(spec: Spec) -> ChunkStatements:
    """The insert pass's (bound, insert) for a first chunk (True) and for the ones after a cursor (False).
    Parameters: lo (the cursor), hi (the chunk's last base key, from bound), limit."""
    pk, pk_type = ident(spec.pk), raw(spec.source.primary_key_type)
    # Generated legacy columns compute themselves from the rest.
    cols = spec.written_legacy_columns()
    # Pass 1, over base keys: rows created after contract get a legacy row. A split write racing this pass may
    # find no legacy row yet (its trigger then changes nothing) or see ours inserted from an older snapshot;
    # pass 2 then finds every legacy row that differs from the split side and refreshes it under lock, so
    # neither can survive.
    # Each chunk's upper key comes from the base table's primary key first, so the chunk reads a closed key range.
    base = names.split(spec, spec.base.table)
    return {
        first: (
            render("reverse_bound", legacy=base, pk=pk, lower=after_cursor(spec, "l", not first)),
            render(
                "reverse_insert",
                split=views.split_as_legacy(spec),
                base=base,
                lower=after_cursor(spec, "b", not first),
                pk=pk,
                pk_type=pk_type,
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
    # The key is matched, not set: an identity key GENERATED ALWAYS refuses even its own value.
    set_cols = [c for c in spec.written_legacy_columns() if c != spec.pk]
    update = render(
        "reverse_update",
        legacy=names.source(spec),
        cols=join([ident(c) for c in set_cols]),
        new_cols=join([sql.SQL("s.{}").format(ident(c)) for c in set_cols]),
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


def write_back_statements(spec: Spec) -> dict[bool, sql.Composed]:
    """For a legacy table with BEFORE row triggers of its own: after a chunk's legacy writes, the split rows of the
    chunk's key range (lo, hi] take back what those triggers changed (a filled default, a stamped time), as the
    reverse sync does after each write, so legacy equals split once the chunk commits. By chunk: with (True) and
    without (False) a cursor.

    The chunk holds its legacy rows' locks, and an application write to a split row takes the split row's lock and
    then (its reverse sync) the legacy row's: the chunk would deadlock with it by waiting for the split row. So a
    split row another transaction holds is skipped (SKIP LOCKED): that transaction's own reverse sync writes the
    legacy row after the chunk commits and writes its triggers' effect back, as for any split write."""
    pk, pk_type = ident(spec.pk), raw(spec.source.primary_key_type)
    targets = [(spec.base.table, spec.pk, written(spec.base.columns))]
    targets += [(v.table, spec.base.link_column, written(v.columns)) for v in spec.variants if written(v.columns)]
    out = {}
    for first in (True, False):
        updates = []
        for i, (table, key, columns) in enumerate(targets):
            legacy_vals = join([rules.filled(rules.column("l", c), cs) for c, cs in columns.items()])
            updates.append(
                sql.SQL(
                    "{name} AS (UPDATE {split} AS s SET ({cols}) = ROW({legacy_vals}) FROM {legacy} AS l "
                    "WHERE s.{key} = l.{pk} AND s.{key} IN ("
                    "SELECT c.{key} FROM {split} AS c JOIN {legacy} AS l ON l.{pk} = c.{key} "
                    "WHERE {lower} AND l.{pk} <= %(hi)s::{pk_type} AND ({split_vals}) IS DISTINCT FROM ({legacy_vals}) "
                    "FOR NO KEY UPDATE OF c SKIP LOCKED) RETURNING 1)"
                ).format(
                    name=ident(f"w{i}"),
                    split=names.split(spec, table),
                    cols=join([ident(c) for c in columns]),
                    legacy_vals=legacy_vals,
                    legacy=names.source(spec),
                    key=ident(key),
                    pk=pk,
                    lower=after_cursor(spec, "l", not first),
                    pk_type=pk_type,
                    split_vals=join([rules.column("c", c) for c in columns]),
                )
            )
        counted = join(
            [sql.SQL("(SELECT count(*) FROM {})").format(ident(f"w{i}")) for i in range(len(targets))], " + "
        )
        out[first] = sql.SQL("WITH {} SELECT {}").format(join(updates, ",\n     "), counted)
    return out


def _compared_columns(spec: Spec) -> tuple[sql.Composed, sql.Composed]:
    """The written legacy columns as l.<col>, … and as s.<col>, … (legacy table vs the split side as legacy rows;
    a generated column follows from the others on both sides)."""
    cols = spec.written_legacy_columns()
    return join([sql.SQL("l.{}").format(ident(c)) for c in cols]), join(
        [sql.SQL("s.{}").format(ident(c)) for c in cols]
    )


@dataclass
class _ReverseCopy:
    """One reverse backfill: its session, pace and counts, shared by both passes."""

    conn: psycopg.Connection[Any]
    spec: Spec
    reporter: Reporter
    limiter: RateLimiter
    result: ReverseResult = field(default_factory=ReverseResult)
    health: Health | None = None
    pacer: Pacer = field(default_factory=lambda: Pacer(None))
    # The legacy table has BEFORE row triggers of its own: each chunk's split rows take back what they changed.
    write_back: dict[bool, sql.Composed] | None = None

    def insert_pass(self) -> None:
        def insert(statement: sql.Composed, cursor: str | None, hi: Any, size: int) -> None:
            out = self.conn.execute(statement, {"lo": cursor, "hi": hi}).fetchone()
            assert out is not None
            self.result.inserted += int(out[0])

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
        # Each pass learns its own rows per second: the insert pass's key test is several times the refresh pass's
        # row comparison, and its rate would size the first refresh chunks as many times too long.
        sizer = ChunkSizer(REVERSE_CHUNK_TIME)
        while True:
            if self.health is not None:
                self.health.wait_until_green(self.conn, threading.Event())
            bound, statement = stmts[cursor is None]
            sizer.target = max(REVERSE_CHUNK_TIME * self.pacer.chunk_scale, REVERSE_ACTIVE_CHUNK_TIME)
            size = sizer.next()
            c0 = time.monotonic()
            with self.pacer.working(), self.conn.transaction():
                chunk_settings(self.conn)
                row = self.conn.execute(bound, {"lo": cursor, "limit": size}).fetchone()
                assert row is not None
                n, hi = int(row[0]), row[1]
                if n:
                    work(statement, cursor, hi, size)
                    if self.write_back is not None:
                        # Origin legacy meanwhile: the split tables' reverse triggers must not echo these writes.
                        set_local(self.conn, migrator__origin="legacy")
                        self.conn.execute(self.write_back[cursor is None], {"lo": cursor, "hi": hi})
                        set_local(self.conn, migrator__origin="split")
            boundary(self.conn)  # a chunk committed: the kill hook's statement boundary (tests)
            sizer.observe(n, time.monotonic() - c0)
            self.pacer.rest(time.monotonic() - c0)
            self.limiter.done(n)
            chunk_ms = round((time.monotonic() - c0) * 1000, 1)
            self.reporter.progress(
                progress(), None, phase=f"reverse backfill: {name}", chunk_ms=chunk_ms, pace=self.pacer.describe()
            )
            if n < size:
                return
            cursor = hi

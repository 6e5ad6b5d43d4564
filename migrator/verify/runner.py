"""The validation engine: plan the chunks, hash them in parallel, examine the ones that differ, re-check.

Row equality compares each legacy row (views.legacy_normalized) with the join of its split rows
(views.split_as_legacy): a hash per chunk first; the rows of a chunk only when its hashes differ; then the columns
that differ, with both values. The checks of checks.CHECKS run on the same chunks.

Concurrency: the application writes while this runs. Both sides of a chunk are read in one REPEATABLE READ
transaction (one snapshot), and the forward triggers change legacy and split rows in one transaction, so a chunk
never sees half a write. Every failure found is re-checked once more in a fresh snapshot and dropped when it is
gone, so rows that changed between the hash and the row pass are not reported.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from migrator import state
from migrator.db import Database
from migrator.engine import retry
from migrator.engine.actions import Query
from migrator.engine.chunking import RateLimiter
from migrator.engine.context import NullReporter, Reporter
from migrator.engine.health import Health
from migrator.engine.pace import Pacer
from migrator.engine.session import set_local
from migrator.errors import TableDoesNotExist, WrongState
from migrator.spec import Spec
from migrator.sqlgen import names
from migrator.sqlgen.compose import as_text, ident, render_validator
from migrator.verify.checks import BY_NAME, CHECK_NAMES, CHECKS, SQL_CHECKS
from migrator.verify.queries import Queries, Scope, display
from migrator.verify.result import (
    CheckResult,
    ColumnDiff,
    Failure,
    QuarantineSummary,
    RowDiff,
    ValidationResult,
    clip,
)

DEFAULT_CHUNK_ROWS = 50_000
# Paced (the default), a chunk is a burst of CPU on both sides' reads that the pace cannot split: 50,000 rows on two
# workers held both cores of a 2-core box for a second or two and slowed 3% of the application's transactions at
# once (zero_downtime, session 11), in validate and in the guards' validation before switch-reads, switch-writes and
# contract. Chunks of PACED_CHUNK_ROWS take about 15 ms, and the pace rests between them (2,000 rows, 25 ms: 13% of the
# requests that overlapped a chunk were slow, against 8% at 1,000; session 12).
PACED_CHUNK_ROWS = 1_000
DEFAULT_WORKERS = 2
RECHECK_BATCH = 5_000
LOCK_TIMEOUT = 5.0  # a chunk waits this long behind DDL before it retries, rather than queue the app behind it
STATEMENT_TIMEOUT = 600.0


@dataclass(frozen=True)
class Chunk:
    number: int
    scope: Scope
    quarantined: tuple[str, ...] = ()


@dataclass
class _Found:
    """What one pass found: check failures and row differences, keyed for the re-check."""

    failures: dict[tuple[str, str], Failure] = field(default_factory=dict)
    row_diffs: dict[str, RowDiff] = field(default_factory=dict)

    def merge(self, other: _Found) -> None:
        self.failures.update(other.failures)
        self.row_diffs.update(other.row_diffs)

    def keys(self) -> set[str]:
        return {k for _, k in self.failures} | set(self.row_diffs)


def _execute(conn: psycopg.Connection[Any], query: Query, params: dict[str, Any]) -> psycopg.Cursor[Any]:
    # prepare=False: psycopg prepares a statement run five times, and a generic plan cannot see that a chunk's
    # key range is narrow (it seq-scanned every table: 37 s instead of 2.4 s for 1M rows).
    return conn.execute(query, params, prepare=False)


@contextmanager
def _snapshot(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """One short read-only transaction, one snapshot for every statement in it."""
    # Not session.transaction(): SET TRANSACTION must come before any query, and set_local is one.
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        # No parallel query: chunks run in parallel already (`workers`), and starting parallel workers for each
        # small chunk cost more than it saved (3.2 s vs 2.6 s for 1M rows on two cores).
        set_local(
            conn, lock_timeout=LOCK_TIMEOUT, statement_timeout=STATEMENT_TIMEOUT, max_parallel_workers_per_gather=0
        )
        yield conn


class Validation:
    """One validation run: plan the chunks, hash them in parallel, examine the ones that differ, re-check."""

    def __init__(
        self,
        db: Database,
        spec: Spec,
        *,
        chunk_rows: int | None = None,
        workers: int = DEFAULT_WORKERS,
        max_rows_per_second: float | None = None,
        reporter: Reporter | None = None,
        health: Health | None = None,
        full_speed: bool = False,
    ) -> None:
        if chunk_rows is None:
            chunk_rows = DEFAULT_CHUNK_ROWS if full_speed else PACED_CHUNK_ROWS
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be at least 1")
        self.db, self.spec = db, spec
        self.chunk_rows = chunk_rows
        self.workers = max(1, workers)
        self.limiter = RateLimiter(max_rows_per_second)
        self.reporter: Reporter = reporter or NullReporter()
        # The database's health, waited on before each chunk (None: not checked, as in the guards' validation).
        self.health = health
        # Reading both sides of a big table costs the application CPU: the same adaptive pace as the copy.
        self.pacer = Pacer(None) if full_speed else Pacer(lambda: db.raw_connect(autocommit=True), self.reporter.step)
        self._stop = threading.Event()
        self.params: dict[str, Any] = {"migration": spec.migration_name}
        self.queries = Queries(spec)
        self.indexed_refs: list[int] = []
        self.unindexed_refs: list[int] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        self._conns: list[psycopg.Connection[Any]] = []

    # -- connections -------------------------------------------------------------------------------------------

    def _conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self.db.raw_connect(autocommit=True)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _close(self) -> None:
        for conn in self._conns:
            conn.close()
        self._conns.clear()

    # -- run ---------------------------------------------------------------------------------------------------

    def run(self) -> ValidationResult:
        t0 = time.monotonic()
        try:
            with self.pacer:
                return self._run(t0)
        finally:
            self._close()

    def _run(self, t0: float) -> ValidationResult:
        spec = self.spec
        conn = self._conn()
        current = self._preflight(conn)
        self.queries = self._queries(conn)
        self._classify_references(conn)
        chunks = self._plan_chunks(conn)
        estimate = _execute(conn, render_validator("_estimate"), {"table": as_text(self.queries.legacy)}).fetchone()
        total = int(estimate[0]) if estimate else 0
        result = ValidationResult(spec.migration_name, current, [CheckResult(c.name, c.description) for c in CHECKS])
        result.chunks = len(chunks)
        for c in result.checks:
            c.skipped = BY_NAME[c.name].skip(spec)
        self.reporter.step(
            f"validating {spec.source.table}: {len(chunks)} chunk(s) of up to {self.chunk_rows:,} rows, "
            f"{self.workers} worker(s)"
        )
        found, mismatched, rows = self._hash_pass(chunks, total)
        result.rows = rows
        result.mismatched_chunks = len(mismatched)
        confirmed = self._recheck(found)
        # A chunk whose hashes differ is explained by a confirmed failure it found (references aside: the hash
        # does not cover the referencing tables).
        unexplained = [
            chunk
            for chunk, pairs in mismatched
            if not any(p in confirmed.failures for p in pairs if p[0] != "references")
        ]
        for chunk in self._still_differs(unexplained):
            confirmed.failures[("row_equality", chunk.scope.describe())] = Failure(
                chunk.scope.describe(),
                "row_equality",
                "the chunk's hashes differ on a fresh read but no row or check names a difference",
            )
        if self.unindexed_refs:
            confirmed.merge(self._unindexed_references())
        self._collect(result, confirmed)
        result.quarantine = self._quarantine_summary(conn)
        result.seconds = time.monotonic() - t0
        for c in result.checks:
            status = "skipped: " + c.skipped if c.skipped else ("ok" if c.ok else f"{c.count:,} failing")
            self.reporter.step(f"{c.name}: {status}")
        if result.quarantine.open:
            self.reporter.step(
                f"quarantine: {result.quarantine.open:,} open row(s) ({result.quarantine.accepted:,} accepted)"
            )
        return result

    def _preflight(self, conn: psycopg.Connection[Any]) -> str:
        spec = self.spec
        st = state.read(conn, spec)
        missing = [
            t
            for t in spec.split_tables()
            if _execute(conn, sql.SQL("SELECT to_regclass(%(t)s)"), {"t": as_text(names.split(spec, t))}).fetchone()
            == (None,)
        ]
        if missing or st.state == "legacy":
            raise WrongState(
                f"nothing to validate: the split tables are not there ({', '.join(missing) or 'state legacy'})",
                hint="run `migrator expand` and `migrator backfill` first",
            )
        return st.state

    def _queries(self, conn: psycopg.Connection[Any]) -> Queries:
        """Queries for this database: casts where a legacy column's type differs from its split column's, and
        the poison part only when a required split column lacks its NOT NULL."""
        spec = self.spec

        def columns(table: sql.Identifier) -> dict[str, tuple[str, bool]]:
            rows = _execute(conn, render_validator("_column_types"), {"table": as_text(table)}).fetchall()
            return {r[0]: (r[1], r[2]) for r in rows}

        legacy = columns(self.queries.legacy)
        split = columns(self.queries.base)
        for v in spec.variants:
            split.update(columns(names.split(spec, v.table)))
        # Meta columns are compared as the jsonb the trigger stores: no cast.
        compared = [
            spec.pk,
            *spec.stored(spec.base.columns),
            *(c for v in spec.variants for c in spec.stored(v.columns)),
        ]
        casts = frozenset(c for c in compared if legacy.get(c, ("?", False))[0] != split.get(c, ("", False))[0])
        required = [c for _, _, c, cs in spec.iter_columns() if cs.required and c in split]
        poison = not all(split[c][1] for c in required)
        return Queries(spec, casts, poison=poison)

    def _classify_references(self, conn: psycopg.Connection[Any]) -> None:
        for i, ref in enumerate(self.spec.references):
            exists, indexed = _execute(
                conn,
                render_validator("_reference_indexed"),
                {"table": as_text(ident(ref.schema_, ref.table)), "column": ref.column},
            ).fetchone()  # type: ignore[misc]
            if not exists:
                raise TableDoesNotExist(
                    f"the spec's reference table {ref.schema_}.{ref.table} does not exist",
                    hint="fix [[references]] in the spec",
                )
            (self.indexed_refs if indexed else self.unindexed_refs).append(i)
            if not indexed:
                self.reporter.step(
                    f"{ref.table}.{ref.column} has no index: its references check reads it in one pass "
                    "(contract's foreign key will want that index too)"
                )

    def _plan_chunks(self, conn: psycopg.Connection[Any]) -> list[Chunk]:
        """Chunk boundaries, each found by a short index walk; then the open quarantine keys per chunk."""
        bounds: list[str] = []
        while True:
            lo = bounds[-1] if bounds else None
            row = _execute(
                conn, self.queries.chunk_bound(lo is not None), {"lo": lo, "chunk_rows": self.chunk_rows}
            ).fetchone()
            if row is None:
                break
            bounds.append(row[0])
        edges: list[str | None] = [None, *bounds, None]
        quarantined: dict[int, tuple[str, ...]] = {}
        rows = _execute(conn, self.queries.quarantine_buckets(), {**self.params, "bounds": bounds}).fetchall()
        for bucket, keys in rows:
            quarantined[int(bucket)] = tuple(keys)
        return [Chunk(i, Scope(edges[i], edges[i + 1]), quarantined.get(i, ())) for i in range(len(edges) - 1)]

    # -- the hash pass -------------------------------------------------------------------------------------------

    def _hash_pass(
        self, chunks: list[Chunk], total: int
    ) -> tuple[_Found, list[tuple[Chunk, set[tuple[str, str]]]], int]:
        """Hash every chunk (in parallel); returns what was found, the chunks whose hashes differed (with the
        failures each found), and the legacy rows hashed."""
        found = _Found()
        mismatched: list[tuple[Chunk, set[tuple[str, str]]]] = []
        done = [0, 0, 0]  # rows compared, chunks, legacy rows read (quarantined ones too: what the total counts)
        t0 = time.monotonic()

        def work(chunk: Chunk) -> None:
            if self.health is not None:
                # Between chunks this worker holds no snapshot: waiting here holds back neither vacuum nor DDL.
                self.health.wait_until_green(self._conn(), self._stop)
            c0 = time.monotonic()
            # A lock timeout behind someone's DDL, or a dropped connection, costs this chunk one more try.
            with self.pacer.working():
                rows, chunk_found, differs = retry.run_with_retry(lambda: self._examine(chunk), attempts=5)
            with self._lock:
                found.merge(chunk_found)
                if differs:
                    mismatched.append((chunk, set(chunk_found.failures)))
                done[0] += rows
                done[1] += 1
                done[2] += rows + len(chunk.quarantined)
                self.reporter.progress(
                    done[2],
                    max(total, done[2]),
                    chunk=chunk.number,
                    chunks=len(chunks),
                    chunks_done=done[1],
                    mismatched_chunks=len(mismatched),
                    seconds=round(time.monotonic() - t0, 3),
                    chunk_ms=round((time.monotonic() - c0) * 1000, 1),
                    pace=self.pacer.describe(),
                )
            self.pacer.rest(time.monotonic() - c0, self._stop)
            self.limiter.done(rows + len(chunk.quarantined))

        if self.workers == 1 or len(chunks) == 1:
            for chunk in chunks:
                work(chunk)
        else:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="validate") as pool:
                futures = [pool.submit(work, c) for c in chunks]
                try:
                    for future in futures:
                        future.result()
                except BaseException:
                    # Do not read the rest of a big table only to report the first error afterwards.
                    self._stop.set()
                    for future in futures:
                        future.cancel()
                    raise
        mismatched.sort(key=lambda m: m[0].number)
        return found, mismatched, done[0]

    def _examine(self, chunk: Chunk) -> tuple[int, _Found, bool]:
        """Hash one chunk; where the hashes differ, run the row pass and every check on it, same snapshot."""
        conn = self._conn()
        params = {**self.params, **chunk.scope.params(), "quarantined": list(chunk.quarantined)}
        found = _Found()
        with _snapshot(conn):
            row = _execute(conn, self.queries.chunk_hash(chunk.scope), params).fetchone()
            assert row is not None
            rows, legacy_parts, legacy_hash, split_parts, split_hash = row
            differs = (legacy_parts, legacy_hash) != (split_parts, split_hash)
            if self.indexed_refs:
                found.merge(
                    self._run_checks(
                        conn, chunk.scope, ["references"], refs=self.indexed_refs, quarantined=chunk.quarantined
                    )
                )
            if differs:
                found.merge(self._row_pass(conn, chunk.scope))
                hashed_only = [c.name for c in SQL_CHECKS if not c.every_chunk]
                found.merge(self._run_checks(conn, chunk.scope, hashed_only))
        return int(rows), found, differs

    def _row_pass(self, conn: psycopg.Connection[Any], scope: Scope) -> _Found:
        found = _Found()
        # The views join base and children on the key alone; on a key range the planner picks hash joins that
        # read each child table whole. Nested loops over the children's primary keys read only the range.
        set_local(conn, enable_hashjoin=False, enable_mergejoin=False)
        try:
            rows = _execute(conn, self.queries.row_diff(scope), {**self.params, **scope.params()}).fetchall()
        finally:
            set_local(conn, enable_hashjoin=True, enable_mergejoin=True)
        columns = self.spec.legacy_columns()
        for key, in_legacy, in_split, differs, legacy_values, split_values in rows:
            if not in_split:
                diff = RowDiff(key, "missing_in_split")
            elif not in_legacy:
                diff = RowDiff(key, "extra_in_split")
            else:
                diff = RowDiff(
                    key,
                    "differs",
                    tuple(
                        ColumnDiff(col, _value(lv), _value(sv))
                        for col, d, lv, sv in zip(columns, differs, legacy_values, split_values, strict=True)
                        if d
                    ),
                )
            found.row_diffs[key] = diff
            found.failures[("row_equality", key)] = Failure(key, "row_equality", diff.describe())
        return found

    def _run_checks(
        self,
        conn: psycopg.Connection[Any],
        scope: Scope,
        check_names: Sequence[str],
        refs: Sequence[int] | None = None,
        quarantined: Sequence[str] | None = None,
    ) -> _Found:
        """Run checks over scope; with `quarantined` (the chunk's keys read at the start) instead of reading the
        quarantine table per row."""
        found = _Found()
        params = {**self.params, **scope.params(), "quarantined": list(quarantined or ())}
        for check_name in check_names:
            query = BY_NAME[check_name].statement(self.queries, scope, refs, quarantine_from_table=quarantined is None)
            if query is None:
                continue
            for key, check, detail in _execute(conn, query, params):
                found.failures[(check, key)] = Failure(key, check, clip(detail, 400))
        return found

    # -- re-check ------------------------------------------------------------------------------------------------

    def _recheck(self, found: _Found) -> _Found:
        """Read every failing key again in a fresh snapshot; keep what is still failing."""
        keys = sorted(found.keys())
        confirmed = _Found()
        if not keys:
            return confirmed
        self.reporter.step(f"re-checking {len(keys):,} key(s) in a fresh snapshot")
        conn = self._conn()
        check_names = [c.name for c in SQL_CHECKS]
        for i in range(0, len(keys), RECHECK_BATCH):
            scope = Scope(keys=tuple(keys[i : i + RECHECK_BATCH]))
            with _snapshot(conn):
                again = self._row_pass(conn, scope)
                again.merge(self._run_checks(conn, scope, check_names, refs=self.indexed_refs))
            for pair, failure in again.failures.items():
                if pair in found.failures:
                    confirmed.failures[pair] = failure
                    if pair[0] == "row_equality":
                        confirmed.row_diffs[pair[1]] = again.row_diffs[pair[1]]
        return confirmed

    def _still_differs(self, chunks: list[Chunk]) -> list[Chunk]:
        """Chunks whose hashes differed with nothing to show for it: hash again, quarantine read fresh."""
        out = []
        conn = self._conn()
        for chunk in chunks:
            with _snapshot(conn):
                row = _execute(
                    conn,
                    self.queries.chunk_hash(chunk.scope, quarantine_from_table=True),
                    {**self.params, **chunk.scope.params()},
                ).fetchone()
            assert row is not None
            if (row[1], row[2]) != (row[3], row[4]):
                out.append(chunk)
        return out

    def _unindexed_references(self) -> _Found:
        conn = self._conn()
        with _snapshot(conn):
            first = self._run_checks(conn, Scope(), ["references"], refs=self.unindexed_refs)
        if not first.failures:
            return first
        keys = tuple(sorted({k for _, k in first.failures}))
        with _snapshot(conn):
            again = self._run_checks(conn, Scope(keys=keys), ["references"], refs=self.unindexed_refs)
        return _Found({p: f for p, f in again.failures.items() if p in first.failures})

    # -- results -------------------------------------------------------------------------------------------------

    def _collect(self, result: ValidationResult, confirmed: _Found) -> None:
        by_name = {c.name: c for c in result.checks}
        for (check, _), failure in sorted(confirmed.failures.items(), key=lambda kv: _sort_key(kv[0])):
            by_name[check].add(failure)
        result.row_diffs = [confirmed.row_diffs[k] for k in sorted(confirmed.row_diffs, key=_natural)]

    def _quarantine_summary(self, conn: psycopg.Connection[Any]) -> QuarantineSummary:
        summary = QuarantineSummary()
        with _snapshot(conn):
            for key, sqlstate, message, source, accepted in _execute(
                conn, self.queries.quarantine_summary(), self.params
            ):
                summary.open += 1
                summary.accepted += bool(accepted)
                summary.by_sqlstate[sqlstate] = summary.by_sqlstate.get(sqlstate, 0) + 1
                summary.keys.append(key)
                if len(summary.sample) < 100:
                    summary.sample.append(
                        {"key": key, "sqlstate": sqlstate, "message": message, "source": source, "accepted": accepted}
                    )
            if summary.open:
                for i, ref in enumerate(self.spec.references):
                    n = _execute(conn, self.queries.quarantine_references(i), self.params).fetchone()
                    if n and n[0]:
                        summary.referenced_by[f"{display(ref.schema_, ref.table)}.{ref.column}"] = int(n[0])
        return summary


def _value(v: str | None) -> str | None:
    return None if v is None else clip(v)


def _natural(key: str) -> tuple[int, int | str]:
    return (0, int(key)) if re.fullmatch(r"-?\d+", key) else (1, key)


def _sort_key(pair: tuple[str, str]) -> tuple[int, tuple[int, int | str]]:
    return (CHECK_NAMES.index(pair[0]), _natural(pair[1]))


def run_validation(db: Database, spec: Spec, **settings: Any) -> ValidationResult:
    """Run every check, read-only, in any state that has split tables; the guard later phases call. `settings` are
    Validation's keyword arguments (chunk_rows, workers, max_rows_per_second, reporter, health, full_speed)."""
    return Validation(db, spec, **settings).run()

"""The forward copy engine: workers that copy every legacy row the triggers have not touched yet into the split
tables, range by range, chunk by chunk.

The rules it keeps (DESIGN.md §Races):
1. It never overwrites: a chunk inserts only the base rows not there yet (a plain INSERT that fails, never
   overwrites, should a trigger write the row meanwhile; the chunk is then redone with ON CONFLICT DO NOTHING),
   and writes a row's children and meta only when it won the base insert, so a row a trigger wrote (always
   newer) is left alone whole.
2. No zombies: a chunk reads its legacy rows FOR KEY SHARE, so a concurrent DELETE waits for the chunk to
   commit, and its trigger then deletes the copy.
4. Rows the split schema rejects are re-read under a row lock and passed to the same sync function the
   trigger uses, which quarantines them with PostgreSQL's own SQLSTATE and message.
7. It yields: each chunk runs under a short SET LOCAL lock_timeout, and on lock timeout or deadlock it is
   retried smaller. The chunk size follows a target chunk time (EWMA of the observed rate, growth <= 1.5x).
8. No long transactions: one short transaction per chunk, which also commits the range's checkpoint.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from migrator import state
from migrator.copy import forward_sql
from migrator.copy.planner_stats import PlannerStats
from migrator.db import Database, scalar
from migrator.engine import retry
from migrator.engine.chunking import ChunkSizer, RateLimiter
from migrator.engine.context import Report
from migrator.engine.health import Health, Limits
from migrator.engine.pace import Pacer
from migrator.engine.session import set_local
from migrator.spec import Spec
from migrator.sqlgen import names

CHUNK_LOCK_TIMEOUT = 0.05
CHUNK_STATEMENT_TIMEOUT = 60.0
RANGES_PER_WORKER = 4
LEASE_SECONDS = 30.0
# The copy writes the split tables' new pages out of shared buffers itself, and by default PostgreSQL leaves
# those writes dirty in the OS page cache: hundreds of MB that the kernel or the checkpoint's fsync then pushes
# to disk in one burst, stalling the application's WAL fsyncs behind it (its commits waited 50-100 ms at once,
# p99 12x its baseline in bench/backfill_latency.py). Asking the kernel to write them back every 256 kB (as the
# checkpointer does by default) spreads that I/O over the copy: the writer's p99 during the copy fell 4x at
# the same copy speed. A user-settable setting; the application's sessions keep theirs.
BACKEND_FLUSH_AFTER = "256kB"

# After a chunk met a row a trigger had just written, this many chunks run in the careful form (ON CONFLICT).
CAREFUL_CHUNKS = 10
# A chunk that keeps meeting the application's locks is retried smaller this many times, waiting a little longer
# each time (up to CHUNK_RETRY_MAX_WAIT), before the backfill gives up: about 18 s of yielding in all.
CHUNK_RETRIES = 60
CHUNK_RETRY_MAX_WAIT = 0.5
KEEPALIVE_SECONDS = 1.0

UNIQUE_VIOLATION = "23505"
# Data exceptions (22) and integrity violations (23): the row, not the moment, is at fault.
ROW_REJECTED_CLASSES = ("22", "23")


@dataclass(frozen=True)
class Options:
    """How a backfill runs; every field has a CLI option of the same name."""

    workers: int = 1
    chunk_time: float = 0.1
    batch_size: int | None = None
    max_rows_per_second: float | None = None
    # Off: the pace adapts to the application's load (engine/pace.py); on: as fast as the server goes.
    full_speed: bool = False
    throttle_query: str | None = None
    lock_timeout: float = CHUNK_LOCK_TIMEOUT
    join: bool = False
    lease: float = LEASE_SECONDS
    health: Limits = field(default_factory=Limits)


def may_skip_fk_triggers(conn: psycopg.Connection[Any]) -> bool:
    """Whether this session may set session_replication_role (superuser, or GRANT SET ON PARAMETER).

    A foreign key's check is a trigger that runs one query per inserted row: about half of a chunk's time. A
    chunk checks the spec's foreign keys itself instead, set-based (it locks the referenced rows FOR KEY SHARE, as
    that trigger would, and rejects the rows whose target is missing), and the children's keys point at the base
    rows the same statement inserted; so the copy statement may run with those triggers off
    (session_replication_role = replica, as pg_restore and logical replication do). Without the privilege the
    triggers run as usual: slower, same result."""
    try:
        with conn.transaction(force_rollback=True):
            set_local(conn, session_replication_role="replica")
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


# -- ranges -------------------------------------------------------------------------------------------------


def ensure_ranges(conn: psycopg.Connection[Any], spec: Spec, workers: int) -> None:
    """Plan the key ranges once per backfill; a resumed backfill keeps the plan it started with."""
    ranges = forward_sql.ranges(spec)
    exists = scalar(conn, sql.SQL("SELECT count(*) FROM {} WHERE migration = %s").format(ranges), [spec.migration_name])
    if exists:
        return
    n = max(1, workers) * RANGES_PER_WORKER if workers > 1 else 1
    fractions = [i / n for i in range(1, n)]
    # The upper bound is fixed now: rows inserted later are the triggers' job, so the backfill ends.
    row = conn.execute(forward_sql.boundaries_sql(spec), {"fractions": fractions}).fetchone()
    assert row is not None
    hi, bounds = row[0], list(dict.fromkeys(row[1] or []))
    if hi is None:
        bounds = []
    edges: list[str | None] = [None, *[b for b in bounds if b != hi], hi]
    with conn.transaction():
        for i in range(len(edges) - 1):
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (migration, range_no, lo_key, hi_key, status) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
                ).format(ranges),
                [spec.migration_name, i, edges[i], edges[i + 1], "done" if hi is None else "pending"],
            )


def progress_totals(conn: psycopg.Connection[Any], spec: Spec) -> tuple[int, int, int]:
    """(rows done, ranges done, ranges) for the current backfill plan."""
    row = conn.execute(
        sql.SQL(
            "SELECT coalesce(sum(rows_done), 0), count(*) FILTER (WHERE status = 'done'), count(*) "
            "FROM {} WHERE migration = %s"
        ).format(forward_sql.ranges(spec)),
        [spec.migration_name],
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def legacy_estimate(conn: psycopg.Connection[Any], spec: Spec) -> int:
    """The legacy row count progress is measured against: the planner's estimate (kept by autovacuum and ANALYZE),
    counted only for a table never analyzed. An exact count reads the whole table as the backfill starts, and the
    application's writes waited 15-29 ms behind it (200k rows, pgbench)."""
    estimate = scalar(
        conn,
        sql.SQL("SELECT reltuples::bigint FROM pg_catalog.pg_class WHERE oid = {}::regclass").format(
            names.regclass_literal(spec.source.schema_, spec.source.table)
        ),
    )
    if estimate is not None and int(estimate) >= 0:
        return int(estimate)
    return int(scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(names.source(spec))) or 0)


def check_copy(conn: psycopg.Connection[Any], spec: Spec, report: Report) -> None:
    """Every legacy row is in the base table or in quarantine, and every base row's foreign keys hold."""
    params = {"migration": spec.migration_name}
    unsynced = int(scalar(conn, forward_sql.unsynced_sql(spec), params) or 0)
    quarantined = int(scalar(conn, forward_sql.open_quarantine_sql(spec), params) or 0)
    report.details.update({"unsynced": unsynced, "quarantined": quarantined})
    report.check(
        unsynced == 0,
        "every legacy row is copied or quarantined",
        f"{unsynced:,} legacy rows are neither copied nor quarantined",
    )
    # The chunks may have run with the foreign-key triggers off (they check the keys themselves): check the result
    # as VALIDATE CONSTRAINT would, so a mistake there shows here rather than as a constraint PostgreSQL trusts.
    for fk in spec.base.foreign_keys:
        orphans = int(scalar(conn, forward_sql.orphans_sql(spec, fk)) or 0)
        report.check(
            orphans == 0,
            f"every {spec.base.table}.{fk.column} points at a {fk.references} row",
            f"{orphans:,} {spec.base.table} rows point at a missing {fk.references} row",
        )


# -- workers ------------------------------------------------------------------------------------------------


@dataclass
class ChunkResult:
    rows: int
    inserted: int
    rejected: int
    last_key: str | None
    finished: bool
    paused: bool
    seconds: float


class RangeLost(Exception):
    """Another worker took this range over (our lease had expired); leave it to them."""


@dataclass
class Shared:
    """State the workers of one process share: counters, the stop signal, the reporter."""

    on_chunk: Callable[[dict[str, Any]], None]
    on_step: Callable[[str], None]
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    rows: int = 0
    errors: list[BaseException] = field(default_factory=list)
    # The health signals the workers wait on between chunks (None: not checked, as in tests of the copy alone).
    health: Health | None = None
    # The adaptive pace the workers rest by between chunks (run_workers sets it for the run).
    pacer: Pacer = field(default_factory=lambda: Pacer(None))
    # ANALYZE of the split tables as they grow (run_workers sets it for the run).
    stats: PlannerStats | None = None


class Worker:
    """Claims ranges and copies them chunk by chunk until no range is left to claim."""

    def __init__(self, db: Database, spec: Spec, opts: Options, number: int, shared: Shared) -> None:
        self.db, self.spec, self.opts, self.shared = db, spec, opts, shared
        self.id = f"{socket.gethostname()}:{os.getpid()}:{number}"
        per_worker = opts.max_rows_per_second / max(1, opts.workers) if opts.max_rows_per_second else None
        self.limiter = RateLimiter(per_worker)
        self.copied = 0
        self.sizer = ChunkSizer(opts.chunk_time, opts.batch_size)
        # (first chunk of a range?, careful?) -> the chunk's statement
        self.chunk_sql = {(f, c): forward_sql.chunk_sql(spec, not f, c) for f in (True, False) for c in (True, False)}
        self.careful_chunks = 0
        self.number = number
        self.set_based_fks: bool | None = None
        self.quarantine = forward_sql.quarantine_sql(spec)
        self.sync_keys = forward_sql.sync_keys_sql(spec)
        self.checkpoint = forward_sql.checkpoint_sql(spec)
        self.claim = forward_sql.claim_sql(spec)

    def run(self) -> None:
        try:
            # A lost connection loses at most the chunk in flight: its rows and its checkpoint commit together, so
            # a chunk whose commit never happened (or whose outcome we never heard) is claimed again from the
            # committed cursor and redone (only the rows not there yet), and rows_done never counts it twice.
            retry.survive_connection_loss(
                self._connect_and_loop,
                lambda exc: self.shared.on_step(f"worker {self.id}: {retry.lost_message(exc)}; reconnecting"),
                progress=lambda: self.copied,
            )
        except BaseException as exc:
            with self.shared.lock:
                self.shared.errors.append(exc)
            self.shared.stop.set()

    def _connect_and_loop(self) -> None:
        with self.db.connect(autocommit=True) as conn:
            set_based = may_skip_fk_triggers(conn)
            if self.number == 0 and set_based != self.set_based_fks:
                self.shared.on_step(
                    "foreign keys: checked per chunk, set-based (the copy runs with session_replication_role = replica)"
                    if set_based
                    else "foreign keys: checked per row by their triggers (this role may not set "
                    "session_replication_role; the copy is slower)"
                )
            self.set_based_fks = set_based
            self._loop(conn)

    def _loop(self, conn: psycopg.Connection[Any]) -> None:
        while not self.shared.stop.is_set():
            with conn.transaction():
                row = conn.execute(
                    self.claim, {"migration": self.spec.migration_name, "worker": self.id, "lease": self.opts.lease}
                ).fetchone()
            if row is None:
                return
            range_no, lo, hi, cursor, _done = row
            try:
                self._copy_range(conn, int(range_no), cursor if cursor is not None else lo, hi)
            except RangeLost:
                self.shared.on_step(f"worker {self.id}: range {range_no} was taken over; moving on")

    def _copy_range(self, conn: psycopg.Connection[Any], range_no: int, cursor: str | None, hi: str) -> None:
        while not self.shared.stop.is_set():
            self._wait_for_throttle(conn)
            if self.shared.health is not None:
                # Between chunks the worker holds no lock: waiting here costs the application nothing.
                self.shared.health.wait_until_green(conn, self.shared.stop)
            self.sizer.target = self.opts.chunk_time * self.shared.pacer.chunk_scale
            with self.shared.pacer.working():
                result = self._chunk_with_retry(conn, range_no, cursor, hi)
            self.copied += result.rows
            with self.shared.lock:
                self.shared.rows += result.rows
                total = self.shared.rows
            self.shared.on_chunk(
                {
                    "worker": self.id,
                    "range": range_no,
                    "rows": result.rows,
                    "inserted": result.inserted,
                    "rejected": result.rejected,
                    "chunk_size": self.sizer.next(),
                    "chunk_ms": round(result.seconds * 1000, 1),
                    "rows_total": total,
                    "pace": self.shared.pacer.describe(),
                }
            )
            if self.shared.stats is not None:
                with self.shared.pacer.working():
                    self.shared.stats.grown(conn, total)
            if result.last_key is not None:
                cursor = result.last_key
            if result.paused:
                self._wait_while_paused(conn)
            if result.finished:
                return
            self.shared.pacer.rest(result.seconds, self.shared.stop)
            self.limiter.done(result.rows)

    def _chunk_with_retry(
        self, conn: psycopg.Connection[Any], range_no: int, cursor: str | None, hi: str
    ) -> ChunkResult:
        # Not run_with_retry: each failure asks for its own next move (a careful redo, a smaller chunk, the
        # row-by-row path), and a lost connection is left to the worker's survive_connection_loss.
        tries = 0
        while True:
            size = self.sizer.next()
            try:
                result = self._chunk(conn, range_no, cursor, hi, size, careful=self.careful_chunks > 0)
            except psycopg.Error as exc:
                code = retry.sqlstate(exc)
                if code == UNIQUE_VIOLATION and not self.careful_chunks:
                    # A trigger wrote one of the chunk's rows after the chunk looked: redo the chunk with ON
                    # CONFLICT DO NOTHING, and stay careful for a while, as the application is writing here.
                    self.careful_chunks = CAREFUL_CHUNKS
                    continue
                if code in retry.TRANSIENT_SQLSTATES and tries < CHUNK_RETRIES:
                    # The app holds a lock we need (or we formed a deadlock with it): yield, then retry smaller.
                    tries += 1
                    self.sizer.shrink()
                    time.sleep(min(CHUNK_RETRY_MAX_WAIT, 0.01 * tries))
                    continue
                if code and code.startswith(ROW_REJECTED_CLASSES):
                    # A rejection the pre-check could not foresee (an FK, a value that does not fit): take the
                    # chunk row by row through the sync function, which quarantines exactly the bad rows.
                    return self._chunk_row_by_row(conn, range_no, cursor, hi, size)
                raise
            self.sizer.observe(result.rows, result.seconds)
            self.careful_chunks = max(0, self.careful_chunks - 1)
            return result

    def _chunk(
        self, conn: psycopg.Connection[Any], range_no: int, cursor: str | None, hi: str, size: int, careful: bool
    ) -> ChunkResult:
        t0 = time.monotonic()
        with conn.transaction():
            self._settings(conn, fk_triggers=not self.set_based_fks)
            query = self.chunk_sql[(cursor is None, careful)]
            row = conn.execute(query, {"lo": cursor, "hi": hi, "limit": size}).fetchone()
            assert row is not None
            n, last_key, inserted, rejected_keys = int(row[0]), row[1], int(row[2]), list(row[3])
            if rejected_keys:
                if self.set_based_fks:
                    # The quarantine deletes stale rows (their cascades are triggers) and the sync function must
                    # meet every foreign key: both run with the triggers on.
                    set_local(conn, session_replication_role="origin")
                # Re-read the rejected rows under a row lock (latest version): still bad -> quarantine, set-based;
                # fixed meanwhile (rare) -> the trigger's own sync function.
                fixed = conn.execute(
                    self.quarantine, {"keys": rejected_keys, "migration": self.spec.migration_name}
                ).fetchone()
                if fixed and fixed[0]:
                    conn.execute(self.sync_keys, {"keys": list(fixed[0])})
            finished = n < size
            paused = self._checkpoint(conn, range_no, last_key, n, finished)
        return ChunkResult(n, inserted, len(rejected_keys), last_key, finished, paused, time.monotonic() - t0)

    def _chunk_row_by_row(
        self, conn: psycopg.Connection[Any], range_no: int, cursor: str | None, hi: str, size: int
    ) -> ChunkResult:
        t0 = time.monotonic()
        with conn.transaction():
            self._settings(conn)
            lock_range = forward_sql.lock_range_sql(self.spec, cursor is not None)
            keys = [r[0] for r in conn.execute(lock_range, {"lo": cursor, "hi": hi, "limit": size}).fetchall()]
            if keys:
                conn.execute(self.sync_keys, {"keys": keys})
            last_key = keys[-1] if keys else None
            finished = len(keys) < size
            paused = self._checkpoint(conn, range_no, last_key, len(keys), finished)
        return ChunkResult(len(keys), 0, len(keys), last_key, finished, paused, time.monotonic() - t0)

    def _settings(self, conn: psycopg.Connection[Any], fk_triggers: bool = True) -> None:
        # synchronous_commit is off for chunk transactions only: a chunk's rows and its checkpoint commit together,
        # so a crash that loses the last chunks loses their checkpoint too, and the resumed backfill copies them
        # again. The application's commits keep their own setting. backend_flush_after: see BACKEND_FLUSH_AFTER.
        set_local(
            conn,
            lock_timeout=self.opts.lock_timeout,
            statement_timeout=CHUNK_STATEMENT_TIMEOUT,
            synchronous_commit=False,
            # Only a role that may set it (may_skip_fk_triggers) touches it at all: for any other, even setting
            # the default 'origin' is refused (42501), and the default is what it runs with.
            session_replication_role=("origin" if fk_triggers else "replica") if self.set_based_fks else None,
            backend_flush_after=BACKEND_FLUSH_AFTER,
        )

    def _checkpoint(
        self, conn: psycopg.Connection[Any], range_no: int, last_key: str | None, rows: int, finished: bool
    ) -> bool:
        row = conn.execute(
            self.checkpoint,
            {
                "cursor": last_key,
                "rows": rows,
                "finished": finished,
                "migration": self.spec.migration_name,
                "range_no": range_no,
                "worker": self.id,
            },
        ).fetchone()
        if row is None:
            raise RangeLost(range_no)
        return bool(row[0])

    def _wait_while_paused(self, conn: psycopg.Connection[Any]) -> None:
        self.shared.on_step(f"worker {self.id}: paused (run `migrator resume` to continue)")
        while not self.shared.stop.is_set():
            time.sleep(0.5)
            st = state.read(conn, self.spec)
            if not st.paused:
                self.shared.on_step(f"worker {self.id}: resumed")
                return

    def _wait_for_throttle(self, conn: psycopg.Connection[Any]) -> None:
        if not self.opts.throttle_query:
            return
        announced = False
        while not self.shared.stop.is_set():
            value = scalar(conn, self.opts.throttle_query)  # the operator's own query, run as given
            if value is None or float(value) <= 0:
                return
            if not announced:
                self.shared.on_step(f"worker {self.id}: throttled (throttle query returned {value})")
                announced = True
            time.sleep(1.0)


def run_workers(
    db: Database, spec: Spec, opts: Options, shared: Shared, keepalive: Callable[[], object] | None = None
) -> None:
    """Run the workers to the end; `keepalive` is called about once a second meanwhile (the coordinator's)."""
    if not opts.full_speed and not opts.batch_size:
        # A fixed --batch-size is a hand-set pace; the adaptive one would fight it.
        shared.pacer = Pacer(lambda: db.raw_connect(autocommit=True), shared.on_step)
    if shared.stats is None:
        shared.stats = PlannerStats(spec, shared.on_step)
    with shared.pacer:
        _run_threads(db, spec, opts, shared, keepalive)


def _run_threads(
    db: Database, spec: Spec, opts: Options, shared: Shared, keepalive: Callable[[], object] | None
) -> None:
    threads = [
        threading.Thread(target=Worker(db, spec, opts, i, shared).run, name=f"backfill-{i}", daemon=True)
        for i in range(max(1, opts.workers))
    ]
    for t in threads:
        t.start()
    try:
        last = time.monotonic()
        for t in threads:
            while t.is_alive():
                t.join(0.2)
                if keepalive is not None and time.monotonic() - last >= KEEPALIVE_SECONDS:
                    keepalive()
                    last = time.monotonic()
    except BaseException:  # Ctrl-C, or the keepalive found the lock or the state gone: stop within one chunk
        shared.stop.set()
        for t in threads:
            t.join(10)
        raise
    if shared.errors:
        raise shared.errors[0]

"""backfill (dual_write -> backfilled): copy every legacy row the triggers have not touched yet.

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
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from migrator import state
from migrator.sqlgen import names, triggers
from migrator.engine import retry
from migrator.db import Database, scalar
from migrator.errors import GuardFailed, OperationalError
from migrator.phases import expand
from migrator.phases.base import (
    Action,
    Context,
    RateLimiter,
    Report,
    after_cursor,
    announce,
    check_done,
    object_name,
    run_actions,
)
from migrator.spec import ColumnSpec, Spec
from migrator.sqlgen.compose import ident, join, literal, raw, render

name = "backfill"

CHUNK_LOCK_TIMEOUT = 0.05
CHUNK_STATEMENT_TIMEOUT = 60.0
RANGES_PER_WORKER = 4
LEASE_SECONDS = 30.0
MIN_CHUNK = 10
MAX_CHUNK = 50_000
INITIAL_CHUNK = 500
# The copy writes the split tables' new pages out of shared buffers itself, and by default PostgreSQL leaves
# those writes dirty in the OS page cache: hundreds of MB that the kernel or the checkpoint's fsync then pushes
# to disk in one burst, stalling the application's WAL fsyncs behind it (its commits waited 50-100 ms at once,
# p99 12x its baseline in bench/backfill_latency.py). Asking the kernel to write them back every 256 kB (as the
# checkpointer does by default) spreads that I/O over the copy: the writer's p99 during the copy fell 4x at
# the same copy speed. A user-settable setting; the application's sessions keep theirs.
BACKEND_FLUSH_AFTER = "256kB"

# After a chunk met a row a trigger had just written, this many chunks run in the careful form (ON CONFLICT).
CAREFUL_CHUNKS = 10
# How long one outage (a server restart, a failover) may last before the backfill gives up on it. A window of time,
# not a number of attempts: with jittered backoff, ten attempts can be spent in well under a second.
RECONNECT_WINDOW = 60.0
RECONNECT_MAX_WAIT = 2.0
KEEPALIVE_SECONDS = 1.0

T = TypeVar("T")


@dataclass
class Options:
    """How a backfill runs; every field has a CLI option of the same name."""

    workers: int = 1
    chunk_time: float = 0.1
    batch_size: int | None = None
    max_rows_per_second: float | None = None
    throttle_query: str | None = None
    lock_timeout: float = CHUNK_LOCK_TIMEOUT
    join: bool = False
    lease: float = LEASE_SECONDS


# -- chunk sizing -------------------------------------------------------------------------------------------


class ChunkSizer:
    """Chooses the next chunk size from the observed rate, as pt-osc does (EWMA, bounded growth)."""

    def __init__(self, target: float, fixed: int | None = None, initial: int = INITIAL_CHUNK) -> None:
        self.target = target
        self.fixed = fixed
        self.size = fixed or initial
        self.rate: float | None = None

    def next(self) -> int:
        return self.fixed or self.size

    def observe(self, rows: int, seconds: float) -> None:
        if self.fixed or rows <= 0 or seconds <= 0:
            return
        rate = rows / seconds
        self.rate = rate if self.rate is None else 0.3 * rate + 0.7 * self.rate
        if seconds > 5 * self.target:
            # Far too slow (a lock wait, a cold cache): cut at once to what would have met the target.
            self.size = max(MIN_CHUNK, int(rows * self.target / seconds))
            return
        wanted = int(self.rate * self.target)
        self.size = max(MIN_CHUNK, min(MAX_CHUNK, wanted, int(self.size * 1.5) + 1))

    def shrink(self) -> None:
        """After a lock timeout or deadlock: retry with half (a fixed --batch-size shrinks too, then recovers)."""
        base = self.size if not self.fixed else self.fixed
        self.size = max(1, base // 2)
        if self.fixed:
            self.fixed = None


# -- SQL ----------------------------------------------------------------------------------------------------


def _src(col: str) -> sql.Composed:
    return sql.Composed([raw("s."), ident(col)])


def _filled(expr: sql.Composable, cs: ColumnSpec) -> sql.Composable:
    if cs.required and not isinstance(cs.on_missing, str):
        return sql.SQL("coalesce({}, {}::{})").format(expr, literal(cs.on_missing.default), raw(cs.type))
    return expr


def _rejections(spec: Spec) -> list[tuple[sql.Composable, str, str]]:
    """(condition over legacy row l, SQLSTATE, message) for each rejection visible without trying, in the
    order PostgreSQL checks them (base NOT NULLs, the base CHECK, then the variant's NOT NULLs), worded as
    PostgreSQL words them, so backfill and trigger quarantine read the same."""
    disc_col = spec.source.discriminator
    disc = sql.Composed([raw("l."), ident(disc_col)])
    out: list[tuple[sql.Composable, str, str]] = []

    def not_null(table: str, col: str) -> str:
        return f'null value in column "{col}" of relation "{table}" violates not-null constraint'

    for col, cs in spec.base.columns.items():
        if cs.required and isinstance(cs.on_missing, str):
            out.append((sql.SQL("l.{} IS NULL").format(ident(col)), "23502", not_null(spec.base.table, col)))
    check = object_name(spec.base.table, disc_col, suffix="check")
    out.append(
        (
            sql.SQL("{} NOT IN ({})").format(disc, join([literal(v.when) for v in spec.variants])),
            "23514",
            f'new row for relation "{spec.base.table}" violates check constraint "{check}"',
        )
    )
    for v in spec.variants:
        for col, cs in v.columns.items():
            if cs.required and isinstance(cs.on_missing, str):
                cond = sql.SQL("{} = {} AND l.{} IS NULL").format(disc, literal(v.when), ident(col))
                out.append((cond, "23502", not_null(v.table, col)))
    return out


def _reason(spec: Spec, pick: int) -> sql.Composed:
    whens = [sql.SQL("WHEN {} THEN {}").format(r[0], literal(r[pick])) for r in _rejections(spec)]
    return sql.Composed([raw("CASE "), join(whens, " "), raw(" END")])


def _invalid_expr(spec: Spec) -> sql.Composable:
    """True for a legacy row the split schema would reject for a reason we can see without trying:
    a missing required value, or a discriminator no variant knows."""
    disc = sql.Composed([raw("l."), ident(spec.source.discriminator)])
    conds: list[sql.Composable] = [
        sql.SQL("{} IS NULL").format(disc),
        sql.SQL("{} NOT IN ({})").format(disc, join([literal(v.when) for v in spec.variants])),
    ]
    for col, cs in spec.base.columns.items():
        if cs.required and isinstance(cs.on_missing, str) and col != spec.source.discriminator:
            conds.append(sql.SQL("l.{} IS NULL").format(ident(col)))
    for v in spec.variants:
        for col, cs in v.columns.items():
            if cs.required and isinstance(cs.on_missing, str):
                conds.append(sql.SQL("({} = {} AND l.{} IS NULL)").format(disc, literal(v.when), ident(col)))
    return sql.Composed([raw("("), join(conds, " OR "), raw(")")])


def chunk_sql(spec: Spec, has_cursor: bool, careful: bool = False) -> sql.Composed:
    """One chunk: read legacy rows FOR KEY SHARE, insert the base rows that are not there yet, then the children
    and meta of the rows whose base insert won.

    The fast form skips the base rows already present (a probe of the primary key) and inserts with plain
    INSERTs: a speculative insertion (ON CONFLICT) costs about a quarter of the copy. A trigger that writes one of
    the chunk's rows after that probe makes the plain INSERT fail with a unique violation, never overwrite; the
    worker then runs the chunk again in the careful form, ON CONFLICT DO NOTHING everywhere (rule 1 either way)."""
    pk, pk_type, link = spec.pk, raw(spec.source.primary_key_type), spec.base.link_column
    lower = after_cursor(spec, "l", has_cursor)
    on_conflict = raw("\n    ON CONFLICT DO NOTHING") if careful else raw("")
    base = names.split(spec, spec.base.table)
    # OFFSET 0 keeps the probe a per-row subplan on the primary key: an anti-join could be planned as a hash join
    # that reads the whole (growing) base table once per chunk.
    new_only = (
        raw("")
        if careful
        else sql.SQL("\n       AND NOT EXISTS (SELECT FROM {} AS b WHERE b.{} = s.{} OFFSET 0)").format(
            base, ident(pk), ident(pk)
        )
    )
    children: list[sql.Composable] = []
    for i, v in enumerate(spec.variants):
        children.append(
            render(
                "backfill_child",
                name=ident(f"v{i}"),
                table=names.split(spec, v.table),
                cols=join([ident(c) for c in [link, *v.columns]]),
                vals=join([_src(pk), *(_filled(_src(c), cs) for c, cs in v.columns.items())]),
                pk=ident(pk),
                disc=ident(spec.source.discriminator),
                when=literal(v.when),
                on_conflict=on_conflict,
            )
        )
    fk_locks: list[sql.Composable] = []
    fk_found: list[sql.Composable] = []
    for i, fk in enumerate(spec.base.foreign_keys):
        fk_locks.append(
            render(
                "backfill_fk_lock",
                name=ident(f"fk{i}"),
                ref=ident(fk.references_schema, fk.references),
                ref_col=ident(fk.references_column),
                col=ident(fk.column),
            )
        )
        fk_found.append(
            sql.SQL("(s.{col} IS NULL OR s.{col} IN (SELECT k FROM {name}))").format(
                col=ident(fk.column), name=ident(f"fk{i}")
            )
        )
    if spec.meta:
        m = spec.meta
        pairs = join([sql.SQL("({}, to_jsonb({}))").format(literal(c), _src(c)) for c in m.columns])
        children.append(
            render(
                "backfill_meta",
                table=names.split(spec, m.table),
                link=ident(link),
                key=ident(m.key_column),
                value=ident(m.value_column),
                pk=ident(pk),
                pairs=pairs,
                on_conflict=on_conflict,
            )
        )
    return render(
        "backfill_chunk",
        src_cols=join([sql.SQL("l.{}").format(ident(c)) for c in spec.legacy_columns()]),
        invalid=_invalid_expr(spec),
        legacy=names.source(spec),
        lower=lower,
        pk=ident(pk),
        pk_type=pk_type,
        base=base,
        base_cols=join([ident(c) for c in [pk, *spec.base.columns]]),
        new_only=new_only,
        on_conflict=on_conflict,
        fk_locks=sql.Composed([raw(",\n"), join(fk_locks, ",\n")]) if fk_locks else raw(""),
        fk_found=join(fk_found, " AND ") if fk_found else raw("TRUE"),
        base_vals=join([_src(pk), *(_filled(_src(c), cs) for c, cs in spec.base.columns.items())]),
        children=sql.Composed([raw(",\n"), join(children, ",\n")]) if children else raw(""),
    )


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
            conn.execute("SELECT set_config('session_replication_role', 'replica', true)")
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


def _keys_sql(spec: Spec, template: str) -> sql.Composed:
    return render(
        template,
        legacy=names.source(spec),
        pk=ident(spec.pk),
        pk_type=raw(spec.source.primary_key_type),
        sync_function=names.function_name(spec, "sync"),
    )


def _lock_range_sql(spec: Spec, has_cursor: bool) -> sql.Composed:
    pk_type = raw(spec.source.primary_key_type)
    lower = after_cursor(spec, "l", has_cursor)
    return render("backfill_lock_range", legacy=names.source(spec), pk=ident(spec.pk), pk_type=pk_type, lower=lower)


def _ranges(spec: Spec) -> sql.Identifier:
    return names.state(spec, "backfill_ranges")


def plan(ctx: Context) -> list[Action]:
    """What one backfill runs: the range plan, then per chunk (repeated) the copy, the re-sync of rejected
    rows under lock, and the checkpoint — each chunk one transaction under a short lock_timeout."""
    spec = ctx.spec
    timeout = CHUNK_LOCK_TIMEOUT
    return [
        Action(
            "plan key ranges (once): upper bound, row count, boundaries for parallel workers",
            _boundaries_sql(spec),
            statement_timeout=0,
        ),
        Action(
            "copy one chunk (repeated; keyset on the primary key; FOR KEY SHARE; only rows not copied yet; "
            "foreign keys checked set-based, their triggers off where the role may set session_replication_role)",
            chunk_sql(spec, True),
            lock_timeout=timeout,
        ),
        Action(
            "a chunk that met a row a trigger wrote meanwhile (unique violation): redone, and the next "
            f"{CAREFUL_CHUNKS} chunks run, with ON CONFLICT DO NOTHING",
            chunk_sql(spec, True, careful=True),
            lock_timeout=timeout,
        ),
        Action(
            "rows the split schema rejects: lock them and sync through the trigger's function (quarantine)",
            _keys_sql(spec, "backfill_sync_keys"),
            lock_timeout=timeout,
        ),
        Action(
            "checkpoint the range's cursor in the chunk's transaction (resume point after kill -9)",
            render("backfill_checkpoint", ranges=_ranges(spec), state=names.state(spec, "state")),
            lock_timeout=timeout,
        ),
        # One sorted build per index once the rows are in, rather than maintaining it row by row during the copy.
        *expand.index_actions(spec, "backfill"),
    ]


def _boundaries_sql(spec: Spec) -> sql.Composed:
    return render("backfill_boundaries", legacy=names.source(spec), pk=ident(spec.pk))


# -- ranges -------------------------------------------------------------------------------------------------


def ensure_ranges(conn: psycopg.Connection[Any], spec: Spec, workers: int) -> None:
    """Plan the key ranges once per backfill; a resumed backfill keeps the plan it started with."""
    ranges = _ranges(spec)
    exists = scalar(conn, sql.SQL("SELECT count(*) FROM {} WHERE migration = %s").format(ranges), [spec.migration_name])
    if exists:
        return
    n = max(1, workers) * RANGES_PER_WORKER if workers > 1 else 1
    fractions = [i / n for i in range(1, n)]
    # The upper bound is fixed now: rows inserted later are the triggers' job, so the backfill ends.
    row = conn.execute(_boundaries_sql(spec), {"fractions": fractions}).fetchone()
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
        ).format(_ranges(spec)),
        [spec.migration_name],
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def legacy_estimate(conn: psycopg.Connection[Any], spec: Spec) -> int:
    return int(scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(names.source(spec))) or 0)


# -- surviving a server restart ------------------------------------------------------------------------------


def connection_lost(exc: BaseException) -> bool:
    """The session is gone (server restart, failover, terminated backend), or a new one is refused while the server
    is down or starting up. Db.raw_connect reports a refused connection as migrator's own OperationalError and
    keeps the driver's error only as its context, so that is where we look."""
    if retry.is_connection_loss(exc):
        return True
    cause = exc.__cause__ or exc.__context__
    return isinstance(exc, OperationalError) and cause is not None and retry.is_connection_loss(cause)


def _lost_message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"connection lost ({text[0] if text else type(exc).__name__})"


def survive_connection_loss(
    fn: Callable[[], T], on_lost: Callable[[BaseException], None], *, progress: Callable[[], int] | None = None
) -> T:
    """Run fn until it returns, running it again after a lost connection, for up to RECONNECT_WINDOW seconds per
    outage. An outage ends when fn made progress (progress() moved) since it began: a long backfill may live
    through several restarts, but a server that never comes back stops it."""
    began: float | None = None
    seen = progress() if progress else 0
    wait = 0.05
    while True:
        try:
            return fn()
        except Exception as exc:
            if not connection_lost(exc):
                raise
            now = time.monotonic()
            if progress is not None and progress() != seen:
                seen, began, wait = progress(), None, 0.05
            if began is None:
                began = now
                on_lost(exc)  # once per outage: its retries would only repeat it
            elif now - began > RECONNECT_WINDOW:
                raise
        # Jittered, so the workers of one or several hosts don't reconnect in step.
        time.sleep(random.uniform(wait / 2, wait))  # noqa: S311 — jitter, not a secret
        wait = min(RECONNECT_MAX_WAIT, wait * 2)


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
        self.chunk_sql = {(f, c): chunk_sql(spec, not f, c) for f in (True, False) for c in (True, False)}
        self.careful_chunks = 0
        self.number = number
        self.set_based_fks: bool | None = None
        self.quarantine = render(
            "backfill_quarantine",
            legacy=names.source(spec),
            pk=ident(spec.pk),
            pk_type=raw(spec.source.primary_key_type),
            base=names.split(spec, spec.base.table),
            quarantine=names.state(spec, "quarantine"),
            reason_state=_reason(spec, 1),
            reason_message=_reason(spec, 2),
        )
        self.sync_keys = _keys_sql(spec, "backfill_sync_keys")
        self.checkpoint = render("backfill_checkpoint", ranges=_ranges(spec), state=names.state(spec, "state"))
        self.claim = render("backfill_claim", ranges=_ranges(spec))

    def run(self) -> None:
        try:
            # A lost connection loses at most the chunk in flight: its rows and its checkpoint commit together, so
            # a chunk whose commit never happened (or whose outcome we never heard) is claimed again from the
            # committed cursor and redone (only the rows not there yet), and rows_done never counts it twice.
            survive_connection_loss(
                self._connect_and_loop,
                lambda exc: self.shared.on_step(f"worker {self.id}: {_lost_message(exc)}; reconnecting"),
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
                }
            )
            if result.last_key is not None:
                cursor = result.last_key
            if result.paused:
                self._wait_while_paused(conn)
            if result.finished:
                return
            self.limiter.done(result.rows)

    def _chunk_with_retry(
        self, conn: psycopg.Connection[Any], range_no: int, cursor: str | None, hi: str
    ) -> ChunkResult:
        tries = 0
        while True:
            size = self.sizer.next()
            try:
                result = self._chunk(conn, range_no, cursor, hi, size, careful=self.careful_chunks > 0)
            except psycopg.Error as exc:
                state_ = retry.sqlstate(exc)
                if state_ == "23505" and not self.careful_chunks:
                    # A trigger wrote one of the chunk's rows after the chunk looked: redo the chunk with ON
                    # CONFLICT DO NOTHING, and stay careful for a while, as the application is writing here.
                    self.careful_chunks = CAREFUL_CHUNKS
                    continue
                if state_ in retry.TRANSIENT_SQLSTATES and tries < 60:
                    # The app holds a lock we need (or we formed a deadlock with it): yield, then retry smaller.
                    tries += 1
                    self.sizer.shrink()
                    time.sleep(min(0.5, 0.01 * tries))
                    continue
                if state_ and state_[:2] in ("22", "23"):
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
                    conn.execute("SELECT set_config('session_replication_role', 'origin', true)")
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
            keys = [
                r[0]
                for r in conn.execute(
                    _lock_range_sql(self.spec, cursor is not None), {"lo": cursor, "hi": hi, "limit": size}
                ).fetchall()
            ]
            if keys:
                conn.execute(self.sync_keys, {"keys": keys})
            last_key = keys[-1] if keys else None
            finished = len(keys) < size
            paused = self._checkpoint(conn, range_no, last_key, len(keys), finished)
        return ChunkResult(len(keys), 0, len(keys), last_key, finished, paused, time.monotonic() - t0)

    def _settings(self, conn: psycopg.Connection[Any], fk_triggers: bool = True) -> None:
        # One round trip. synchronous_commit is off for chunk transactions only: a chunk's rows and its
        # checkpoint commit together, so a crash that loses the last chunks loses their checkpoint too, and
        # the resumed backfill copies them again. The application's commits keep their own setting.
        # backend_flush_after: see BACKEND_FLUSH_AFTER.
        conn.execute(
            "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true), "
            "set_config('synchronous_commit', 'off', true), set_config('session_replication_role', %s, true), "
            "set_config('backend_flush_after', %s, true)",
            [
                f"{int(self.opts.lock_timeout * 1000)}ms",
                f"{int(CHUNK_STATEMENT_TIMEOUT * 1000)}ms",
                "origin" if fk_triggers else "replica",
                BACKEND_FLUSH_AFTER,
            ],
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


# -- the phase ----------------------------------------------------------------------------------------------


def options(ctx: Context) -> Options:
    opts = ctx.options.get("backfill")
    return opts if isinstance(opts, Options) else Options()


def _shared(ctx: Context, total: int, done: int) -> Shared:
    lock = threading.Lock()

    def on_chunk(fields: dict[str, Any]) -> None:
        with lock:
            ctx.reporter.progress(done + fields["rows_total"], total, **fields)

    def on_step(message: str) -> None:
        with lock:
            ctx.reporter.step(message)

    return Shared(on_chunk=on_chunk, on_step=on_step)


def apply(ctx: Context) -> None:
    """Run the backfill (or, with --join, lend workers to one another host coordinates)."""
    db, spec, opts = ctx.require_db(), ctx.spec, options(ctx)
    if opts.join:
        _join(ctx)
        return
    with state.transition(db, spec, "backfill", ("dual_write",)) as tr:

        def on_session(op: Callable[[psycopg.Connection[Any]], T]) -> T:
            # The coordinator's session holds the advisory lock and sits idle while the workers copy; a server
            # restart ends it (and frees the lock). Take a new session, the lock and the state check again, then
            # redo the step: each step below is a read or one transaction, so redoing it is safe.
            def step() -> T:
                if tr.conn.closed:
                    tr.reconnect()
                return op(tr.conn)

            return survive_connection_loss(
                step, lambda exc: ctx.reporter.step(f"backfill: {_lost_message(exc)}; reconnecting")
            )

        def start(conn: psycopg.Connection[Any]) -> tuple[int, int, int, int]:
            ensure_ranges(conn, spec, opts.workers)
            done, ranges_done, ranges = progress_totals(conn, spec)
            return done, ranges_done, ranges, max(legacy_estimate(conn, spec), done)

        done, ranges_done, ranges, total = on_session(start)
        if done:
            ctx.reporter.step(f"resuming: {done:,} rows already copied, {ranges_done}/{ranges} ranges done")
        t0 = time.monotonic()
        shared = _shared(ctx, total, done)
        while True:
            # Touch the coordinator's session while the workers copy, so that after a restart it takes the lock
            # back within a second or so, not only when the copy is over (meanwhile another operator could).
            run_workers(db, spec, opts, shared, keepalive=lambda: on_session(lambda c: c.execute("SELECT 1")))
            _, ranges_done, ranges = on_session(lambda c: progress_totals(c, spec))
            if ranges_done == ranges:
                break
            # Ranges still held by workers on other hosts: wait, and take over any whose worker died.
            time.sleep(1.0)
        on_session(
            lambda c: run_actions(
                c, expand.index_actions(spec, "backfill"), on_step=announce(ctx), lock_timeout=ctx.lock_timeout
            )
        )
        report = on_session(lambda c: verify(ctx, c))
        if not report.ok:
            raise GuardFailed(
                "backfill finished but " + "; ".join(report.failures),
                hint="run `migrator backfill` again; `migrator status` shows the quarantine",
            )
        seconds = time.monotonic() - t0
        # Should the connection drop during this very COMMIT, its outcome is unknown: the redo's reconnect then
        # finds the state already moved and says so (WrongState) rather than recording the transition twice.
        on_session(
            lambda _c: tr.finish(
                "backfilled",
                reason=ctx.options.get("reason"),
                details={"rows": shared.rows, "seconds": round(seconds, 3), "workers": opts.workers, **report.details},
            )
        )


def _join(ctx: Context) -> None:
    db, spec, opts = ctx.require_db(), ctx.spec, options(ctx)
    with db.connect(autocommit=True) as conn:
        st = state.read(conn, spec)
        state.require(st, ("dual_write",), "backfill --join")
        done, _, ranges = progress_totals(conn, spec)
        if not ranges:
            raise GuardFailed("no backfill is running to join", hint="start one with `migrator backfill`")
        total = max(legacy_estimate(conn, spec), done)
    run_workers(db, spec, opts, _shared(ctx, total, done))


def verify(ctx: Context, conn: psycopg.Connection[Any] | None = None) -> Report:
    """Every legacy row is in the base table or in quarantine."""
    if conn is None:
        with ctx.require_db().connect(autocommit=True) as c:
            return verify(ctx, c)
    spec = ctx.spec
    report = Report(name)
    unsynced = int(
        scalar(
            conn,
            render(
                "backfill_unsynced",
                legacy=names.source(spec),
                base=names.split(spec, spec.base.table),
                pk=ident(spec.pk),
                quarantine=names.state(spec, "quarantine"),
            ),
            {"migration": spec.migration_name},
        )
        or 0
    )
    quarantined = int(
        scalar(
            conn,
            sql.SQL("SELECT count(*) FROM {} WHERE migration = %s AND resolved_at IS NULL").format(
                names.state(spec, "quarantine")
            ),
            [spec.migration_name],
        )
        or 0
    )
    report.details.update({"unsynced": unsynced, "quarantined": quarantined})
    report.check(
        unsynced == 0,
        "every legacy row is copied or quarantined",
        f"{unsynced:,} legacy rows are neither copied nor quarantined",
    )
    # The chunks may have run with the foreign-key triggers off (they check the keys themselves): check the result
    # as VALIDATE CONSTRAINT would, so a mistake there shows here rather than as a constraint PostgreSQL trusts.
    base = names.split(spec, spec.base.table)
    for fk in spec.base.foreign_keys:
        orphans = int(
            scalar(
                conn,
                sql.SQL(
                    "SELECT count(*) FROM {} AS b WHERE b.{} IS NOT NULL "
                    "AND NOT EXISTS (SELECT FROM {} AS r WHERE r.{} = b.{})"
                ).format(
                    base,
                    ident(fk.column),
                    ident(fk.references_schema, fk.references),
                    ident(fk.references_column),
                    ident(fk.column),
                ),
            )
            or 0
        )
        report.check(
            orphans == 0,
            f"every {spec.base.table}.{fk.column} points at a {fk.references} row",
            f"{orphans:,} {spec.base.table} rows point at a missing {fk.references} row",
        )
    check_done(report, conn, expand.index_actions(spec, "backfill"))
    return report


def rollback(ctx: Context) -> None:
    """backfilled -> dual_write: the copied rows stay (the triggers keep them in step); only the state moves."""
    with state.transition(ctx.require_db(), ctx.spec, "rollback", ("backfilled",)) as tr:
        tr.finish("dual_write", reason=ctx.options.get("reason"))

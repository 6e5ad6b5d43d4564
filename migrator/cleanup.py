"""`migrator cleanup-drafts`: delete abandoned drafts (the seed's problem 3) in short batches, where the application
writes: the legacy table before write_new (the forward triggers delete the split rows), the base table from
write_new on (child and meta rows cascade; the reverse triggers, while they exist, delete the legacy row).

Each batch is one short transaction: it reads the state (share-locking its row, so a transition waits for the batch
and the next batch follows it), takes the oldest drafts past the cutoff after a keyset cursor (created, key) with
`FOR UPDATE SKIP LOCKED` (a draft the application is editing is left for the next run) and deletes them by key.
With the partial index `created WHERE draft` that is an index range scan; without one, batches walk primary-key
ranges instead of scanning the table each time, and the run says which index to build. A killed run loses nothing
but its open batch: the next run starts from the oldest draft left.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from migrator import lifecycle, state
from migrator.db import advisory_lock, scalar, table_exists
from migrator.engine.actions import run_actions
from migrator.engine.chunking import ChunkSizer
from migrator.engine.context import Context
from migrator.engine.health import Health, Limits
from migrator.engine.pace import Pacer
from migrator.engine.session import MULTI_TABLE_LOCK_TIMEOUT, set_local
from migrator.errors import BadInputError, LockHeld, OperationalError, TableDoesNotExist
from migrator.spec import Spec
from migrator.sqlgen import names
from migrator.sqlgen.compose import as_text, ident, raw, render

COMMAND = "cleanup-drafts"
BATCH_TIME = 0.1  # seconds: after a lock wait the batch size adapts to this, as the backfill's chunks do
MAX_LOCK_RETRIES = 20
# A batch stays a bounded index range scan whatever the statistics say: near the end of the range the planner
# would pick a bitmap scan and sort the whole rest of it, and under stale statistics a sequential scan.
BATCH_SETTINGS = {"lock_timeout": MULTI_TABLE_LOCK_TIMEOUT, "enable_seqscan": False, "enable_bitmapscan": False}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TIME_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")


def parse_age(text: str) -> float:
    """'24h', '90m', '7d', '2w', '3600s' -> seconds (exit 2 otherwise)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text.lower())
    if not match or float(match.group(1)) <= 0:
        raise BadInputError(f"--older-than {text!r} is not an age", hint="write e.g. 24h, 90m, 7d or 2w")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class Options:
    older_than: float  # seconds
    dry_run: bool = False
    batch_size: int = 500
    full_speed: bool = False
    health: Limits = field(default_factory=Limits)
    draft_column: str | None = None
    created_column: str | None = None
    reason: str | None = None


@dataclass
class Result:
    state: str = lifecycle.START
    side: str = "legacy"
    table: str = ""
    draft_column: str = ""
    created_column: str = ""
    index: str | None = None
    cutoff: datetime | None = None
    older_than_seconds: float = 0.0
    dry_run: bool = False
    deleted: int = 0
    would_delete: int = 0
    batches: int = 0
    lock_retries: int = 0
    health_pauses: int = 0
    seconds: float = 0.0


def default_columns(spec: Spec) -> tuple[str, str]:
    """(draft flag, creation time): the spec's partial base index `time WHERE flag = true`, else the seed's."""
    for ix in spec.indexes:
        if ix.table == spec.base.table and ix.where and len(ix.columns) == 1 and list(ix.where.values()) == [True]:
            return next(iter(ix.where)), ix.columns[0]
    return "is_draft", "created_at"


@dataclass(frozen=True)
class Target:
    """Where a batch deletes: the table, its key, the two columns, and the partial index when there is one."""

    side: str
    name: str
    table: sql.Identifier
    pk: str
    pk_type: str
    flag: str
    created: str
    index: str | None

    def statement(self, first: bool, dry_run: bool) -> sql.Composed:
        """One batch, returning (keys examined, drafts deleted or counted, cursor: last created, last key).
        Parameters: cutoff, n (keys to examine), c and k (the cursor)."""
        pk, created, k = ident(self.pk), ident(self.created), sql.SQL("%(k)s::{}").format(raw(self.pk_type))
        if first:
            after: sql.Composable = raw("TRUE")
        elif self.index is not None:
            after = sql.SQL("{c} >= %(c)s AND ({c}, {pk}) > (%(c)s, {k})").format(c=created, pk=pk, k=k)
        else:
            after = sql.SQL("{pk} > {k}").format(pk=pk, k=k)
        slots = {"table": self.table, "pk": pk, "flag": ident(self.flag), "created": created, "after": after}
        gone = raw("SELECT 1 FROM p") if dry_run else render("cleanup_delete", **slots)
        lock = raw("" if dry_run else " FOR UPDATE SKIP LOCKED")
        return render(
            "cleanup_batch_pk" if self.index is None else "cleanup_batch_index", **slots, lock=lock, gone=gone
        )


def resolve(conn: psycopg.Connection[Any], spec: Spec, current: str, opts: Options) -> Target:
    """The table this state's writes go to, its draft columns (exit 2 naming the fix when absent) and index."""
    split = lifecycle.writes_split(current)
    name = spec.base.table if split else spec.source.table
    table = names.split(spec, name) if split else names.source(spec)
    if not scalar(conn, "SELECT to_regclass(%s) IS NOT NULL", [as_text(table)]):
        raise TableDoesNotExist(f"{as_text(table)} does not exist", hint="check --dsn and --spec")
    flag_default, created_default = default_columns(spec)
    flag, created = opts.draft_column or flag_default, opts.created_column or created_default
    params = {"table": as_text(table), "created": created, "flag": flag}
    types = dict(conn.execute(render("cleanup_column_types"), params).fetchall())
    for col, want, ok in ((flag, "boolean", ("boolean",)), (created, "timestamp", _TIME_TYPES)):
        if types.get(col) not in ok:
            what = f"is {types[col]}, not {want}" if col in types else "does not exist"
            raise BadInputError(
                f"{as_text(table)}.{col} {what}: it cannot say what an old draft is",
                hint="name the columns with --draft-column and --created-column",
            )
    index = scalar(conn, render("cleanup_draft_index"), params)
    pk_type = spec.source.primary_key_type
    return Target("split" if split else "legacy", name, table, spec.pk, pk_type, flag, created, index)


def run(ctx: Context, opts: Options) -> Result:
    """Delete (with dry_run: count) the drafts older than opts.older_than; one cleaner per migration at a time.
    Each finished run is in the audit log, whatever it found."""
    db, spec = ctx.require_db(), ctx.spec
    result = Result(older_than_seconds=opts.older_than, dry_run=opts.dry_run)
    t0 = time.monotonic()
    try:
        with db.connect(autocommit=True) as conn, advisory_lock(conn, *state.lock_parts(spec), COMMAND):
            if not table_exists(conn, spec.state_schema, "transitions"):
                # The audit log records every run, even one before `expand` has created it.
                run_actions(conn, [state.schema_action(spec)], lock_timeout=ctx.lock_timeout)
            result.cutoff = scalar(conn, "SELECT now() - make_interval(secs => %s)", [opts.older_than])
            health = ctx.health(opts.health)
            sampler = None if opts.full_speed else lambda: db.raw_connect(autocommit=True)
            with Pacer(sampler, ctx.reporter.step) as pacer:
                _batches(conn, ctx, opts, result, pacer, health)
            result.health_pauses = health.pauses
            result.seconds = round(time.monotonic() - t0, 3)
            _audit(conn, spec, result, opts.reason)
    except LockHeld as exc:
        raise LockHeld(
            exc.message.replace("another operator is running a migrator command", f"another `{COMMAND}` is running"),
            hint="one cleaner at a time: wait for it to finish (killed, it leaves nothing half done)",
        ) from None
    return result


def _batches(
    conn: psycopg.Connection[Any], ctx: Context, opts: Options, result: Result, pacer: Pacer, health: Health
) -> None:
    sizer = ChunkSizer(BATCH_TIME, fixed=opts.batch_size)
    target: Target | None = None
    cursor: tuple[Any, Any] = (None, None)
    retries = 0
    while True:
        health.wait_until_green(conn, threading.Event())
        b0 = time.monotonic()
        try:
            with pacer.working(), conn.transaction():
                set_local(conn, **BATCH_SETTINGS)
                locked = render("cleanup_state", state=names.state(ctx.spec, "state"))
                current = str(scalar(conn, locked, [ctx.spec.migration_name]) or lifecycle.START)
                if target is None or result.state != current:
                    fresh = resolve(conn, ctx.spec, current, opts)
                    if fresh != target:
                        cursor = (None, None)
                        if fresh.index is None:
                            ctx.reporter.step(_no_index(fresh))
                    target, result.state, result.side, result.table = fresh, current, fresh.side, as_text(fresh.table)
                    result.index, result.draft_column, result.created_column = fresh.index, fresh.flag, fresh.created
                walk = sizer.next()  # drafts through the index, keys examined without it: never more deletes
                params = {"cutoff": result.cutoff, "n": walk, "c": cursor[0], "k": cursor[1]}
                row = conn.execute(target.statement(cursor[1] is None, opts.dry_run), params).fetchone()
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
            retries += 1
            result.lock_retries += 1
            if retries > MAX_LOCK_RETRIES:
                raise OperationalError(
                    f"{COMMAND}: {retries} batches in a row waited too long for locks the application holds",
                    hint="run it again later; every batch before this one is committed",
                ) from None
            sizer.shrink()
            time.sleep(min(0.05 * retries, 1.0))  # a transition's last step may hold the state row a little longer
            continue
        retries = 0
        assert row is not None
        examined, hit = int(row[0]), int(row[1])
        result.batches += 1
        result.would_delete += hit if opts.dry_run else 0
        result.deleted += 0 if opts.dry_run else hit
        elapsed = time.monotonic() - b0
        sizer.observe(max(examined, 1), elapsed)
        pacer.rest(elapsed)
        done = result.would_delete + result.deleted
        ctx.reporter.progress(done, None, phase=COMMAND, batch_rows=hit, chunk_ms=round(elapsed * 1000, 1))
        if examined < walk:
            return
        cursor = (row[2], row[3])


def _no_index(t: Target) -> str:
    create = sql.SQL("CREATE INDEX CONCURRENTLY {} ON {} ({}) WHERE {}").format(
        ident(names.object_name(t.name, t.created, suffix="drafts")), t.table, ident(t.created), ident(t.flag)
    )
    return (
        f"{as_text(t.table)} has no index on {t.created} WHERE {t.flag}: batches walk the primary key instead of an "
        f"index range of old drafts; `{as_text(create)}` makes each an index range scan"
    )


def _audit(conn: psycopg.Connection[Any], spec: Spec, result: Result, reason: str | None) -> None:
    ms = int(result.seconds * 1000)
    state.audit(conn, spec, result.state, COMMAND, asdict(result), reason=reason, duration_ms=ms)

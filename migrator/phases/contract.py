"""contract (write_new -> contracted): the split tables become the only truth.

Guards: legacy equals split, no open quarantine, and no application has written the legacy table directly
for the quiet period. Then: foreign keys that point at the legacy table are re-pointed at the base table
(NOT VALID, then VALIDATE, then the old one dropped), and in one short transaction the sync triggers go and
the legacy table is renamed to an archive (never dropped) — optionally replaced by a view of the same name
and shape over the split tables, with INSTEAD OF triggers, so code that still uses the old name keeps working.

Rollback (contracted -> write_new) renames the archive back, re-installs both directions of sync in the same
transaction, then refills the legacy rows from the split tables with a reverse backfill that locks each legacy
row before reading the split side, so a concurrent write is never overwritten by an older copy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from migrator import guards, state
from migrator.sqlgen import names, triggers, views
from migrator.db import scalar
from migrator.errors import GuardFailed
from migrator.phases.backfill import BACKEND_FLUSH_AFTER, ChunkSizer
from migrator.phases.base import (
    MULTI_TABLE_LOCK_TIMEOUT,
    Action,
    Context,
    RateLimiter,
    Report,
    after_cursor,
    announce,
    object_name,
    run_actions,
)
from migrator.spec import Spec
from migrator.sqlgen.compose import as_text, ident, join, literal, load, plpgsql_function, raw, render

name = "contract"

DEFAULT_QUIET_PERIOD = 60.0
# Target seconds per reverse-backfill chunk (the legacy rows of a chunk stay locked that long).
REVERSE_CHUNK_TIME = 0.02
FK_ACTIONS = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


def archive_name(spec: Spec) -> str:
    return object_name(spec.source.table, suffix="archived")


def archive(spec: Spec) -> sql.Identifier:
    return ident(spec.source.schema_, archive_name(spec))


@dataclass(frozen=True)
class ReferenceFK:
    table: sql.Identifier
    table_text: str
    column: str
    old_name: str
    new_name: str
    on_delete: str


def references(spec: Spec, conn: psycopg.Connection[Any] | None, target: str) -> list[ReferenceFK]:
    """The spec's referencing FKs as they are now (pointing at `target`: 'legacy' or 'base')."""
    out = []
    for ref in spec.references:
        table = ident(ref.schema_, ref.table)
        legacy_name = object_name(ref.table, ref.column, suffix="fkey")
        split_name = object_name(ref.table, ref.column, suffix="split_fkey")
        old, on_delete = (legacy_name, "NO ACTION") if target == "legacy" else (split_name, "NO ACTION")
        if conn is not None:
            target_rel = names.source(spec) if target == "legacy" else names.split(spec, spec.base.table)
            row = conn.execute(
                load("find_reference_fks"),
                {"table": as_text(table), "target": as_text(target_rel), "column": ref.column},
            ).fetchone()
            if row is not None:
                old, on_delete = row[0], FK_ACTIONS.get(row[1], "NO ACTION")
        new = split_name if target == "legacy" else legacy_name
        out.append(ReferenceFK(table, f"{ref.schema_}.{ref.table}", ref.column, old, new, on_delete))
    return out


def _repoint(spec: Spec, fk: ReferenceFK, to: sql.Identifier, to_column: str) -> list[Action]:
    exists = sql.SQL(
        "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass({}) AND conname = {} "
        "AND convalidated >= {})"
    )
    table_lit = literal(as_text(fk.table))
    return [
        Action(
            f"re-point {fk.table_text}.{fk.column}: add {fk.new_name} NOT VALID",
            sql.SQL(
                "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}) ON DELETE {} NOT VALID"
            ).format(fk.table, ident(fk.new_name), ident(fk.column), to, ident(to_column), raw(fk.on_delete)),
            done_check=exists.format(table_lit, literal(fk.new_name), literal(False)),
        ),
        Action(
            f"validate {fk.new_name}",
            sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(fk.table, ident(fk.new_name)),
            done_check=exists.format(table_lit, literal(fk.new_name), literal(True)),
            statement_timeout=0,
        ),
        Action(
            f"drop the old foreign key {fk.old_name}",
            # Deliberate: its replacement was validated in the previous step.
            sql.SQL("-- squawk-ignore ban-drop-constraint\nALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                fk.table, ident(fk.old_name)
            ),
        ),
    ]


def _compat_view(spec: Spec) -> list[sql.Composable]:
    """The legacy name and shape as a view over the split tables, writable through INSTEAD OF triggers."""
    seq = names.regclass_literal(spec.source.schema_, names.sequence_name(spec))
    fn = names.function_name(spec, "compat_view")
    body = render(
        "compat_view_trigger",
        base=names.split(spec, spec.base.table),
        pk=ident(spec.pk),
        next_key=sql.SQL("nextval({}::regclass)").format(seq),
        sync=triggers.forward_sync_body(spec, row="NEW", op="TG_OP"),
    )
    return [
        sql.SQL("CREATE VIEW {} AS {}").format(names.source(spec), views.split_as_legacy(spec)),
        plpgsql_function(fn, body),
        render(
            "create_trigger",
            trigger=names.trigger_name(spec, "compat_view"),
            events=raw("INSTEAD OF INSERT OR UPDATE OR DELETE"),
            table=names.source(spec),
            level=raw("ROW"),
            function=fn,
        ),
    ]


def plan(ctx: Context, conn: psycopg.Connection[Any] | None = None) -> list[Action]:
    spec = ctx.spec
    acts: list[Action] = []
    for fk in references(spec, conn, "legacy"):
        acts += _repoint(spec, fk, names.split(spec, spec.base.table), spec.pk)
    drops = [*triggers.drop_forward_actions(spec), *triggers.drop_reverse_actions(spec)]
    swap: list[sql.Composable] = [a.statement for a in drops]
    # The rename is the point of contract (guarded above), so the linter is told it is deliberate.
    swap.append(
        sql.SQL("-- squawk-ignore renaming-table\nALTER TABLE {} RENAME TO {}").format(
            names.source(spec), ident(archive_name(spec))
        )
    )
    if ctx.options.get("compat_view"):
        swap += _compat_view(spec)
        # Defaults in the same transaction: an insert through the view must never meet a view without them.
        swap += _view_defaults(conn, spec) if conn is not None else []
    acts.append(
        Action(
            f"in one transaction: stop both syncs, archive {spec.source.table} as {archive_name(spec)}"
            + (
                ", create the compatibility view (with the table's column defaults)"
                if ctx.options.get("compat_view")
                else ""
            ),
            join(swap, ";\n"),
            lock_timeout=MULTI_TABLE_LOCK_TIMEOUT,
        )
    )
    return acts


def apply(ctx: Context) -> None:
    spec = ctx.spec
    quiet = float(ctx.options.get("quiet_period", DEFAULT_QUIET_PERIOD))
    with state.transition(ctx.require_db(), spec, "contract", ("write_new",)) as tr:
        guards.require_in_sync(ctx.require_db(), spec, "contract")
        open_q = guards.open_quarantine(tr.conn, spec)
        if open_q:
            raise GuardFailed(
                f"`contract` refused: {open_q} legacy rows are in quarantine and not in the split tables",
                hint="fix them in the application, or accept them with `migrator validate "
                "--accept-quarantine` (they stay in the archive only)",
            )
        _require_references_covered(spec, tr.conn)
        _wait_for_quiet(ctx, tr.conn, quiet, float(ctx.options.get("wait", 0)))
        actions = plan(ctx, tr.conn)
        run_actions(tr.conn, actions, on_step=announce(ctx), lock_timeout=ctx.lock_timeout)
        tr.finish(
            "contracted",
            reason=ctx.options.get("reason"),
            details={"archive": archive_name(spec), "compat_view": bool(ctx.options.get("compat_view"))},
        )


def _require_references_covered(spec: Spec, conn: psycopg.Connection[Any]) -> None:
    """Every row of a referencing table must point at a base row, or re-pointing its FK fails half-way: a row that
    references an accepted-quarantine legacy row (it has no split row) would stop the VALIDATE with a raw 23503."""
    base = names.split(spec, spec.base.table)
    for fk in references(spec, conn, "legacy"):
        rows = conn.execute(
            sql.SQL(
                "SELECT r.{col}::text FROM {table} AS r WHERE r.{col} IS NOT NULL "
                "AND NOT EXISTS (SELECT FROM {base} AS b WHERE b.{pk} = r.{col}) LIMIT 6"
            ).format(col=ident(fk.column), table=fk.table, base=base, pk=ident(spec.pk))
        ).fetchall()
        if rows:
            keys = ", ".join(r[0] for r in rows[:5]) + (", …" if len(rows) > 5 else "")
            raise GuardFailed(
                f"`contract` refused: {fk.table_text}.{fk.column} references {spec.source.table} rows that have no "
                f"{spec.base.table} row (keys {keys}) — the FK cannot be re-pointed",
                hint=f"fix those {spec.source.table} rows (they are in quarantine) or delete the {fk.table_text} "
                "rows that reference them, then run `migrator contract` again",
            )


def _wait_for_quiet(ctx: Context, conn: psycopg.Connection[Any], quiet: float, wait: float) -> None:
    """Check the quiet period; with --wait, keep checking (once a second) for up to `wait` seconds."""
    deadline = time.monotonic() + wait
    announced = False
    while True:
        try:
            # Not inside a transaction: the moved mark must be committed even when the guard refuses.
            guards.require_legacy_quiet(conn, ctx.spec, quiet)
            return
        except guards.LegacyNotQuiet as exc:
            if time.monotonic() >= deadline:
                raise
            if not announced:
                ctx.reporter.step(f"waiting for the legacy table to stay quiet for {quiet:.0f} s ({exc.message})")
                announced = True
            time.sleep(1.0)


def _view_defaults(conn: psycopg.Connection[Any], spec: Spec) -> list[sql.Composable]:
    """ALTER VIEW … SET DEFAULT for every legacy column with a default (the key: its sequence)."""
    rows = conn.execute(
        load("view_defaults"), {"table": as_text(names.source(spec)), "columns": spec.legacy_columns()}
    ).fetchall()
    return [
        # The expression is the catalog's own default text for that column.
        sql.SQL("ALTER VIEW {} ALTER COLUMN {} SET DEFAULT {}").format(names.source(spec), ident(column), raw(expr))
        for column, expr in rows
        if expr
    ]


def verify(ctx: Context) -> Report:
    spec = ctx.spec
    report = Report(name)
    with ctx.require_db().connect(autocommit=True) as conn:
        archived = scalar(conn, "SELECT to_regclass(%s) IS NOT NULL", [as_text(archive(spec))])
        report.check(bool(archived), f"legacy table archived as {archive_name(spec)}", "archive table missing")
        for fk in references(spec, conn, "base"):
            report.check(
                fk.old_name.endswith("split_fkey"),
                f"{fk.table_text}.{fk.column} references the base table",
                f"{fk.table_text}.{fk.column} still references the legacy table",
            )
    return report


# -- rollback: contracted -> write_new ----------------------------------------------------------------------


def _restore_statements(spec: Spec) -> list[sql.Composable]:
    """Drop the view, rename the archive back, re-create both syncs: one transaction, so no write is missed."""
    stmts: list[sql.Composable] = [
        sql.SQL("DROP VIEW IF EXISTS {}").format(names.source(spec)),
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(archive(spec), ident(spec.source.table)),
    ]
    stmts += [a.statement for a in triggers.forward_actions(spec)]
    stmts += [a.statement for a in triggers.reverse_actions(spec)]
    return stmts


def rollback_plan(ctx: Context) -> list[Action]:
    spec = ctx.spec
    return [
        Action(
            f"in one transaction: drop the compatibility view, rename {archive_name(spec)} back, "
            "re-install forward and reverse sync",
            join(_restore_statements(spec), ";\n"),
            lock_timeout=MULTI_TABLE_LOCK_TIMEOUT,
        )
    ]


def _repoint_back(spec: Spec, conn: psycopg.Connection[Any]) -> list[Action]:
    acts: list[Action] = []
    for fk in references(spec, conn, "base"):
        acts += _repoint(spec, fk, names.source(spec), spec.pk)
    return acts


@dataclass
class ReverseResult:
    updated: int = 0
    inserted: int = 0
    deleted: int = 0
    seconds: float = 0.0


def reverse_backfill(ctx: Context, conn: psycopg.Connection[Any]) -> ReverseResult:
    """Make every legacy row equal the split rows, chunk by chunk (the split side is the truth now)."""
    result = ReverseResult()
    t0 = time.monotonic()
    # Short chunks: pass 2 holds its legacy rows' locks for a chunk's length, and the application waits that long.
    sizer = ChunkSizer(REVERSE_CHUNK_TIME)
    limiter = RateLimiter(ctx.options.get("max_rows_per_second"))
    _reverse_insert_pass(ctx, conn, sizer, limiter, result)
    _reverse_refresh_pass(ctx, conn, sizer, limiter, result)
    result.seconds = time.monotonic() - t0
    return result


def insert_pass_statements(spec: Spec) -> dict[bool, tuple[sql.Composed, sql.Composed]]:
    """The reverse backfill's insert pass, (bound, insert) for a first chunk (True) and for the ones after a
    cursor (False). Parameters: lo (the cursor), hi (the chunk's last base key, from bound), limit."""
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


def _reverse_insert_pass(
    ctx: Context, conn: psycopg.Connection[Any], sizer: ChunkSizer, limiter: RateLimiter, result: ReverseResult
) -> None:
    stmts = insert_pass_statements(ctx.spec)
    cursor: str | None = None
    while True:
        bound, insert = stmts[cursor is None]
        size = sizer.next()
        c0 = time.monotonic()
        inserted = 0
        with conn.transaction():
            _chunk_settings(conn)
            row = conn.execute(bound, {"lo": cursor, "limit": size}).fetchone()
            assert row is not None
            n, hi = int(row[0]), row[1]
            if n:
                out = conn.execute(insert, {"lo": cursor, "hi": hi, "limit": size}).fetchone()
                assert out is not None
                inserted = int(out[2])
        sizer.observe(n, time.monotonic() - c0)
        limiter.done(n)
        result.inserted += inserted
        ctx.reporter.progress(result.inserted, None, phase="reverse backfill: insert")
        if n < size:
            break
        cursor = hi


def _reverse_refresh_pass(
    ctx: Context, conn: psycopg.Connection[Any], sizer: ChunkSizer, limiter: RateLimiter, result: ReverseResult
) -> None:
    spec = ctx.spec
    pk, pk_type = ident(spec.pk), raw(spec.source.primary_key_type)
    cols = spec.legacy_columns()
    split = views.split_as_legacy(spec)
    # Pass 2, over legacy keys: find the rows that differ (read-only), then lock those legacy rows first (a
    # concurrent reverse trigger then waits for us and applies its newer change on top) and only then read the
    # split side, in a later statement and snapshot; legacy rows whose key left the split side (deleted after
    # contract) are removed. Rows that did not change while contracted are neither locked nor written.
    legacy_cols, split_cols = _compared_columns(spec)
    lock = render("reverse_lock", legacy=names.source(spec), pk=pk, pk_type=pk_type)
    update = render(
        "reverse_update",
        legacy=names.source(spec),
        cols=join([ident(c) for c in cols]),
        split_cols=split_cols,
        split=split,
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
    stmts = refresh_pass_statements(spec)
    cursor: str | None = None
    while True:
        bound, candidates = stmts[cursor is None]
        size = sizer.next()
        c0 = time.monotonic()
        with conn.transaction():
            _chunk_settings(conn)
            row = conn.execute(bound, {"lo": cursor, "limit": size}).fetchone()
            assert row is not None
            n, hi = int(row[0]), row[1]
            keys: list[str] = []
            if n:
                keys = [r[0] for r in conn.execute(candidates, {"lo": cursor, "hi": hi}).fetchall()]
            if keys:
                keys = [r[0] for r in conn.execute(lock, {"keys": keys}).fetchall()]
                result.updated += conn.execute(update, {"keys": keys}).rowcount
                result.deleted += conn.execute(delete, {"keys": keys, "migration": spec.migration_name}).rowcount
        sizer.observe(n, time.monotonic() - c0)
        limiter.done(n)
        ctx.reporter.progress(result.updated + result.deleted, None, phase="reverse backfill: update")
        if n < size:
            break
        cursor = hi


def refresh_pass_statements(spec: Spec) -> dict[bool, tuple[sql.Composed, sql.Composed]]:
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


def _compared_columns(spec: Spec) -> tuple[sql.Composed, sql.Composed]:
    """The legacy columns as l.<col>, … and as s.<col>, … (legacy table vs the split side as legacy rows)."""
    cols = spec.legacy_columns()
    return join([sql.SQL("l.{}").format(ident(c)) for c in cols]), join(
        [sql.SQL("s.{}").format(ident(c)) for c in cols]
    )


def _chunk_settings(conn: psycopg.Connection[Any]) -> None:
    # origin = split: these legacy writes come from the split side, the forward triggers must not echo them.
    # A chunk joins a few hundred base rows to their children: index probes per row, whatever the statistics say
    # (the split tables are often never analyzed here). A merge or hash join reads each child table from its start
    # (or whole) once per chunk, and so does a materialized scan of a table the planner believes tiny (the meta
    # table, never analyzed: 135 ms for a 300-row chunk of 20,000 rows, 3 ms probing), so the pass would slow
    # down with every chunk.
    # Its legacy writes are flushed as they go, like the backfill's (backfill.BACKEND_FLUSH_AFTER).
    conn.execute(
        "SELECT set_config('lock_timeout', '5s', true), set_config('migrator.origin', 'split', true), "
        "set_config('enable_mergejoin', 'off', true), set_config('enable_hashjoin', 'off', true), "
        "set_config('enable_material', 'off', true), set_config('backend_flush_after', %s, true)",
        [BACKEND_FLUSH_AFTER],
    )


def rollback(ctx: Context) -> None:
    spec = ctx.spec
    with state.transition(ctx.require_db(), spec, "rollback", ("contracted",)) as tr:
        run_actions(tr.conn, rollback_plan(ctx), on_step=announce(ctx), lock_timeout=ctx.lock_timeout)
        result = reverse_backfill(ctx, tr.conn)
        ctx.reporter.step(
            f"reverse backfill: {result.updated:,} legacy rows refreshed, {result.inserted:,} added, "
            f"{result.deleted:,} removed in {result.seconds:.1f} s"
        )
        run_actions(tr.conn, _repoint_back(spec, tr.conn), on_step=announce(ctx), lock_timeout=ctx.lock_timeout)
        guards.require_in_sync(ctx.require_db(), spec, "rollback")
        with tr.conn.transaction():
            guards.mark_legacy_writes(tr.conn, spec)
        tr.finish(
            "write_new",
            reason=ctx.options.get("reason"),
            details={"updated": result.updated, "inserted": result.inserted, "deleted": result.deleted},
        )

"""The forward copy's statements: one chunk (fast and careful forms), the quarantine of the rows it rejected, the
re-sync of fixed rows, the key-range plan, its claim and checkpoint, and the checks verify runs.

Parameters are psycopg's %(name)s: lo (the range's cursor), hi (the range's upper key), limit (the chunk size),
keys (a key array), migration, worker, lease, range_no, cursor, rows, finished.
"""

from __future__ import annotations

from psycopg import sql

from migrator.engine.chunking import after_cursor
from migrator.spec import ForeignKey, Spec, written
from migrator.sqlgen import names, rules
from migrator.sqlgen.compose import ident, join, literal, raw, render


def _src(col: str) -> sql.Composed:
    return rules.column("s", col)


def chunk_sql(spec: Spec, has_cursor: bool, careful: bool = False) -> sql.Composed:
    """One chunk: read legacy rows FOR KEY SHARE, insert the base rows that are not there yet, then the children
    and meta of the rows whose base insert won.

    The fast form skips the base rows already present (a probe of the primary key) and inserts with plain
    INSERTs: a speculative insertion (ON CONFLICT) costs about a quarter of the copy. A trigger that writes one of
    the chunk's rows after that probe makes the plain INSERT fail with a unique violation, never overwrite; the
    worker then runs the chunk again in the careful form, ON CONFLICT DO NOTHING everywhere (rule 1 either way)."""
    pk, pk_type, link = spec.pk, raw(spec.source.primary_key_type), spec.base.link_column
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
                cols=join([ident(c) for c in [link, *written(v.columns)]]),
                vals=join([_src(pk), *(rules.filled(_src(c), cs) for c, cs in written(v.columns).items())]),
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
        src_cols=join([rules.column("l", c) for c in spec.legacy_columns()]),
        invalid=rules.invalid(spec, "l"),
        legacy=names.source(spec),
        lower=after_cursor(spec, "l", has_cursor),
        pk=ident(pk),
        pk_type=pk_type,
        base=base,
        base_cols=join([ident(c) for c in [pk, *written(spec.base.columns)]]),
        new_only=new_only,
        on_conflict=on_conflict,
        fk_locks=sql.Composed([raw(",\n"), join(fk_locks, ",\n")]) if fk_locks else raw(""),
        fk_found=join(fk_found, " AND ") if fk_found else raw("TRUE"),
        base_vals=join([_src(pk), *(rules.filled(_src(c), cs) for c, cs in written(spec.base.columns).items())]),
        children=sql.Composed([raw(",\n"), join(children, ",\n")]) if children else raw(""),
    )


def quarantine_sql(spec: Spec) -> sql.Composed:
    """Re-read a chunk's rejected rows under a row lock: quarantine those still rejected (worded as PostgreSQL
    words the rejection), return the keys of those fixed meanwhile."""
    return render(
        "backfill_quarantine",
        legacy=names.source(spec),
        pk=ident(spec.pk),
        pk_type=raw(spec.source.primary_key_type),
        base=names.split(spec, spec.base.table),
        quarantine=names.state(spec, "quarantine"),
        reason_state=rules.rejection_reason(spec, "sqlstate", "l"),
        reason_message=rules.rejection_reason(spec, "message", "l"),
    )


def sync_keys_sql(spec: Spec) -> sql.Composed:
    """Pass the rows with the given keys through the trigger's own sync function (which quarantines a rejection)."""
    return render(
        "backfill_sync_keys",
        legacy=names.source(spec),
        pk=ident(spec.pk),
        pk_type=raw(spec.source.primary_key_type),
        sync_function=names.function_name(spec, "sync"),
    )


def lock_range_sql(spec: Spec, has_cursor: bool) -> sql.Composed:
    """A chunk's keys, locked, for the row-by-row path."""
    pk_type = raw(spec.source.primary_key_type)
    lower = after_cursor(spec, "l", has_cursor)
    return render("backfill_lock_range", legacy=names.source(spec), pk=ident(spec.pk), pk_type=pk_type, lower=lower)


def ranges(spec: Spec) -> sql.Identifier:
    return names.state(spec, "backfill_ranges")


def boundaries_sql(spec: Spec) -> sql.Composed:
    return render("backfill_boundaries", legacy=names.source(spec), pk=ident(spec.pk))


def checkpoint_sql(spec: Spec) -> sql.Composed:
    return render("backfill_checkpoint", ranges=ranges(spec), state=names.state(spec, "state"))


def claim_sql(spec: Spec) -> sql.Composed:
    return render("backfill_claim", ranges=ranges(spec))


def unsynced_sql(spec: Spec) -> sql.Composed:
    """The legacy rows neither in the base table nor in open quarantine."""
    return render(
        "backfill_unsynced",
        legacy=names.source(spec),
        base=names.split(spec, spec.base.table),
        pk=ident(spec.pk),
        quarantine=names.state(spec, "quarantine"),
    )


def open_quarantine_sql(spec: Spec) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {} WHERE migration = %(migration)s AND resolved_at IS NULL").format(
        names.state(spec, "quarantine")
    )


def orphans_sql(spec: Spec, fk: ForeignKey) -> sql.Composed:
    """Base rows whose foreign key points at no row, as VALIDATE CONSTRAINT would find them."""
    return sql.SQL(
        "SELECT count(*) FROM {} AS b WHERE b.{} IS NOT NULL AND NOT EXISTS (SELECT FROM {} AS r WHERE r.{} = b.{})"
    ).format(
        names.split(spec, spec.base.table),
        ident(fk.column),
        ident(fk.references_schema, fk.references),
        ident(fk.references_column),
        ident(fk.column),
    )

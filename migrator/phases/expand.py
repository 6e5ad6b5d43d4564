"""expand (legacy -> dual_write): create the split tables, their constraints and indexes.

Each DDL step runs in its own short transaction under SET LOCAL lock_timeout and is retried, so a busy legacy
table never queues the application behind our lock. Foreign keys are added NOT VALID and validated in a later
step (VALIDATE takes only a SHARE UPDATE EXCLUSIVE lock); indexes are built CONCURRENTLY. Every step knows how
to tell it is already done, so re-running expand after a crash part-way finishes the job.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from migrator import state
from migrator.sqlgen import names, triggers
from migrator.db import scalar
from migrator.errors import GuardFailed, OperationalError, TableDoesNotExist
from migrator.phases.base import Action, Context, Report, announce, check_done, object_name, run_actions
from migrator.spec import ColumnSpec, Spec, split_table_columns
from migrator.sqlgen.compose import as_text, ident, join, literal, load, raw, render

name = "expand"


def _column_defs(columns: dict[str, ColumnSpec]) -> sql.Composed:
    defs: list[sql.Composable] = []
    for col, cs in columns.items():
        null = " NOT NULL" if cs.required else ""
        defs.append(sql.Composed([ident(col), raw(f" {cs.type}{null}")]))
    return join(defs, ",\n    ")


def _constraint_done(spec: Spec, table: str, cname: str, *, validated: bool) -> sql.Composed:
    return render(
        "check_constraint_exists",
        table=names.split_regclass(spec, table),
        name=literal(cname),
        validated=literal(validated),
    )


def _fk_actions(
    spec: Spec, table: str, column: str, ref: sql.Identifier, ref_column: str, on_delete: str
) -> list[Action]:
    cname = object_name(table, column, suffix="fkey")
    tbl = names.split(spec, table)
    add = render(
        "expand_add_fk",
        table=tbl,
        name=ident(cname),
        column=ident(column),
        ref_table=ref,
        ref_column=ident(ref_column),
        on_delete=raw(on_delete.upper()),
    )
    return [
        Action(
            f"add foreign key {cname} NOT VALID (no scan, brief lock)",
            add,
            done_check=_constraint_done(spec, table, cname, validated=False),
        ),
        # We validate in a separate transaction: VALIDATE scans under SHARE UPDATE EXCLUSIVE, which lets writes on.
        Action(
            f"validate foreign key {cname}",
            render("expand_validate_fk", table=tbl, name=ident(cname)),
            done_check=_constraint_done(spec, table, cname, validated=True),
            statement_timeout=0,
        ),
    ]


def index_name(spec: Spec, i: int) -> str:
    ix = spec.indexes[i]
    return ix.name or object_name(ix.table, *ix.columns, suffix="idx")


def index_statement(spec: Spec, i: int, *, concurrently: bool = True) -> sql.Composed:
    """CREATE INDEX for indexes[i]; without CONCURRENTLY only for benchmarks of an offline copy."""
    ix = spec.indexes[i]
    where: sql.Composable = raw("")
    if ix.where:
        preds: list[sql.Composable] = []
        for col, value in ix.where.items():
            if value is None:
                preds.append(sql.Composed([ident(col), raw(" IS NULL")]))
            else:
                preds.append(sql.Composed([ident(col), raw(" = "), literal(value)]))
        where = sql.Composed([raw(" WHERE "), join(preds, " AND ")])
    return render(
        "expand_create_index",
        unique=raw("UNIQUE " if ix.unique else ""),
        concurrently=raw("CONCURRENTLY " if concurrently else ""),
        name=ident(index_name(spec, i)),
        table=names.split(spec, ix.table),
        method=raw(ix.method),
        columns=join([ident(c) for c in ix.columns]),
        where=where,
    )


def _index_action(spec: Spec, i: int) -> Action:
    iname = index_name(spec, i)
    return Action(
        f"build index {iname} CONCURRENTLY",
        index_statement(spec, i),
        transactional=False,
        statement_timeout=0,
        done_check=render("check_index_valid", index=names.regclass_literal(spec.target_schema, iname)),
        cleanup=sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(ident(spec.target_schema, iname)),
    )


INTEGER_TYPES = frozenset({"bigint", "int8", "integer", "int", "int4", "smallint", "int2"})
_AUTO = "auto"


def table_actions(spec: Spec, sequence: str | None = _AUTO) -> list[Action]:
    """The split DDL: tables with keys and CHECK, then foreign keys, then indexes.

    `sequence` is the legacy key's sequence as resolved on the database, None when the key has none (a uuid
    key), or "auto" offline: integer keys are assumed to use PostgreSQL's conventional <table>_<key>_seq.
    """
    if sequence == _AUTO:
        sequence = names.sequence_name(spec) if spec.source.primary_key_type.lower() in INTEGER_TYPES else None
    base = spec.base
    acts: list[Action] = []
    if spec.target_schema != "public":
        acts.append(
            Action(
                f"create schema {spec.target_schema}",
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident(spec.target_schema)),
            )
        )
    acts.append(
        Action(
            f"create base table {base.table}",
            render(
                "expand_create_base",
                table=names.split(spec, base.table),
                pk=ident(spec.pk),
                pk_type=raw(spec.source.primary_key_type),
                # New ids come from the legacy sequence whichever side the app writes (DESIGN.md §Races 6).
                default=sql.SQL(" DEFAULT nextval({}::regclass)").format(
                    names.regclass_literal(spec.source.schema_, sequence)
                )
                if sequence
                else raw(""),
                columns=_column_defs(base.columns),
                pk_name=ident(object_name(base.table, suffix="pkey")),
                check_name=ident(object_name(base.table, spec.source.discriminator, suffix="check")),
                discriminator=ident(spec.source.discriminator),
                values=join([literal(v.when) for v in spec.variants]),
            ),
        )
    )
    for v in spec.variants:
        acts.append(
            Action(
                f"create variant table {v.table} (rows where {spec.source.discriminator} = {v.when!r})",
                render(
                    "expand_create_variant",
                    table=names.split(spec, v.table),
                    link=ident(base.link_column),
                    pk_type=raw(spec.source.primary_key_type),
                    columns=_column_defs(v.columns),
                    pk_name=ident(object_name(v.table, suffix="pkey")),
                ),
            )
        )
    if spec.meta:
        m = spec.meta
        acts.append(
            Action(
                f"create meta table {m.table}",
                render(
                    "expand_create_meta",
                    table=names.split(spec, m.table),
                    id=ident(m.id_column),
                    link=ident(base.link_column),
                    pk_type=raw(spec.source.primary_key_type),
                    key=ident(m.key_column),
                    value=ident(m.value_column),
                    pk_name=ident(object_name(m.table, suffix="pkey")),
                    unique_name=ident(object_name(m.table, base.link_column, m.key_column, suffix="key")),
                ),
            )
        )
    base_ref = names.split(spec, base.table)
    for v in spec.variants:
        acts += _fk_actions(spec, v.table, base.link_column, base_ref, spec.pk, "cascade")
    if spec.meta:
        acts += _fk_actions(spec, spec.meta.table, base.link_column, base_ref, spec.pk, "cascade")
    for fk in base.foreign_keys:
        ref = ident(fk.references_schema, fk.references)
        acts += _fk_actions(spec, base.table, fk.column, ref, fk.references_column, fk.on_delete)
    acts += index_actions(spec, "expand")
    return acts


def index_actions(spec: Spec, phase: str) -> list[Action]:
    """The spec's indexes that `phase` ("expand" or "backfill") builds."""
    return [_index_action(spec, i) for i in range(len(spec.indexes)) if spec.index_phase(i) == phase]


def resolve_sequence(conn: psycopg.Connection[Any], spec: Spec) -> str | None:
    """The legacy primary key's sequence (serial or identity), or None when the key has none (e.g. uuid)."""
    table = as_text(names.source(spec))
    row = conn.execute(
        "SELECT c.relname::text FROM pg_class c WHERE c.oid = pg_get_serial_sequence(%s, %s)::regclass",
        [table, spec.pk],
    ).fetchone()
    return str(row[0]) if row else None


def preflight(conn: psycopg.Connection[Any], spec: Spec) -> None:
    """Refuse to start when the database does not match the spec; name what is wrong and how to fix it."""
    version = conn.info.server_version
    if version < 140000:
        raise OperationalError(
            f"PostgreSQL {version // 10000} is too old", hint="migrator needs PostgreSQL 14 or newer"
        )
    legacy = as_text(names.source(spec))
    cols = dict(conn.execute(load("preflight_columns"), {"table": legacy}).fetchall())
    if not cols:
        raise TableDoesNotExist(
            f"legacy table {spec.source.schema_}.{spec.source.table} does not exist",
            hint="check [source] in the spec, or run `migrator seed` to create the demo schema",
        )
    missing = [c for c in spec.legacy_columns() if c not in cols]
    if missing:
        raise GuardFailed(
            f"legacy table {spec.source.table} has no column(s) {', '.join(missing)}",
            hint="fix the column names in the spec",
        )
    row = conn.execute(load("preflight_primary_key"), {"table": legacy}).fetchone()
    if not row or row[0] != [spec.pk]:
        raise GuardFailed(
            f"{spec.source.table}'s primary key is {row[0] if row else 'missing'}, the spec says [{spec.pk}]",
            hint="set source.primary_key to the table's single-column primary key",
        )
    expected = split_table_columns(spec)
    for table, want in expected.items():
        have = dict(conn.execute(load("preflight_columns"), {"table": as_text(names.split(spec, table))}).fetchall())
        if have and set(have) != want:
            raise GuardFailed(
                f"table {spec.target_schema}.{table} already exists with other columns ({', '.join(have)})",
                hint="rename or drop it, or choose another table name in the spec",
            )


def plan(ctx: Context, conn: psycopg.Connection[Any] | None = None) -> list[Action]:
    """State schema, split tables, constraints, indexes, then the forward triggers."""
    sequence = resolve_sequence(conn, ctx.spec) if conn is not None else "auto"
    return [
        state.schema_action(ctx.spec),
        *table_actions(ctx.spec, sequence),
        _empty_stale_action(ctx.spec),
        *triggers.forward_actions(ctx.spec),
    ]


def _empty_stale_action(spec: Spec) -> Action:
    """Split rows left by an earlier expand that was rolled back are stale (legacy writes were not synced
    meanwhile) and the backfill never overwrites: empty the split tables before the triggers go on. Nothing
    reads them before read_new, so this loses nothing. Once the trigger exists, their rows are live: skip."""
    tables = [names.split(spec, t) for t in spec.split_tables()]
    empty = join([sql.SQL("NOT EXISTS (SELECT 1 FROM {})").format(t) for t in tables], " AND ")
    trigger_on = sql.SQL("EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass({}) AND tgname = {})").format(
        literal(as_text(names.source(spec))), literal(names.trigger_name_text(spec, "forward"))
    )
    statement = join(
        [
            sql.SQL("TRUNCATE {}").format(join(tables)),
            sql.SQL("DELETE FROM {} WHERE migration = {}").format(
                names.state(spec, "quarantine"), literal(spec.migration_name)
            ),
            sql.SQL("DELETE FROM {} WHERE migration = {}").format(
                names.state(spec, "backfill_ranges"), literal(spec.migration_name)
            ),
        ],
        ";\n",
    )
    return Action(
        "empty split tables left over from an earlier, rolled-back expand (stale), and reset backfill/quarantine",
        statement,
        done_check=sql.SQL("SELECT ({}) OR ({})").format(empty, trigger_on),
    )


def apply(ctx: Context) -> None:
    db = ctx.require_db()
    with state.transition(db, ctx.spec, "expand", ("legacy",)) as tr:
        preflight(tr.conn, ctx.spec)
        actions = plan(ctx, tr.conn)
        run_actions(tr.conn, actions, on_step=announce(ctx), lock_timeout=ctx.lock_timeout)
        report = verify(ctx, tr.conn)
        if not report.ok:
            raise GuardFailed("expand finished but its checks failed: " + "; ".join(report.failures))
        tr.finish(
            "dual_write",
            reason=ctx.options.get("reason"),
            details={"steps": len(actions), "spec": ctx.spec.model_dump(mode="json", by_alias=True)},
        )


def verify(ctx: Context, conn: psycopg.Connection[Any] | None = None) -> Report:
    """Split tables exist, every FK is validated, every index valid, forward triggers enabled."""
    if conn is None:
        with ctx.require_db().connect(autocommit=True) as c:
            return verify(ctx, c)
    spec = ctx.spec
    report = Report(name)
    for table in spec.split_tables():
        exists = bool(scalar(conn, "SELECT to_regclass(%s) IS NOT NULL", [as_text(names.split(spec, table))]))
        report.check(exists, f"table {table} exists", f"table {table} is missing")
    check_done(report, conn, table_actions(spec, None))
    enabled = dict(
        conn.execute(
            load("trigger_state"),
            {
                "table": as_text(names.source(spec)),
                "names": [
                    names.trigger_name_text(spec, "forward"),
                    names.trigger_name_text(spec, "forward_truncate"),
                ],
            },
        ).fetchall()
    )
    report.check(
        len(enabled) == 2 and all(v != "D" for v in enabled.values()),
        "forward triggers enabled",
        f"forward triggers missing or disabled ({enabled or 'none'})",
    )
    return report


def rollback_plan(ctx: Context) -> list[Action]:
    """Detach the triggers and drop their functions; drop the split tables only when asked to."""
    spec = ctx.spec
    acts = [
        *triggers.drop_forward_actions(spec),
        Action(
            "drop forward functions",
            join(
                [
                    render("drop_function", function=names.function_name(spec, "forward")),
                    render("drop_function", function=names.function_name(spec, "forward_truncate")),
                    sql.SQL("DROP FUNCTION IF EXISTS {}({}, text, text)").format(
                        names.function_name(spec, "sync"), names.source(spec)
                    ),
                ],
                ";\n",
            ),
        ),
    ]
    if ctx.options.get("drop_tables"):
        for table in reversed(spec.split_tables()):
            acts.append(Action(f"drop split table {table}", render("drop_table", table=names.split(spec, table))))
    return acts


def rollback(ctx: Context) -> None:
    """dual_write -> legacy: the application never depended on the split tables, so nothing can be lost."""
    db = ctx.require_db()
    with state.transition(db, ctx.spec, "rollback", ("dual_write",)) as tr:
        run_actions(tr.conn, rollback_plan(ctx), on_step=announce(ctx), lock_timeout=ctx.lock_timeout)
        kept = "dropped" if ctx.options.get("drop_tables") else "kept (drop them with --drop-tables)"
        ctx.reporter.step(f"split tables {kept}")
        tr.finish(
            "legacy", reason=ctx.options.get("reason"), details={"drop_tables": bool(ctx.options.get("drop_tables"))}
        )

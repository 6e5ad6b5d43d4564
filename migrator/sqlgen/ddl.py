"""The split schema's DDL, as Actions: tables with their keys and CHECK, foreign keys (NOT VALID, then VALIDATE),
indexes (CONCURRENTLY). expand builds most of it; the backfill builds the indexes it defers until the rows are in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from migrator.engine.actions import Action
from migrator.spec import ColumnSpec, Spec
from migrator.sqlgen import names, views
from migrator.sqlgen.compose import as_text, ident, join, literal, raw, render
from migrator.sqlgen.names import object_name


def _column_defs(spec: Spec, columns: dict[str, ColumnSpec]) -> sql.Composed:
    defs: list[sql.Composable] = []
    for col, cs in spec.stored(columns).items():
        null = " NOT NULL" if cs.required else ""
        parts: list[sql.Composable] = [ident(col), raw(f" {cs.type}{null}")]
        if cs.generated is not None:
            # The legacy column's own expression (checked against the catalog), over the same column names.
            parts += [raw(" GENERATED ALWAYS AS ("), raw(cs.generated), raw(") STORED")]
        defs.append(sql.Composed(parts))
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


def offline_sequence(spec: Spec) -> str | None:
    """The legacy key's sequence as an offline plan assumes it: integer keys use PostgreSQL's conventional
    <table>_<key>_seq; other keys (uuid) have none."""
    return names.sequence_name(spec) if spec.source.primary_key_type.lower() in INTEGER_TYPES else None


def table_actions(spec: Spec, sequence: str | None = _AUTO) -> list[Action]:
    """The split DDL: tables with keys and CHECK, then foreign keys, then indexes.

    `sequence` is the legacy key's sequence as resolved on the database, None when the key has none (a uuid
    key), or "auto" offline: integer keys are assumed to use PostgreSQL's conventional <table>_<key>_seq.
    """
    if sequence == _AUTO:
        sequence = offline_sequence(spec)
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
                columns=_column_defs(spec, base.columns),
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
                    columns=_column_defs(spec, v.columns),
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


@dataclass(frozen=True)
class CarriedCheck:
    """A CHECK constraint of the legacy table whose columns all land in one split table."""

    table: str
    name: str
    definition: str  # pg_get_constraintdef's text: the server's own rendering, with the same column names
    validated: bool  # the legacy constraint is validated (a NOT VALID one is carried NOT VALID, and stays so)


_LEGACY_CHECKS = """
SELECT c.conname::text, pg_catalog.pg_get_constraintdef(c.oid), c.convalidated,
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey))
  FROM pg_catalog.pg_constraint c
 WHERE c.conrelid = pg_catalog.to_regclass(%s) AND c.contype = 'c'
 ORDER BY c.conname
"""


def legacy_checks(conn: psycopg.Connection[Any], spec: Spec) -> tuple[list[CarriedCheck], list[str]]:
    """The legacy table's CHECK constraints carried to the split table that holds all their columns, and the
    names of those that cannot be (columns across tables, or in the meta table): `plan` lists them."""
    homes = {
        spec.base.table: {spec.pk, *spec.stored(spec.base.columns)},
        **{v.table: set(spec.stored(v.columns)) for v in spec.variants},
    }
    carried, left = [], []
    for name, definition, validated, columns in conn.execute(_LEGACY_CHECKS, [as_text(names.source(spec))]):
        table = next((t for t, cols in homes.items() if set(columns) <= cols), None)
        if table is None:
            left.append(name)
        else:
            carried.append(CarriedCheck(table, name, definition, validated))
    return carried, left


def check_actions(spec: Spec, checks: list[CarriedCheck]) -> list[Action]:
    """expand: each carried CHECK added NOT VALID (no scan, brief lock), so the split side refuses from the start
    exactly what legacy refuses; the backfill validates it once the rows are in (check_validate_actions)."""
    return [
        Action(
            f"carry the legacy CHECK {c.name} to {c.table} (NOT VALID)",
            # The definition is the catalog's own text of a constraint on the same column names.
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID").format(
                names.split(spec, c.table), ident(c.name), raw(c.definition.removesuffix(" NOT VALID"))
            ),
            done_check=_constraint_done(spec, c.table, c.name, validated=False),
        )
        for c in checks
    ]


def check_validate_actions(spec: Spec, checks: list[CarriedCheck]) -> list[Action]:
    """backfill: validate each carried CHECK that legacy itself has validated (a scan that lets writes on)."""
    return [
        Action(
            f"validate the carried CHECK {c.name} on {c.table}",
            sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(names.split(spec, c.table), ident(c.name)),
            done_check=_constraint_done(spec, c.table, c.name, validated=True),
            statement_timeout=0,
        )
        for c in checks
        if c.validated
    ]


@dataclass(frozen=True)
class Policy:
    """A row-security policy of the legacy table, as the catalog renders it."""

    name: str
    permissive: bool
    command: str  # ALL | SELECT | INSERT | UPDATE | DELETE
    roles: tuple[str | None, ...]  # None = PUBLIC
    using: str | None
    check: str | None
    columns: frozenset[str]


_COMMANDS = {"*": "ALL", "r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}

_LEGACY_RLS = """
SELECT c.relrowsecurity, c.relforcerowsecurity FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass(%s)
"""

_LEGACY_POLICIES = """
SELECT p.polname::text, p.polpermissive, p.polcmd::text,
       ARRAY(SELECT CASE WHEN r = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(r)::text END
               FROM pg_catalog.unnest(p.polroles) AS r),
       pg_catalog.pg_get_expr(p.polqual, p.polrelid), pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid),
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_depend d
               JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
              WHERE d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass AND d.objid = p.oid
                AND d.refobjid = p.polrelid AND d.refobjsubid > 0)
  FROM pg_catalog.pg_policy p
 WHERE p.polrelid = pg_catalog.to_regclass(%s)
 ORDER BY p.polname
"""


def legacy_row_security(conn: psycopg.Connection[Any], spec: Spec) -> tuple[bool, bool, list[Policy]]:
    """(row security enabled, forced, its policies) on the legacy table."""
    table = as_text(names.source(spec))
    row = conn.execute(_LEGACY_RLS, [table]).fetchone()
    if not row or not row[0]:
        return False, False, []
    policies = [
        Policy(name, permissive, _COMMANDS[cmd], tuple(roles), using, check, frozenset(columns))
        for name, permissive, cmd, roles, using, check, columns in conn.execute(_LEGACY_POLICIES, [table])
    ]
    return True, bool(row[1]), policies


def untranslatable_policies(spec: Spec, policies: list[Policy]) -> list[str]:
    """Policies whose expressions use columns that do not all land in the base table (they cannot be carried)."""
    base = {spec.pk, *spec.stored(spec.base.columns)}
    return [p.name for p in policies if not p.columns <= base]


def row_security_actions(spec: Spec, forced: bool, policies: list[Policy]) -> list[Action]:
    """Carry row security to the split tables before any row reaches them: the base table gets each legacy policy
    (its expressions use base columns only: preflight refused the others); every child and the meta table get one
    policy that shows a row exactly when its base row is visible, so no reader of the split side sees a row the
    legacy policies hid."""
    base = names.split(spec, spec.base.table)
    statements: list[sql.Composable] = []
    for table in spec.split_tables():
        target = names.split(spec, table)
        statements.append(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(target))
        if forced:
            statements.append(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(target))
    for p in policies:
        roles = join([raw("PUBLIC") if r is None else ident(r) for r in p.roles])
        # The expressions are the catalog's own rendering of expressions over the same column names.
        using = sql.SQL(" USING ({})").format(raw(p.using)) if p.using else raw("")
        check = sql.SQL(" WITH CHECK ({})").format(raw(p.check)) if p.check else raw("")
        statements.append(
            sql.SQL("CREATE POLICY {} ON {} AS {} FOR {} TO {}{}{}").format(
                ident(p.name),
                base,
                raw("PERMISSIVE" if p.permissive else "RESTRICTIVE"),
                raw(p.command),
                roles,
                using,
                check,
            )
        )
    through_base = sql.SQL("EXISTS (SELECT FROM {} AS b WHERE b.{} = {})")
    for table in spec.split_tables()[1:]:
        # Qualified by its table: inside the subquery an unqualified name would resolve to the base's column first.
        link = sql.SQL("{}.{}").format(names.split(spec, table), ident(spec.base.link_column))
        visible = through_base.format(base, ident(spec.pk), link)
        statements.append(
            sql.SQL("CREATE POLICY {} ON {} FOR ALL TO PUBLIC USING ({}) WITH CHECK ({})").format(
                ident(object_name("migrator", table, suffix="visible_base")),
                names.split(spec, table),
                visible,
                visible,
            )
        )
    exists = sql.SQL(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass({}) AND relrowsecurity)"
    ).format(literal(as_text(base)))
    return [
        Action(
            "carry row-level security to the split tables (the legacy policies on the base table, the base's "
            "visibility on the others)",
            join(statements, ";\n"),
            done_check=exists,
        )
    ]


_BEFORE_ROW_TRIGGERS = """
SELECT t.tgname::text FROM pg_catalog.pg_trigger t
 WHERE t.tgrelid = pg_catalog.to_regclass(%s) AND NOT t.tgisinternal
   AND (t.tgtype & 3) = 3 AND (t.tgtype & 20) <> 0
 ORDER BY 1
"""


def legacy_before_triggers(conn: psycopg.Connection[Any], spec: Spec) -> list[str]:
    """The legacy table's own BEFORE INSERT/UPDATE row triggers (bits of tgtype: 1 row, 2 before, 4 insert,
    16 update): they may change a row the reverse sync writes, which must then be written back to the split row."""
    return [r[0] for r in conn.execute(_BEFORE_ROW_TRIGGERS, [as_text(names.source(spec))])]


@dataclass(frozen=True)
class TableCheck:
    """A CHECK constraint of a table: its name, its expression as the catalog renders it, and its columns."""

    name: str
    expression: str
    columns: frozenset[str]


_TABLE_CHECKS = """
SELECT c.conname::text, pg_catalog.pg_get_expr(c.conbin, c.conrelid),
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey))
  FROM pg_catalog.pg_constraint c
 WHERE c.conrelid = pg_catalog.to_regclass(%s) AND c.contype = 'c'
 ORDER BY c.conname
"""


def table_checks(conn: psycopg.Connection[Any], table: sql.Identifier) -> list[TableCheck]:
    """Every CHECK constraint of `table` (validated or not: either refuses a row written to it)."""
    return [TableCheck(n, e, frozenset(cols)) for n, e, cols in conn.execute(_TABLE_CHECKS, [as_text(table)])]


def check_violations_sql(spec: Spec, check: TableCheck) -> tuple[sql.Composed, sql.Composed]:
    """(up to five keys, count) of the split rows, read as legacy rows, that `check` would refuse: its expression
    is false (NULL passes a CHECK). The expression is the catalog's own text over the legacy column names, which
    the split side read as legacy rows has too."""
    failing = sql.SQL("FROM ({}) AS s WHERE ({}) IS FALSE").format(views.split_as_legacy(spec), raw(check.expression))
    keys = sql.SQL("SELECT s.{pk}::text {failing} ORDER BY s.{pk} LIMIT 5").format(pk=ident(spec.pk), failing=failing)
    return keys, sql.SQL("SELECT count(*) {}").format(failing)

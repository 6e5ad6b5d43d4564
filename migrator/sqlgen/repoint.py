"""What contract and its rollback change around the legacy table: the foreign keys that reference it, re-pointed
at the base table (NOT VALID, VALIDATE, then the old one dropped) and back; the compatibility view that keeps the
legacy name and shape over the split tables; and the statements that restore the legacy table from its archive.

The few catalog lookups they need (the referencing constraints as they are now, the legacy columns' defaults) take
a connection; without one, the names and actions are those the spec implies, as `migrator plan` shows them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

from migrator.engine.actions import Action
from migrator.spec import Spec
from migrator.sqlgen import names, triggers, views
from migrator.sqlgen.compose import as_text, ident, literal, load, raw, render
from migrator.sqlgen.names import object_name

# pg_constraint.confdeltype -> the ON DELETE clause that recreates it.
FK_ACTIONS = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}

Target = Literal["legacy", "base"]


@dataclass(frozen=True)
class ReferenceFK:
    table: sql.Identifier
    table_text: str
    column: str
    old_name: str
    new_name: str
    on_delete: str
    # The FK to `target` is in the catalog (False: the names are the ones the spec implies).
    exists: bool = False


def _find_fk(conn: psycopg.Connection[Any], table: sql.Identifier, target: sql.Identifier, column: str) -> Any:
    """(name, confdeltype, confupdtype) of `table`.`column`'s FK to `target`, or None."""
    return conn.execute(
        load("find_reference_fks"), {"table": as_text(table), "target": as_text(target), "column": column}
    ).fetchone()


def references(spec: Spec, conn: psycopg.Connection[Any] | None, target: Target) -> list[ReferenceFK]:
    """The spec's referencing FKs as they are now (pointing at `target`: 'legacy' or 'base').

    The new name is that of an FK the column already has to the other table (a re-pointing interrupted after its
    first step, or an FK never dropped), so re-running finishes that one instead of adding a second."""
    base, legacy = names.split(spec, spec.base.table), names.source(spec)
    target_rel, other_rel = (legacy, base) if target == "legacy" else (base, legacy)
    out = []
    for ref in spec.references:
        table = ident(ref.schema_, ref.table)
        legacy_name = object_name(ref.table, ref.column, suffix="fkey")
        split_name = object_name(ref.table, ref.column, suffix="split_fkey")
        old, on_delete, exists = (legacy_name if target == "legacy" else split_name), "NO ACTION", False
        new = split_name if target == "legacy" else legacy_name
        if conn is not None:
            row = _find_fk(conn, table, target_rel, ref.column)
            if row is not None:
                old, on_delete, exists = row[0], FK_ACTIONS.get(row[1], "NO ACTION"), True
            other = _find_fk(conn, table, other_rel, ref.column)
            new = other[0] if other is not None else new
        out.append(ReferenceFK(table, f"{ref.schema_}.{ref.table}", ref.column, old, new, on_delete, exists))
    return out


def repoint(fk: ReferenceFK, to: sql.Identifier, to_column: str) -> list[Action]:
    """Move one foreign key to `to`: add the new one NOT VALID, validate it, drop the old one."""
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


def repoint_actions(
    spec: Spec, conn: psycopg.Connection[Any] | None, current: Target, *, only_existing: bool = False
) -> list[Action]:
    """Every referencing FK moved away from `current`: from the legacy table to the base table (contract), or
    from the base table back to the legacy table (its rollback). `only_existing`: only the FKs the catalog has
    pointing at `current` (undoing an interrupted contract moves back exactly the ones it had moved)."""
    to = names.split(spec, spec.base.table) if current == "legacy" else names.source(spec)
    fks = [fk for fk in references(spec, conn, current) if fk.exists or not only_existing]
    return [action for fk in fks for action in repoint(fk, to, spec.pk)]


def dangling_references_sql(spec: Spec, fk: ReferenceFK) -> sql.Composed:
    """Up to six keys the referencing table points at that have no base row (re-pointing its FK would fail)."""
    return sql.SQL(
        "SELECT DISTINCT r.{col}::text FROM {table} AS r WHERE r.{col} IS NOT NULL "
        "AND NOT EXISTS (SELECT FROM {base} AS b WHERE b.{pk} = r.{col}) LIMIT 6"
    ).format(col=ident(fk.column), table=fk.table, base=names.split(spec, spec.base.table), pk=ident(spec.pk))


def compat_view(spec: Spec) -> list[sql.Composable]:
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
        triggers.definer_function(spec, fn, body),
        triggers.create_trigger(
            spec, "compat_view", "INSTEAD OF INSERT OR UPDATE OR DELETE", names.source(spec), "ROW", fn
        ),
    ]


def view_defaults(conn: psycopg.Connection[Any], spec: Spec) -> list[sql.Composable]:
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


def restore_done_check(spec: Spec) -> sql.Composed:
    """True once the restore committed: the legacy name is a table again and the archive name is free (the restore
    is one transaction, so its view, rename and triggers are all there or none is)."""
    return sql.SQL(
        "SELECT to_regclass({archive}) IS NULL AND EXISTS (SELECT FROM pg_catalog.pg_class "
        "WHERE oid = to_regclass({legacy}) AND relkind IN ('r', 'p'))"
    ).format(archive=literal(as_text(names.archive(spec))), legacy=literal(as_text(names.source(spec))))


def restore_statements(spec: Spec) -> list[sql.Composable]:
    """Drop the view, rename the archive back, re-create both syncs: one transaction, so no write is missed."""
    stmts: list[sql.Composable] = [
        sql.SQL("DROP VIEW IF EXISTS {}").format(names.source(spec)),
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(names.archive(spec), ident(spec.source.table)),
    ]
    stmts += [a.statement for a in triggers.forward_actions(spec)]
    stmts += [a.statement for a in triggers.reverse_actions(spec)]
    return stmts

"""What contract and its rollback change around the legacy table: the foreign keys that reference it, re-pointed
at the base table (NOT VALID, VALIDATE, then the old one dropped) and back; the compatibility view that keeps the
legacy name and shape over the split tables; and the statements that restore the legacy table from its archive.

The few catalog lookups they need (the referencing constraints as they are now, the legacy columns' defaults) take
a connection; without one, the names and actions are those the spec implies, as `migrator plan` shows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

from migrator.engine.actions import Action
from migrator.spec import Spec
from migrator.sqlgen import ddl, names, triggers, views
from migrator.sqlgen.compose import as_text, ident, join, literal, load, raw, render
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
        # Generated columns have no default of their own to give the view (their expression reads other columns).
        load("view_defaults"),
        {"table": as_text(names.source(spec)), "columns": spec.written_legacy_columns()},
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


def compat_writes_counter(spec: Spec) -> sql.Composed:
    """A statement trigger on the compatibility view that counts its writes with the legacy-writes counter: a write
    through the view is a write to the legacy name, and finalize waits until they have stopped, as contract did."""
    counter = "legacy_writes"
    return triggers.create_trigger(
        spec,
        counter,
        "AFTER INSERT OR UPDATE OR DELETE",
        names.source(spec),
        "STATEMENT",
        names.function_name(spec, counter),
    )


def restore_statements(spec: Spec, moved: Sequence[sql.Composable] = ()) -> list[sql.Composable]:
    """Drop the view, rename the archive back, re-create both syncs: one transaction, so no write is missed.

    `moved`: the statements that re-create what depends on the compatibility view (dependents.find); they run
    once the table has its name back, with the view renamed aside, which is dropped after them."""
    aside_name = object_name(spec.source.table, suffix="compat_old")
    aside = ident(spec.source.schema_, aside_name)
    stmts: list[sql.Composable] = (
        [
            sql.SQL("ALTER VIEW IF EXISTS {} RENAME TO {}").format(names.source(spec), ident(aside_name)),
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(names.archive(spec), ident(spec.source.table)),
            *moved,
            sql.SQL("DROP VIEW IF EXISTS {}").format(aside),
        ]
        if moved
        else [
            sql.SQL("DROP VIEW IF EXISTS {}").format(names.source(spec)),
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(names.archive(spec), ident(spec.source.table)),
        ]
    )
    stmts += [a.statement for a in triggers.forward_actions(spec, mark_origin=True)]
    stmts += [a.statement for a in triggers.reverse_actions(spec)]
    return stmts


# -- finalize: what nothing needs once the archive goes -------------------------------------------------------

_KEY_SEQUENCE = """
SELECT n.nspname::text, c.relname::text, a.attidentity <> ''
  FROM pg_catalog.pg_attribute AS a
  JOIN pg_catalog.pg_class AS c ON c.oid = pg_catalog.pg_get_serial_sequence(%(table)s, %(column)s)::pg_catalog.regclass
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE a.attrelid = pg_catalog.to_regclass(%(table)s) AND a.attname = %(column)s
"""

_SEQUENCE_GRANTS = """
SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END, a.privilege_type
  FROM pg_catalog.pg_class AS c, pg_catalog.aclexplode(c.relacl) AS a
 WHERE c.oid = pg_catalog.to_regclass(%s) AND a.grantee <> c.relowner
 ORDER BY 1 NULLS FIRST, 2
"""


def own_key_sequence(
    spec: Spec, conn: psycopg.Connection[Any] | None, *, view_default: bool = False
) -> list[sql.Composable]:
    """Statements that give the base table's key a sequence of its own, so nothing depends on the archive.

    A serial key's sequence changes owner (ALTER SEQUENCE … OWNED BY): same name, value and grants. An identity
    sequence cannot change owner — it goes with the archive's column — so the base key gets a new sequence set
    above both the old one and the highest key, with the old one's grants; run in the transaction that drops the
    archive, which holds the base table's lock from its ALTER on, so no key is drawn from the old one in between.
    `view_default`: the kept compatibility view's key default moves to it too. None when the key has no sequence."""
    base, column = names.split(spec, spec.base.table), ident(spec.target_schema, spec.base.table, spec.pk)
    if conn is None:
        if ddl.offline_sequence(spec) is None:
            return []
        legacy_seq = ident(spec.source.schema_, names.sequence_name(spec))
        return [sql.SQL("ALTER SEQUENCE {} OWNED BY {}").format(legacy_seq, column)]
    row = conn.execute(_KEY_SEQUENCE, {"table": as_text(names.archive(spec)), "column": spec.pk}).fetchone()
    if row is None:
        return []
    old = ident(row[0], row[1])
    if not row[2]:
        return [sql.SQL("ALTER SEQUENCE {} OWNED BY {}").format(old, column)]
    new = ident(spec.target_schema, object_name(spec.base.table, spec.pk, suffix="seq"))
    next_key = sql.SQL("nextval({}::regclass)").format(literal(as_text(new)))
    stmts: list[sql.Composable] = [
        sql.SQL("CREATE SEQUENCE {} OWNED BY {}").format(new, column),
        sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}").format(base, ident(spec.pk), next_key),
    ]
    if view_default:
        stmts.append(
            sql.SQL("ALTER VIEW {} ALTER COLUMN {} SET DEFAULT {}").format(names.source(spec), ident(spec.pk), next_key)
        )
    stmts.append(
        sql.SQL(
            "SELECT pg_catalog.setval({}::pg_catalog.regclass, GREATEST((SELECT last_value FROM {}), "
            "(SELECT coalesce(max({}), 0) FROM {}), 1))"
        ).format(literal(as_text(new)), old, ident(spec.pk), base)
    )
    for role, privilege in conn.execute(_SEQUENCE_GRANTS, [as_text(old)]).fetchall():
        grantee = raw("PUBLIC") if role is None else ident(role)
        stmts.append(sql.SQL("GRANT {} ON SEQUENCE {} TO {}").format(raw(privilege), new, grantee))
    return stmts


def key_sequence_done(spec: Spec) -> sql.Composed:
    """True once the base key owns its sequence (or the archive, and with it the old one, is gone)."""
    return sql.SQL("SELECT to_regclass({}) IS NULL OR pg_catalog.pg_get_serial_sequence({}, {}) IS NOT NULL").format(
        literal(as_text(names.archive(spec))),
        literal(as_text(names.split(spec, spec.base.table))),
        literal(spec.pk),
    )


def is_view(conn: psycopg.Connection[Any], spec: Spec) -> bool:
    """Whether the legacy name is a view now (the compatibility view)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass(%s) AND relkind = 'v')",
        [as_text(names.source(spec))],
    ).fetchone()
    return bool(row and row[0])


def sync_leftovers(spec: Spec, *, keep_view: bool) -> list[tuple[str, sql.Identifier]]:
    """(kind, name) of what only the legacy table's sync needed: the sync and trigger functions and the write
    counters (with a kept compatibility view, its own function and the legacy-writes counter stay: it uses them)."""
    kinds = ["sync", "forward", "forward_truncate", *(k for _, k, _ in triggers.reverse_tables(spec))]
    kinds += ["reverse_truncate", "split_writes", *([] if keep_view else ["legacy_writes"])]
    out = [("function", names.function_name(spec, kind)) for kind in kinds]
    sides = ["split", *([] if keep_view else ["legacy"])]
    return out + [("sequence", names.writes_sequence(spec, side)) for side in sides]


def drop_statement(kind: str, objects: Sequence[sql.Identifier]) -> sql.Composed:
    """DROP <kind> IF EXISTS a, b, … (functions by name alone: migrator never overloads its own)."""
    # Deliberate: finalize drops migrator's own functions and counters, which only the dropped sync used.
    ignore = raw(f"-- squawk-ignore ban-drop-{kind}\n")
    return sql.SQL("{}DROP {} IF EXISTS {}").format(ignore, raw(kind.upper()), join(objects))

"""The spec against the server, before any DDL: every type it names resolves there, and every legacy column it
names exists. What the TOML grammar cannot know (a typo such as `txet`, a column the table does not have) is a spec
error — exit 2 naming the spec key — and not a database error half-way through `expand` that leaves tables behind.

Types are resolved with `to_regtype` in the tool's own session (search_path pinned to pg_catalog), which is how the
DDL will resolve them: a user type must be schema-qualified in the spec.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from migrator.errors import SpecError
from migrator.spec import Spec
from migrator.sqlgen import names
from migrator.sqlgen.compose import as_text, raw


def check(conn: psycopg.Connection[Any], spec: Spec, origin: str = "spec") -> None:
    """Raise SpecError listing every spec key whose type does not resolve or whose legacy column is missing."""
    problems = [*_type_problems(conn, spec), *_column_problems(conn, spec), *generated_problems(conn, spec)]
    if problems:
        raise SpecError("\n".join(f"{origin}: {p}" for p in problems))


def spec_types(spec: Spec) -> Iterator[tuple[str, str]]:
    """(key path, type) for every type the spec names."""
    yield "source.primary_key_type", spec.source.primary_key_type
    for path, _, _, column in spec.iter_columns():
        yield f"{path}.type", column.type


def _resolved(conn: psycopg.Connection[Any], types: list[str]) -> dict[str, bool]:
    try:
        rows = conn.execute(
            "SELECT t, pg_catalog.to_regtype(t) IS NOT NULL FROM pg_catalog.unnest(%s::text[]) AS t", [types]
        ).fetchall()
        return {str(t): bool(ok) for t, ok in rows}
    except psycopg.errors.SyntaxError:
        # Before PostgreSQL 16 to_regtype raises on a name it cannot parse: ask type by type.
        out = {}
        for t in types:
            try:
                row = conn.execute("SELECT pg_catalog.to_regtype(%s) IS NOT NULL", [t]).fetchone()
                out[t] = bool(row and row[0])
            except psycopg.errors.SyntaxError:
                out[t] = False
        return out


def _type_problems(conn: psycopg.Connection[Any], spec: Spec) -> Iterator[str]:
    typed = list(spec_types(spec))
    resolved = _resolved(conn, sorted({t for _, t in typed}))
    for path, type_ in typed:
        if not resolved.get(type_, False):
            yield (
                f"{path}: type {type_!r} does not exist on this server — fix: correct the type name "
                "(a type of your own needs its schema, e.g. 'shop.order_kind')"
            )


def _column_problems(conn: psycopg.Connection[Any], spec: Spec) -> Iterator[str]:
    """Legacy columns the spec names that the legacy table lacks (nothing to say when the table is not there:
    preflight names a missing table, and after contract it is archived)."""
    legacy = as_text(names.source(spec))
    have = {
        str(r[0])
        for r in conn.execute(
            "SELECT a.attname FROM pg_catalog.pg_attribute a WHERE a.attrelid = pg_catalog.to_regclass(%s) "
            "AND a.attnum > 0 AND NOT a.attisdropped",
            [legacy],
        ).fetchall()
    }
    if not have:
        return
    where = f"{spec.source.schema_}.{spec.source.table}"
    named = [
        ("source.primary_key", spec.pk),
        ("source.discriminator", spec.source.discriminator),
        *((path, column) for path, _, column, _ in spec.iter_columns()),
    ]
    reported: set[str] = set()
    for path, column in named:
        if column not in have and column not in reported:
            reported.add(column)
            yield f"{path}: legacy table {where} has no column {column!r} — fix: use one of its columns"


_LEGACY_GENERATED = """
SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), pg_catalog.pg_get_expr(d.adbin, d.adrelid)
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attrelid = pg_catalog.to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = 's'
"""


def legacy_generated(conn: psycopg.Connection[Any], spec: Spec) -> dict[str, tuple[str, str]]:
    """The legacy table's generated columns: name -> (type, expression as the catalog renders it)."""
    rows = conn.execute(_LEGACY_GENERATED, [as_text(names.source(spec))]).fetchall()
    return {str(name): (str(type_), str(expr)) for name, type_, expr in rows}


def _rendered(conn: psycopg.Connection[Any], spec: Spec, expr: str, type_: str) -> str | None:
    """The spec's expression as the catalog renders it over the legacy columns (a throwaway temporary copy of the
    legacy columns, rolled back), so that spacing and parentheses do not matter; None when it does not compile."""
    probe = sql.Identifier("pg_temp", "migrator_generated_probe")
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(
                sql.SQL("CREATE TEMPORARY TABLE {} (LIKE {}) ON COMMIT DROP").format(probe, names.source(spec))
            )
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD COLUMN migrator_probe {} GENERATED ALWAYS AS ({}) STORED").format(
                    probe, raw(type_), raw(expr)
                )
            )
            row = conn.execute(
                _LEGACY_GENERATED.replace("AND a.attgenerated", "AND a.attname = 'migrator_probe' AND a.attgenerated"),
                [as_text(probe)],
            ).fetchone()
            return str(row[2]) if row else None
    except psycopg.Error:
        return None


def generated_problems(conn: psycopg.Connection[Any], spec: Spec) -> Iterator[str]:
    """Generated legacy columns the spec leaves out or names without their expression, and spec expressions that
    are not the legacy column's."""
    row = conn.execute(
        "SELECT relkind IN ('r', 'p') FROM pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass(%s)",
        [as_text(names.source(spec))],
    ).fetchone()
    if not row or not row[0]:
        return  # no legacy table under its name (not created yet, or archived by contract): nothing to compare
    generated = legacy_generated(conn, spec)
    listed = {column: (path, cs) for path, _, column, cs in spec.iter_columns()}
    for column, (type_, expr) in generated.items():
        fix = f'write {column} = {{ type = "{type_}", generated = "{expr}" }}'
        if column not in listed:
            yield (
                f"legacy column {column!r} is GENERATED ALWAYS AS ({expr}) STORED and not in the spec: the "
                f"compatibility view would lack it — fix: {fix} in [base.columns]"
            )
            continue
        path, cs = listed[column]
        if cs.generated is None:
            yield f"{path}: legacy column {column!r} is GENERATED ALWAYS AS ({expr}) STORED — fix: {fix}"
        elif cs.generated != expr and _rendered(conn, spec, cs.generated, type_) != expr:
            yield f"{path}.generated: {cs.generated!r} is not the legacy expression ({expr}) — fix: {fix}"
    for column, (path, cs) in listed.items():
        if cs.generated is not None and column not in generated:
            yield f"{path}.generated: legacy column {column!r} is not a generated column — fix: drop `generated`"

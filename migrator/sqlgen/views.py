"""Two SELECTs with the legacy table's shape, the ground of validation, the compat view and the reverse backfill.

- `split_as_legacy`: the split tables joined back into legacy-shaped rows.
- `legacy_normalized`: the legacy rows as the split schema can represent them: columns of another variant
  dropped (the split keeps only the row's own variant), missing required values filled where the spec says
  `on_missing = { default = … }`.
A row is in sync exactly when the two agree on it.
"""

from __future__ import annotations

import re

from psycopg import sql

from migrator.spec import Spec
from migrator.sqlgen import names
from migrator.sqlgen.compose import ident, join, literal, raw, render
from migrator.sqlgen.rules import filled

JSONB_TYPES = frozenset({"jsonb"})


def _alias(i: int) -> sql.Identifier:
    return ident(f"v{i}")


def _meta_alias(i: int) -> sql.Identifier:
    return ident(f"m{i}")


def _q(alias: str | sql.Identifier, col: str) -> sql.Composed:
    a = ident(alias) if isinstance(alias, str) else alias
    return sql.Composed([a, raw("."), ident(col)])


# Built-in scalar types whose text input reads the JSON scalar to_jsonb wrote for them: cast from `#>> '{}'`.
_TEXT_CASTABLE = frozenset(
    {
        "text",
        "varchar",
        "character varying",
        "char",
        "character",
        "bpchar",
        "name",
        "smallint",
        "int2",
        "integer",
        "int",
        "int4",
        "bigint",
        "int8",
        "numeric",
        "decimal",
        "real",
        "float4",
        "double precision",
        "float8",
        "float",
        "boolean",
        "bool",
        "uuid",
        "date",
        "time",
        "time without time zone",
        "time with time zone",
        "timetz",
        "timestamp",
        "timestamp without time zone",
        "timestamp with time zone",
        "timestamptz",
        "interval",
        "bytea",
        "inet",
        "cidr",
        "macaddr",
        "money",
        "citext",
    }
)


def base_type(col_type: str) -> str:
    """A spec type without its modifiers and array brackets, lower case: `numeric(10,2)[]` -> `numeric`."""
    return " ".join(re.sub(r"\(.*?\)|\[\d*\]", " ", col_type.lower()).split())


def is_array(col_type: str) -> bool:
    return col_type.rstrip().endswith("]")


def meta_to_legacy(value: sql.Composable, col_type: str) -> sql.Composed:
    """A meta jsonb value back in its legacy column type.

    A JSON scalar of a built-in type goes through its text (`#>> '{}'`). Anything else (arrays, whose JSON form
    is a JSON array and not an array literal; enums, domains and composites of the user's) is read back by
    PostgreSQL's own JSON-to-record conversion into a one-column record of that type, which turns JSON arrays
    into arrays element by element (quotes, commas, NULL elements, nested dimensions) and checks domains."""
    low = col_type.lower()
    if low in JSONB_TYPES:
        return sql.Composed([value])
    if low == "json":
        return sql.Composed([value, raw("::json")])
    if not is_array(col_type) and base_type(col_type) in _TEXT_CASTABLE:
        return sql.Composed([raw("("), value, raw(" #>> '{}')::"), raw(col_type)])
    return sql.Composed(
        [
            raw("(SELECT migrator_meta.value FROM pg_catalog.jsonb_to_record(pg_catalog.jsonb_build_object('value', "),
            value,
            raw(")) AS migrator_meta (value "),
            raw(col_type),
            raw("))"),
        ]
    )


def split_columns(spec: Spec) -> list[tuple[str, sql.Composable]]:
    """(legacy column, expression over the split join) in spec.legacy_columns() order."""
    exprs: dict[str, sql.Composable] = {spec.pk: _q("b", spec.pk)}
    for col in spec.stored(spec.base.columns):
        exprs[col] = _q("b", col)
    for i, v in enumerate(spec.variants):
        for col in spec.stored(v.columns):
            exprs[col] = _q(_alias(i), col)
    if spec.meta:
        for i, (col, cs) in enumerate(spec.meta.columns.items()):
            exprs[col] = meta_to_legacy(_q(_meta_alias(i), spec.meta.value_column), cs.type)
    return [(c, exprs[c]) for c in spec.legacy_columns() if c in exprs]


def _with_computed(spec: Spec, inner: sql.Composed) -> sql.Composed:
    """`inner` with the generated columns no split table holds computed over its columns, in legacy order: the
    expression's unqualified names read the legacy-shaped row, exactly as they read the legacy row."""
    computed = spec.computed()
    if not computed:
        return inner
    columns = [
        sql.Composed([raw("(" + computed[c] + ")") if c in computed else _q("x", c), raw(" AS "), ident(c)])
        for c in spec.legacy_columns()
    ]
    return sql.SQL("SELECT {}\n  FROM ({}) AS x").format(join(columns, ",\n       "), inner)


def split_as_legacy(spec: Spec) -> sql.Composed:
    """SELECT <legacy columns> FROM base LEFT JOIN each variant (on its discriminator) LEFT JOIN each meta key."""
    link, pk = spec.base.link_column, spec.pk
    joins: list[sql.Composable] = []
    for i, v in enumerate(spec.variants):
        joins.append(
            sql.SQL("  LEFT JOIN {t} AS {a} ON {a}.{link} = b.{pk}").format(
                t=names.split(spec, v.table), a=_alias(i), link=ident(link), pk=ident(pk)
            )
        )
    if spec.meta:
        m = spec.meta
        for i, col in enumerate(m.columns):
            joins.append(
                sql.SQL("  LEFT JOIN {t} AS {a} ON {a}.{link} = b.{pk} AND {a}.{key} = {name}").format(
                    t=names.split(spec, m.table),
                    a=_meta_alias(i),
                    link=ident(link),
                    pk=ident(pk),
                    key=ident(m.key_column),
                    name=literal(col),
                )
            )
    columns = join([sql.Composed([expr, raw(" AS "), ident(c)]) for c, expr in split_columns(spec)], ",\n       ")
    inner = render("split_as_legacy", columns=columns, base=names.split(spec, spec.base.table), joins=join(joins, "\n"))
    return _with_computed(spec, inner)


def legacy_columns(spec: Spec, alias: str = "l") -> list[tuple[str, sql.Composable]]:
    """(legacy column, normalized expression over the legacy table) in spec.legacy_columns() order (the generated
    columns no split table holds left out: legacy_normalized computes them as split_as_legacy does)."""
    disc = _q(alias, spec.source.discriminator)
    exprs: dict[str, sql.Composable] = {spec.pk: _q(alias, spec.pk)}
    for col, cs in spec.stored(spec.base.columns).items():
        exprs[col] = filled(_q(alias, col), cs)
    for v in spec.variants:
        for col, cs in spec.stored(v.columns).items():
            exprs[col] = sql.SQL("CASE WHEN {disc} = {when} THEN {value} END").format(
                disc=disc, when=literal(v.when), value=filled(_q(alias, col), cs)
            )
    if spec.meta:
        for col, cs in spec.meta.columns.items():
            # Through jsonb and back, as the meta table stores it (e.g. a timestamp's text form).
            exprs[col] = meta_to_legacy(sql.SQL("to_jsonb({})").format(_q(alias, col)), cs.type)
    return [(c, exprs[c]) for c in spec.legacy_columns() if c in exprs]


def legacy_normalized(spec: Spec) -> sql.Composed:
    columns = join([sql.Composed([expr, raw(" AS "), ident(c)]) for c, expr in legacy_columns(spec)], ",\n       ")
    return _with_computed(spec, render("legacy_normalized", columns=columns, legacy=names.source(spec)))

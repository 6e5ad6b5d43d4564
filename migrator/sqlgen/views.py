"""Two SELECTs with the legacy table's shape, the ground of validation, the compat view and the reverse backfill.

- `split_as_legacy`: the split tables joined back into legacy-shaped rows.
- `legacy_normalized`: the legacy rows as the split schema can represent them: columns of another variant
  dropped (the split keeps only the row's own variant), missing required values filled where the spec says
  `on_missing = { default = … }`.
A row is in sync exactly when the two agree on it.
"""

from __future__ import annotations

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


def meta_to_legacy(value: sql.Composable, col_type: str) -> sql.Composed:
    """A meta jsonb value back in its legacy column type."""
    if col_type.lower() in JSONB_TYPES:
        return sql.Composed([value])
    if col_type.lower() == "json":
        return sql.Composed([value, raw("::json")])
    return sql.Composed([raw("("), value, raw(" #>> '{}')::"), raw(col_type)])


def split_columns(spec: Spec) -> list[tuple[str, sql.Composable]]:
    """(legacy column, expression over the split join) in spec.legacy_columns() order."""
    exprs: dict[str, sql.Composable] = {spec.pk: _q("b", spec.pk)}
    for col in spec.base.columns:
        exprs[col] = _q("b", col)
    for i, v in enumerate(spec.variants):
        for col in v.columns:
            exprs[col] = _q(_alias(i), col)
    if spec.meta:
        for i, (col, cs) in enumerate(spec.meta.columns.items()):
            exprs[col] = meta_to_legacy(_q(_meta_alias(i), spec.meta.value_column), cs.type)
    return [(c, exprs[c]) for c in spec.legacy_columns()]


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
    return render("split_as_legacy", columns=columns, base=names.split(spec, spec.base.table), joins=join(joins, "\n"))


def legacy_columns(spec: Spec, alias: str = "l") -> list[tuple[str, sql.Composable]]:
    """(legacy column, normalized expression over the legacy table) in spec.legacy_columns() order."""
    disc = _q(alias, spec.source.discriminator)
    exprs: dict[str, sql.Composable] = {spec.pk: _q(alias, spec.pk)}
    for col, cs in spec.base.columns.items():
        exprs[col] = filled(_q(alias, col), cs)
    for v in spec.variants:
        for col, cs in v.columns.items():
            exprs[col] = sql.SQL("CASE WHEN {disc} = {when} THEN {value} END").format(
                disc=disc, when=literal(v.when), value=filled(_q(alias, col), cs)
            )
    if spec.meta:
        for col, cs in spec.meta.columns.items():
            # Through jsonb and back, as the meta table stores it (e.g. a timestamp's text form).
            exprs[col] = meta_to_legacy(sql.SQL("to_jsonb({})").format(_q(alias, col)), cs.type)
    return [(c, exprs[c]) for c in spec.legacy_columns()]


def legacy_normalized(spec: Spec) -> sql.Composed:
    columns = join([sql.Composed([expr, raw(" AS "), ident(c)]) for c, expr in legacy_columns(spec)], ",\n       ")
    return render("legacy_normalized", columns=columns, legacy=names.source(spec))

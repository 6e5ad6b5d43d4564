"""The domain rules every generator shares, each written once:

- `filled`: a required column's missing value, filled where the spec says `on_missing = { default = … }`;
- `rejections` / `invalid`: the legacy rows the split schema rejects for a reason visible without trying (a missing
  required value, a discriminator no variant knows), worded as PostgreSQL words the rejection.

- `origin_is`: the sync loop guard, which no application session can set to skip the sync.

The backfill, the validation, the views and the trigger functions all call these, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from psycopg import sql

from migrator.spec import ColumnSpec, Spec
from migrator.sqlgen.compose import ident, join, literal, raw
from migrator.sqlgen.names import object_name


def column(alias: str, col: str) -> sql.Composed:
    """`alias."col"`: one of our own fixed row or table aliases (l, s, NEW, r), written as the templates write it."""
    return sql.Composed([raw(f"{alias}."), ident(col)])


def fills_default(cs: ColumnSpec) -> bool:
    """A required column whose missing value the split side fills with the spec's default (not quarantined)."""
    return cs.required and not isinstance(cs.on_missing, str)


def rejects_missing(cs: ColumnSpec) -> bool:
    """A required column whose missing value sends the row to quarantine."""
    return cs.required and isinstance(cs.on_missing, str)


def filled(expr: sql.Composable, cs: ColumnSpec) -> sql.Composable:
    """`expr`, or coalesce(expr, default::type) when the spec fills a missing required value."""
    if fills_default(cs) and not isinstance(cs.on_missing, str):
        return sql.SQL("coalesce({}, {}::{})").format(expr, literal(cs.on_missing.default), raw(cs.type))
    return expr


@dataclass(frozen=True)
class Rejection:
    condition: sql.Composable
    sqlstate: str
    message: str


def _not_null(table: str, col: str) -> str:
    return f'null value in column "{col}" of relation "{table}" violates not-null constraint'


def rejections(spec: Spec, alias: str = "l") -> list[Rejection]:
    """Each rejection visible without trying, over the legacy row `alias`, in the order PostgreSQL checks them
    (base NOT NULLs, the base CHECK, then the variant's NOT NULLs), worded as PostgreSQL words them, so backfill
    and trigger quarantine read the same."""
    disc_col = spec.source.discriminator
    disc = column(alias, disc_col)
    out: list[Rejection] = []
    for col, cs in spec.base.columns.items():
        if rejects_missing(cs):
            out.append(
                Rejection(sql.SQL("{} IS NULL").format(column(alias, col)), "23502", _not_null(spec.base.table, col))
            )
    check = object_name(spec.base.table, disc_col, suffix="check")
    out.append(
        Rejection(
            sql.SQL("{} NOT IN ({})").format(disc, join([literal(v.when) for v in spec.variants])),
            "23514",
            f'new row for relation "{spec.base.table}" violates check constraint "{check}"',
        )
    )
    for v in spec.variants:
        for col, cs in v.columns.items():
            if rejects_missing(cs):
                cond = sql.SQL("{} = {} AND {} IS NULL").format(disc, literal(v.when), column(alias, col))
                out.append(Rejection(cond, "23502", _not_null(v.table, col)))
    return out


def rejection_reason(spec: Spec, field: Literal["sqlstate", "message"], alias: str = "l") -> sql.Composed:
    """CASE over the rejections: the SQLSTATE or the message PostgreSQL would give for row `alias`."""
    whens = [
        sql.SQL("WHEN {} THEN {}").format(r.condition, literal(getattr(r, field))) for r in rejections(spec, alias)
    ]
    return sql.Composed([raw("CASE "), join(whens, " "), raw(" END")])


def invalid(spec: Spec, alias: str = "l") -> sql.Composed:
    """True for a legacy row `alias` the split schema rejects for a reason visible without trying: a missing
    required value, or a discriminator that is NULL or that no variant knows."""
    disc_col = spec.source.discriminator
    disc = column(alias, disc_col)
    conds: list[sql.Composable] = [
        sql.SQL("{} IS NULL").format(disc),
        sql.SQL("{} NOT IN ({})").format(disc, join([literal(v.when) for v in spec.variants])),
    ]
    for col, cs in spec.base.columns.items():
        if rejects_missing(cs) and col != disc_col:
            conds.append(sql.SQL("{} IS NULL").format(column(alias, col)))
    for v in spec.variants:
        for col, cs in v.columns.items():
            if rejects_missing(cs):
                conds.append(sql.SQL("({} = {} AND {} IS NULL)").format(disc, literal(v.when), column(alias, col)))
    return sql.Composed([raw("("), join(conds, " OR "), raw(")")])


def origin_is(side: Literal["legacy", "split"]) -> sql.Composed:
    """True while our own code is writing from `side` (the other direction's trigger must then not echo it back).

    The marker is the transaction-local setting migrator.origin, which any session may set; so it counts only when
    set by our own code: inside a trigger of ours (a nested trigger level, pg_trigger_depth() > 1), or in a session
    of the migration role itself (the reverse backfill). An application that sets it at its top level to skip the
    sync is ignored. Written for a SECURITY DEFINER function, where current_user is the migration role."""
    return sql.SQL(
        "(coalesce(pg_catalog.current_setting('migrator.origin', true), '') = {} "
        "AND (pg_catalog.pg_trigger_depth() > 1 OR pg_catalog.pg_has_role(session_user, current_user, 'MEMBER')))"
    ).format(literal(side))

"""Trigger functions generated from the spec: forward sync (legacy -> split).

The function bodies are composed with psycopg.sql like every other statement, so hostile names in a spec are
quoted identifiers inside the plpgsql too.
"""

from __future__ import annotations

from psycopg import sql

from migrator import names
from migrator.phases.base import Action, object_name
from migrator.spec import ColumnSpec, Spec
from migrator.sqlfiles import ident, join, literal, plpgsql_function, raw, render


def function_name(spec: Spec, kind: str) -> sql.Identifier:
    return ident(spec.state_schema, object_name(spec.migration_name, suffix=kind))


def trigger_name_text(spec: Spec, kind: str) -> str:
    return object_name("migrator", spec.migration_name, suffix=kind)


def trigger_name(spec: Spec, kind: str) -> sql.Identifier:
    return ident(trigger_name_text(spec, kind))


def _new(col: str) -> sql.Composed:
    return sql.Composed([raw("r."), ident(col)])


def _value(col: str, cs: ColumnSpec) -> sql.Composable:
    """NEW.col, or coalesce(NEW.col, default) when the spec fills a missing required value."""
    if cs.required and not isinstance(cs.on_missing, str):
        default = sql.Composed([literal(cs.on_missing.default), raw(f"::{cs.type}")])
        return sql.Composed([raw("coalesce("), _new(col), raw(", "), default, raw(")")])
    return _new(col)


def _upsert(
    table: sql.Identifier,
    key_cols: list[str],
    key_values: list[sql.Composable],
    cols: list[str],
    values: list[sql.Composable],
) -> sql.Composed:
    """INSERT … ON CONFLICT (key) DO UPDATE, skipping the write when nothing changed (no dead tuple)."""
    all_cols = join([ident(c) for c in [*key_cols, *cols]])
    target = join([ident(c) for c in cols])
    excluded = join([sql.Composed([raw("EXCLUDED."), ident(c)]) for c in cols])
    current = join([sql.Composed([raw("t."), ident(c)]) for c in cols])
    return render(
        "upsert",
        table=table,
        all_cols=all_cols,
        vals=join([*key_values, *values]),
        keys=join([ident(c) for c in key_cols]),
        target=target,
        excluded=excluded,
        current=current,
    )


def forward_sync_body(spec: Spec) -> sql.Composed:
    """The statements that make the split rows equal the legacy row r (base first: children reference it)."""
    pk, link = spec.pk, spec.base.link_column
    stmts: list[sql.Composable] = []
    base_cols = list(spec.base.columns)
    stmts.append(
        _upsert(
            names.split(spec, spec.base.table),
            [pk],
            [_new(pk)],
            base_cols,
            [_value(c, cs) for c, cs in spec.base.columns.items()],
        )
    )
    disc = ident(spec.source.discriminator)
    for v in spec.variants:
        upsert = _upsert(
            names.split(spec, v.table),
            [link],
            [_new(pk)],
            list(v.columns),
            [_value(c, cs) for c, cs in v.columns.items()],
        )
        stmts.append(
            render(
                "forward_variant",
                disc=disc,
                when=literal(v.when),
                upsert=upsert,
                table=names.split(spec, v.table),
                link=ident(link),
                pk=ident(pk),
            )
        )
    if spec.meta:
        m = spec.meta
        for col in m.columns:
            stmts.append(
                render(
                    "forward_meta",
                    col=ident(col),
                    table=names.split(spec, m.table),
                    link=ident(link),
                    pk=ident(pk),
                    key=ident(m.key_column),
                    value=ident(m.value_column),
                    name=literal(col),
                )
            )
    return join(stmts, "\n        ")


def sync_function_sql(spec: Spec) -> sql.Composed:
    """CREATE FUNCTION <state_schema>.<migration>_sync(r <legacy row>, p_op text, p_source text)."""
    args = sql.SQL("r {}, p_op text, p_source text").format(names.source(spec))
    body = render(
        "forward_sync",
        base=names.split(spec, spec.base.table),
        pk=ident(spec.pk),
        sync=forward_sync_body(spec),
        quarantine=names.state(spec, "quarantine"),
        migration=literal(spec.migration_name),
    )
    return plpgsql_function(function_name(spec, "sync"), body, returns="void", args=args)


def forward_actions(spec: Spec) -> list[Action]:
    """Create the sync and trigger functions, then attach both triggers in one short transaction."""
    fn = function_name(spec, "forward")
    tfn = function_name(spec, "forward_truncate")
    common: dict[str, sql.Composable] = {
        "quarantine": names.state(spec, "quarantine"),
        "migration": literal(spec.migration_name),
    }
    row_fn = plpgsql_function(
        fn,
        render(
            "forward_trigger",
            base=names.split(spec, spec.base.table),
            pk=ident(spec.pk),
            sync_function=function_name(spec, "sync"),
            **common,
        ),
    )
    children = [names.split(spec, t) for t in spec.split_tables()]
    trunc_fn = plpgsql_function(tfn, render("forward_truncate_trigger", tables=join(children), **common))
    attach = join(
        [
            render(
                "create_trigger",
                trigger=trigger_name(spec, "forward"),
                events=raw("INSERT OR UPDATE OR DELETE"),
                table=names.source(spec),
                level=raw("ROW"),
                function=fn,
            ),
            render(
                "create_trigger",
                trigger=trigger_name(spec, "forward_truncate"),
                events=raw("TRUNCATE"),
                table=names.source(spec),
                level=raw("STATEMENT"),
                function=tfn,
            ),
        ],
        ";\n",
    )
    return [
        Action("create row sync function (legacy row -> split rows, quarantine on rejection)", sync_function_sql(spec)),
        Action("create forward trigger function (legacy -> split)", row_fn),
        Action("create forward truncate function", trunc_fn),
        # Both triggers in one transaction: the legacy table is never half-synced.
        Action(f"attach forward triggers to {spec.source.table}", attach),
    ]


def drop_forward_actions(spec: Spec) -> list[Action]:
    drops = join(
        [
            sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(trigger_name(spec, "forward"), names.source(spec)),
            sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                trigger_name(spec, "forward_truncate"), names.source(spec)
            ),
        ],
        ";\n",
    )
    return [Action(f"detach forward triggers from {spec.source.table}", drops)]

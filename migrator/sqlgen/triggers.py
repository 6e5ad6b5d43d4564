"""Trigger functions generated from the spec: forward sync (legacy -> split).

The function bodies are composed with psycopg.sql like every other statement, so hostile names in a spec are
quoted identifiers inside the plpgsql too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from psycopg import sql

from migrator.db import VALUE_SETTINGS
from migrator.engine.actions import Action
from migrator.engine.session import MULTI_TABLE_LOCK_TIMEOUT
from migrator.spec import ColumnSpec, Spec, Variant, written
from migrator.sqlgen import names, rules
from migrator.sqlgen.compose import as_text, ident, join, literal, plpgsql_function, raw, render
from migrator.sqlgen.names import function_name, trigger_name
from migrator.sqlgen.views import base_type, meta_to_legacy


def create_trigger(
    spec: Spec, kind: str, events: str, table: sql.Identifier, level: str, function: sql.Identifier
) -> sql.Composed:
    """CREATE TRIGGER <migrator's trigger of this kind> <events> ON table FOR EACH <level> EXECUTE FUNCTION function
    (events and level are our own keywords, never spec text)."""
    return render(
        "create_trigger",
        trigger=trigger_name(spec, kind),
        events=raw(events),
        table=table,
        level=raw(level),
        function=function,
    )


# Meta column types whose JSON form depends on a session setting (arrays of them too); anything not known to be
# independent (a domain, a user type) is treated as depending on all of them.
_SETTING_OF_TYPE = {
    "timestamptz": "TimeZone",
    "timestamp with time zone": "TimeZone",
    "interval": "IntervalStyle",
    "bytea": "bytea_output",
    "real": "extra_float_digits",
    "float4": "extra_float_digits",
    "double precision": "extra_float_digits",
    "float8": "extra_float_digits",
    "float": "extra_float_digits",
}
_SETTING_FREE = frozenset(
    {
        "text",
        "varchar",
        "character varying",
        "char",
        "character",
        "bpchar",
        "smallint",
        "int2",
        "integer",
        "int",
        "int4",
        "bigint",
        "int8",
        "numeric",
        "decimal",
        "boolean",
        "bool",
        "jsonb",
        "json",
        "uuid",
        "date",
        "timestamp",
        "timestamp without time zone",
        "time",
        "time without time zone",
        "inet",
        "cidr",
        "citext",
    }
)


def value_settings(spec: Spec) -> dict[str, str]:
    """The value settings the sync functions pin: those the meta encoding (to_jsonb of each meta column's type)
    depends on. Other columns cross the sync typed, so no setting touches them."""
    needed: set[str] = set()
    for cs in spec.meta.columns.values() if spec.meta else []:
        base = base_type(cs.type)
        if base in _SETTING_OF_TYPE:
            needed.add(_SETTING_OF_TYPE[base])
        elif base not in _SETTING_FREE:
            needed.update(VALUE_SETTINGS)
    return {k: v for k, v in VALUE_SETTINGS.items() if k in needed}


def definer_function(
    spec: Spec,
    function: sql.Identifier,
    body: sql.Composable,
    returns: str = "trigger",
    args: sql.Composable | None = None,
) -> sql.Composed:
    """A generated function of this migration, pinning the value settings its encoding depends on."""
    return plpgsql_function(function, body, returns=returns, args=args, settings=value_settings(spec))


def _new(col: str, row: str = "r") -> sql.Composed:
    return rules.column(row, col)


def _value(col: str, cs: ColumnSpec, row: str = "r") -> sql.Composable:
    """r.col, or coalesce(r.col, default) when the spec fills a missing required value."""
    return rules.filled(_new(col, row), cs)


def _upsert(
    table: sql.Identifier,
    key_cols: list[str],
    key_values: list[sql.Composable],
    cols: list[str],
    values: list[sql.Composable],
    returning: sql.Composable | None = None,
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
        returning=sql.Composed([raw("\n        RETURNING "), returning]) if returning is not None else raw(""),
    )


def _variant_upsert(spec: Spec, v: Variant, row: str) -> sql.Composed:
    """Upsert the variant's child row from the legacy-shaped row `row`."""
    return _upsert(
        names.split(spec, v.table),
        [spec.base.link_column],
        [_new(spec.pk, row)],
        list(written(v.columns)),
        [_value(c, cs, row) for c, cs in written(v.columns).items()],
    )


def _meta_sync(spec: Spec, col: str, row: str, op: str) -> sql.Composed:
    """Upsert or delete the meta row of legacy column `col`, by the NULL-ness of row.col."""
    assert spec.meta is not None
    m = spec.meta
    return render(
        "forward_meta",
        col=ident(col),
        table=names.split(spec, m.table),
        link=ident(spec.base.link_column),
        pk=ident(spec.pk),
        key=ident(m.key_column),
        value=ident(m.value_column),
        name=literal(col),
        row=raw(row),
        op=raw(op),
    )


def forward_sync_body(spec: Spec, row: str = "r", op: str = "p_op", inserted: str | None = None) -> sql.Composed:
    """The statements that make the split rows equal the legacy-shaped row `row` (base first: children
    reference it). `op` names the variable holding INSERT/UPDATE/SYNC: on INSERT there is nothing to delete.
    `inserted` names a boolean variable set true when the base row was missing (inserted, not updated)."""
    pk, link = spec.pk, spec.base.link_column
    rw, opv = raw(row), raw(op)
    stmts: list[sql.Composable] = [
        _upsert(
            names.split(spec, spec.base.table),
            [pk],
            [_new(pk, row)],
            list(written(spec.base.columns)),
            [_value(c, cs, row) for c, cs in written(spec.base.columns).items()],
            returning=raw(f"(xmax = 0) INTO {inserted}") if inserted else None,
        )
    ]
    for v in spec.variants:
        upsert = _variant_upsert(spec, v, row)
        stmts.append(
            render(
                "forward_variant",
                disc=ident(spec.source.discriminator),
                when=literal(v.when),
                upsert=upsert,
                table=names.split(spec, v.table),
                link=ident(link),
                pk=ident(pk),
                row=rw,
                op=opv,
            )
        )
    if spec.meta:
        stmts += [_meta_sync(spec, col, row, op) for col in spec.meta.columns]
    return join(stmts, "\n        ")


# While the forward sync writes the split rows it marks the transaction's origin, so that the reverse triggers
# (on in write_new) do not copy its writes back. Each mark costs two set_config calls per legacy row (about 3% of
# the application's write throughput, measured), so the forward trigger marks only while reverse triggers exist:
# switch-writes replaces it with the marking version before it attaches them.
NO_MARK = raw("NULL;  -- no reverse trigger to tell apart: nothing to mark")


def _marks(mark_origin: bool) -> dict[str, sql.Composable]:
    if not mark_origin:
        return {"mark": NO_MARK, "unmark": NO_MARK}
    return {"mark": render("forward_mark"), "unmark": render("forward_unmark")}


def _origin_decl(mark_origin: bool) -> sql.Composable:
    """The forward trigger's v_origin: the origin to restore after marking (not read at all when not marking)."""
    return raw(
        "v_origin text := pg_catalog.current_setting('migrator.origin', true);" if mark_origin else "v_origin text;"
    )


def _sync_block(spec: Spec, row: str, op: str, source: sql.Composable, mark_origin: bool = True) -> sql.Composed:
    """Sync the legacy-shaped row `row` inside an exception block that quarantines a rejection."""
    return render(
        "forward_sync_block",
        **_marks(mark_origin),
        base=names.split(spec, spec.base.table),
        pk=ident(spec.pk),
        sync=forward_sync_body(spec, row=row, op=op, inserted="v_inserted"),
        quarantine=names.state(spec, "quarantine"),
        migration=literal(spec.migration_name),
        row=raw(row),
        op=raw(op),
        source=source,
    )


def sync_function_sql(spec: Spec) -> sql.Composed:
    """CREATE FUNCTION <state_schema>.<migration>_sync(r <legacy row>, p_op text, p_source text)."""
    args = sql.SQL("r {}, p_op text, p_source text").format(names.source(spec))
    body = render("forward_sync", block=_sync_block(spec, "r", "p_op", raw("p_source")))
    return definer_function(spec, function_name(spec, "sync"), body, returns="void", args=args)


def _changed(values: Sequence[tuple[str, ColumnSpec | None]]) -> sql.Composed:
    """Whether OLD and NEW differ in these columns (with the spec's on_missing defaults applied), compared as
    binary images: any difference counts, and types without an equality operator (json) compare too."""

    def image(row: str) -> sql.Composed:
        vals = [_value(c, cs, row) if cs is not None else _new(c, row) for c, cs in values]
        return sql.Composed([raw("ROW("), join(vals), raw(")::record")])

    return sql.Composed([image("OLD"), raw(" *<> "), image("NEW")])


def forward_update_fast_path(spec: Spec) -> dict[str, sql.Composable]:
    """Slots of forward_trigger for an UPDATE that keeps the key and the discriminator: the base row's update
    (only when its columns changed), then the current variant's child and each meta column, each
    only when its columns changed."""
    pk = spec.pk
    base_cols = list(written(spec.base.columns).items())
    base_update = sql.SQL("UPDATE {} SET ({}) = ROW({}) WHERE {} = NEW.{};").format(
        names.split(spec, spec.base.table),
        join([ident(c) for c, _ in base_cols]),
        join([_value(c, cs, "NEW") for c, cs in base_cols]),
        ident(pk),
        ident(pk),
    )
    changed: list[sql.Composable] = []
    for v in spec.variants:
        if not written(v.columns):
            continue  # nothing to change: the child row came with the base row
        changed.append(
            render(
                "forward_changed_variant",
                disc=ident(spec.source.discriminator),
                when=literal(v.when),
                changed=_changed(list(written(v.columns).items())),
                upsert=_variant_upsert(spec, v, "NEW"),
            )
        )
    if spec.meta:
        for col in spec.meta.columns:
            changed.append(
                render(
                    "forward_changed_meta", changed=_changed([(col, None)]), sync=_meta_sync(spec, col, "NEW", "TG_OP")
                )
            )
    return {
        "disc": ident(spec.source.discriminator),
        "base_changed": _changed(base_cols),
        "base_update": base_update,
        "changed": join(changed, "\n                    ") if changed else raw("NULL;"),
    }


def _forward_common(spec: Spec) -> dict[str, sql.Composable]:
    return {
        "quarantine": names.state(spec, "quarantine"),
        "migration": literal(spec.migration_name),
        "from_split": rules.origin_is("split"),
    }


def forward_function_action(spec: Spec, mark_origin: bool) -> Action:
    """The forward trigger function (legacy row -> split rows); `mark_origin` while reverse triggers exist."""
    body = render(
        "forward_trigger",
        base=names.split(spec, spec.base.table),
        pk=ident(spec.pk),
        full_sync=_sync_block(spec, "NEW", "TG_OP", literal("trigger"), mark_origin),
        **forward_update_fast_path(spec),
        **_forward_common(spec),
        **_marks(mark_origin),
        origin_decl=_origin_decl(mark_origin),
    )
    what = "marking its writes for the reverse triggers" if mark_origin else "no reverse triggers to tell apart"
    return Action(
        f"create forward trigger function (legacy -> split; {what})",
        definer_function(spec, function_name(spec, "forward"), body),
    )


def forward_actions(spec: Spec, mark_origin: bool = False) -> list[Action]:
    """Create the sync and trigger functions, then attach both triggers in one short transaction
    (`mark_origin` where the reverse triggers exist too, as after the rollback from contracted)."""
    fn = function_name(spec, "forward")
    tfn = function_name(spec, "forward_truncate")
    common = _forward_common(spec)
    children = [names.split(spec, t) for t in spec.split_tables()]
    trunc_fn = definer_function(spec, tfn, render("forward_truncate_trigger", tables=join(children), **common))
    attach = join(
        [
            create_trigger(spec, "forward", "AFTER INSERT OR UPDATE OR DELETE", names.source(spec), "ROW", fn),
            create_trigger(spec, "forward_truncate", "AFTER TRUNCATE", names.source(spec), "STATEMENT", tfn),
        ],
        ";\n",
    )
    return [
        Action("create row sync function (legacy row -> split rows, quarantine on rejection)", sync_function_sql(spec)),
        forward_function_action(spec, mark_origin),
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


# -- reverse sync (split -> legacy), on from switch-writes until contract ------------------------------------


def _write_back(spec: Spec, when: str, row_key: str) -> sql.Composed:
    """After a reverse write to legacy row `row_key`: the split rows take back what legacy's own triggers changed
    (the base row and the child row of each variant that has one; meta values are not written back)."""
    targets = [(spec.base.table, spec.pk, written(spec.base.columns))]
    targets += [(v.table, spec.base.link_column, written(v.columns)) for v in spec.variants if written(v.columns)]
    updates = [
        render(
            "reverse_write_back_table",
            split=names.split(spec, table),
            legacy=names.source(spec),
            pk=ident(spec.pk),
            key=ident(key),
            row_key=raw(row_key),
            cols=join([ident(c) for c in columns]),
            legacy_vals=join([rules.filled(rules.column("l", c), cs) for c, cs in columns.items()]),
            split_vals=join([rules.column("s", c) for c in columns]),
        )
        for table, key, columns in targets
    ]
    return render("reverse_write_back", when=raw(when), updates=join(updates, "\n        "))


def _reverse_base(spec: Spec, write_back: bool = False) -> sql.Composed:
    pk = spec.pk
    cols = list(written(spec.base.columns))
    return render(
        "reverse_base",
        write_back=_write_back(spec, "TG_OP IN ('INSERT', 'UPDATE')", "NEW." + as_text(ident(pk)))
        if write_back
        else raw(""),
        from_legacy=rules.origin_is("legacy"),
        legacy=names.source(spec),
        pk=ident(pk),
        all_cols=join([ident(c) for c in [pk, *cols]]),
        new_vals=join([_new(c, "NEW") for c in [pk, *cols]]),
        new_cols=join([_new(c, "NEW") for c in cols]),
        cols=join([ident(c) for c in cols]),
        excluded=join([sql.Composed([raw("EXCLUDED."), ident(c)]) for c in cols]),
    )


def _reverse_variant(spec: Spec, i: int, write_back: bool = False) -> sql.Composed:
    v = spec.variants[i]
    cols = list(written(v.columns))
    link = "coalesce(NEW.{0}, OLD.{0})".format(as_text(ident(spec.base.link_column)))
    back = _write_back(spec, "true", link) if write_back else raw("")
    return render(
        "reverse_variant",
        write_back=back,
        from_legacy=rules.origin_is("legacy"),
        legacy=names.source(spec),
        pk=ident(spec.pk),
        link=ident(spec.base.link_column),
        cols=join([ident(c) for c in cols]),
        nulls=join([raw("NULL")] * len(cols)),
        new_vals=join([_new(c, "NEW") for c in cols]),
    )


def _reverse_meta(spec: Spec, write_back: bool = False) -> sql.Composed:
    assert spec.meta is not None
    m = spec.meta
    key, link, value = ident(m.key_column), ident(spec.base.link_column), ident(m.value_column)
    clears = [
        sql.SQL("WHEN {} THEN UPDATE {} SET {} = NULL WHERE {} = OLD.{};").format(
            literal(c), names.source(spec), ident(c), ident(spec.pk), link
        )
        for c in m.columns
    ]
    assigns = [
        sql.SQL("WHEN {} THEN UPDATE {} SET {} = {} WHERE {} = NEW.{};").format(
            literal(c),
            names.source(spec),
            ident(c),
            meta_to_legacy(sql.Composed([raw("NEW."), value]), cs.type),
            ident(spec.pk),
            link,
        )
        for c, cs in m.columns.items()
    ]
    row_key = "coalesce(NEW.{0}, OLD.{0})".format(as_text(ident(spec.base.link_column)))
    return render(
        "reverse_meta",
        write_back=_write_back(spec, "true", row_key) if write_back else raw(""),
        from_legacy=rules.origin_is("legacy"),
        clear=sql.SQL("CASE OLD.{} {} ELSE NULL; END CASE;").format(key, join(clears, " ")),
        assign=sql.SQL("CASE NEW.{} {} ELSE NULL; END CASE;").format(key, join(assigns, " ")),
    )


def reverse_tables(spec: Spec, write_back: bool = False) -> list[tuple[str, str, sql.Composed]]:
    """(split table, function kind, function body) for each split table; with `write_back`, the base and variant
    functions carry back to the split row what legacy's own BEFORE triggers changed."""
    out = [(spec.base.table, "reverse_base", _reverse_base(spec, write_back))]
    out += [(v.table, f"reverse_v{i}", _reverse_variant(spec, i, write_back)) for i, v in enumerate(spec.variants)]
    if spec.meta:
        out.append((spec.meta.table, "reverse_meta", _reverse_meta(spec, write_back)))
    return out


# side -> the origin that means "our own sync wrote this", which its counter must not count
_COUNTED: dict[str, Literal["legacy", "split"]] = {"legacy": "split", "split": "legacy"}


def _counter_actions(spec: Spec, side: str) -> list[Action]:
    sequence = names.writes_sequence(spec, side)
    return [
        Action(
            f"create the {side}-writes counter (a sequence: counting never blocks a writer)",
            sql.SQL("CREATE SEQUENCE IF NOT EXISTS {}").format(sequence),
        ),
        Action(
            f"create the {side}-writes statement trigger function",
            definer_function(
                spec,
                function_name(spec, f"{side}_writes"),
                render(
                    "writes_counter_trigger",
                    sequence=literal(as_text(sequence)),
                    synced=rules.origin_is(_COUNTED[side]),
                ),
            ),
        ),
    ]


def _counted_tables(spec: Spec) -> list[tuple[str, sql.Identifier]]:
    """(side, table) for each table whose direct writes a counter counts."""
    return [("legacy", names.source(spec)), *(("split", names.split(spec, t)) for t in spec.split_tables())]


def reverse_actions(spec: Spec, write_back: bool = False) -> list[Action]:
    """Functions first, then every reverse trigger and the two write counters in one short transaction (with
    `write_back` when the legacy table has BEFORE row triggers of its own)."""
    acts = [*_counter_actions(spec, "legacy"), *_counter_actions(spec, "split")]
    truncate_body = render("reverse_truncate_trigger", from_legacy=rules.origin_is("legacy"), legacy=names.source(spec))
    acts.append(
        Action(
            f"create reverse truncate function ({spec.base.table} emptied -> {spec.source.table} emptied)",
            definer_function(spec, function_name(spec, "reverse_truncate"), truncate_body),
        )
    )
    attach: list[sql.Composable] = []
    for table, kind, body in reverse_tables(spec, write_back):
        acts.append(
            Action(
                f"create reverse sync function for {table} (split -> legacy)",
                definer_function(spec, function_name(spec, kind), body),
            )
        )
        attach.append(
            create_trigger(
                spec,
                kind,
                "AFTER INSERT OR UPDATE OR DELETE",
                names.split(spec, table),
                "ROW",
                function_name(spec, kind),
            )
        )
    truncate = "reverse_truncate"
    base = names.split(spec, spec.base.table)
    attach.append(create_trigger(spec, truncate, "AFTER TRUNCATE", base, "STATEMENT", function_name(spec, truncate)))
    for side, counted in _counted_tables(spec):
        counter = f"{side}_writes"
        events = "AFTER INSERT OR UPDATE OR DELETE"
        attach.append(create_trigger(spec, counter, events, counted, "STATEMENT", function_name(spec, counter)))
    # All in one transaction: from its commit on, a write on either side reaches the other, and is counted.
    acts.append(
        Action(
            "attach reverse triggers to the split tables and the legacy- and split-writes counters",
            join(attach, ";\n"),
            lock_timeout=MULTI_TABLE_LOCK_TIMEOUT,
        )
    )
    return acts


def drop_reverse_actions(spec: Spec) -> list[Action]:
    drops: list[sql.Composable] = [
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(trigger_name(spec, kind), names.split(spec, table))
        for table, kind, _ in reverse_tables(spec)
    ]
    drops.append(
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
            trigger_name(spec, "reverse_truncate"), names.split(spec, spec.base.table)
        )
    )
    drops += [
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(trigger_name(spec, f"{side}_writes"), table)
        for side, table in _counted_tables(spec)
    ]
    return [
        Action(
            "detach reverse triggers and the write counters",
            join(drops, ";\n"),
            lock_timeout=MULTI_TABLE_LOCK_TIMEOUT,
        )
    ]

"""The one registry of checks: each check's name, what it proves, when it runs, when it does not apply, and how its
statement is built, side by side. Everything else (the report's order, the plan, the runner, the tests that every
validators/*.sql file is registered) reads CHECKS.

Each SQL check is a template in validators/<name>.sql returning failing rows (key, check, detail); a builder fills
it once per table (or variant, meta column, reference) it covers, and the branches are joined by UNION ALL. Every
check's condition holds on a chunk whose hashes match, so the runner runs them only where the hashes differ, except
`references`, whose tables the hash does not cover.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from psycopg import sql

from migrator.spec import ColumnSpec, Spec
from migrator.sqlgen import names, views
from migrator.sqlgen.compose import ident, join, literal, raw, render_validator, validators_dir
from migrator.verify.queries import Queries, Scope, display, qualified, text_compared


class Branches:
    """The statement of one check being built: its template, the slots every template shares, and the scope."""

    def __init__(
        self,
        q: Queries,
        template: str,
        scope: Scope,
        references: Sequence[int] | None,
        quarantine_from_table: bool,
    ) -> None:
        spec = q.spec
        pk, link = spec.pk, spec.base.link_column
        self.q, self.spec, self.template, self.scope = q, spec, template, scope
        self.references = references
        self.quarantine_from_table = quarantine_from_table
        self.slots: dict[str, sql.Composable] = {
            "pk": q.pk,
            "link": q.link,
            "legacy": q.legacy,
            "base": q.base,
            "quarantine": q.quarantine,
            "base_name": q.base_name,
            "legacy_name": q.legacy_name,
            # The scope again on the table a check joins to: a join on the key alone cannot narrow the other
            # side to the range, and with it the planner merges two index ranges instead of probing per row.
            "base_scope": scope.predicate(qualified("b", pk), q.pk_type),
            "legacy_scope": scope.predicate(qualified("l", pk), q.pk_type),
            "child_scope": scope.predicate(qualified("c", link), q.pk_type),
            "meta_scope": scope.predicate(qualified("m", link), q.pk_type),
        }

    def branch(self, scoped: sql.Composable, **more: sql.Composable) -> sql.Composed:
        """The template filled; `scoped` is the key column its {scope} restricts."""
        slots = {**self.slots, **more, "scope": self.scope.predicate(scoped, self.q.pk_type)}
        return render_validator(self.template, **slots)


Builder = Callable[[Branches], list[sql.Composable]]


def _on(alias: str, column: Callable[[Spec], str]) -> Builder:
    """One branch, scoped on `alias`.`column`."""
    return lambda b: [b.branch(qualified(alias, column(b.spec)))]


def _pk(spec: Spec) -> str:
    return spec.pk


def _link(spec: Spec) -> str:
    return spec.base.link_column


def _required_fields(b: Branches) -> list[sql.Composable]:
    spec = b.spec
    tables: list[tuple[str, str, dict[str, ColumnSpec]]] = [(spec.base.table, spec.pk, spec.base.columns)]
    tables += [(v.table, spec.base.link_column, v.columns) for v in spec.variants]
    out: list[sql.Composable] = []
    for table, key, cols in tables:
        required = [c for c, cs in cols.items() if cs.required]
        if required:
            nulls = [
                sql.SQL("CASE WHEN {} IS NULL THEN {} END").format(qualified("c", c), literal(c)) for c in required
            ]
            out.append(
                b.branch(
                    qualified("c", key),
                    key=ident(key),
                    table=names.split(spec, table),
                    table_name=literal(display(spec.target_schema, table)),
                    null_columns=join(nulls),
                    any_null=join([sql.SQL("{} IS NULL").format(qualified("c", c)) for c in required], " OR "),
                )
            )
    return out


def _variants(alias: str, column: Callable[[Spec], str]) -> Builder:
    """One branch per variant, scoped on `alias`.`column`."""

    def build(b: Branches) -> list[sql.Composable]:
        spec = b.spec
        return [
            b.branch(
                qualified(alias, column(spec)),
                variant=names.split(spec, v.table),
                variant_name=literal(display(spec.target_schema, v.table)),
                disc=ident(spec.source.discriminator),
                disc_name=literal(spec.source.discriminator),
                when=literal(v.when),
            )
            for v in spec.variants
        ]

    return build


def _orphans(b: Branches) -> list[sql.Composable]:
    spec = b.spec
    children = [v.table for v in spec.variants] + ([spec.meta.table] if spec.meta else [])
    return [
        b.branch(
            qualified("c", spec.base.link_column),
            child=names.split(spec, table),
            child_name=literal(display(spec.target_schema, table)),
        )
        for table in children
    ]


def _meta_slots(spec: Spec) -> dict[str, sql.Composable]:
    assert spec.meta is not None
    m = spec.meta
    return {
        "meta": names.split(spec, m.table),
        "meta_name": literal(display(spec.target_schema, m.table)),
        "key": ident(m.key_column),
        "value": ident(m.value_column),
    }


def _meta_values(b: Branches) -> list[sql.Composable]:
    spec = b.spec
    if not spec.meta:
        return []
    meta = _meta_slots(spec)
    return [
        b.branch(
            qualified("l", spec.pk),
            column=ident(col),
            column_name=literal(col),
            name=literal(col),
            differs=_meta_value_differs(spec, col, cs),
            **meta,
        )
        for col, cs in spec.meta.columns.items()
    ]


def _meta_value_differs(spec: Spec, col: str, cs: ColumnSpec) -> sql.Composable:
    """Whether the meta row's value is not the legacy value, compared as values of the column's type: JSON that
    spells the same value differently ("P1D" and "1 day", 1.5 and 1.50, another UTC offset) is the same value.
    Types without an equality operator compare as the JSON the trigger writes."""
    assert spec.meta is not None
    value = qualified("m", spec.meta.value_column)
    legacy = qualified("l", col)
    if text_compared(cs.type):
        return sql.SQL("{} IS DISTINCT FROM to_jsonb({})").format(value, legacy)
    return sql.SQL("{} IS DISTINCT FROM CAST({} AS {})").format(
        views.meta_to_legacy(value, cs.type), legacy, raw(cs.type)
    )


def _meta_keys(b: Branches) -> list[sql.Composable]:
    spec = b.spec
    if not spec.meta:
        return []
    listed = join([literal(c) for c in spec.meta.columns])
    return [b.branch(qualified("m", spec.base.link_column), names=listed, **_meta_slots(spec))]


def _references(b: Branches) -> list[sql.Composable]:
    out: list[sql.Composable] = []
    for i, ref in enumerate(b.spec.references):
        if b.references is not None and i not in b.references:
            continue
        column = qualified("r", ref.column)
        out.append(
            b.branch(
                column,
                reference=ident(ref.schema_, ref.table),
                reference_name=literal(f"{display(ref.schema_, ref.table)}.{ref.column}"),
                column=ident(ref.column),
                not_quarantined=b.q.not_quarantined(column, from_table=b.quarantine_from_table),
            )
        )
    return out


def _no_meta(spec: Spec) -> str | None:
    return None if spec.meta else "the spec has no [meta] table"


def _no_references(spec: Spec) -> str | None:
    return None if spec.references else "the spec lists no [[references]]"


def _no_required(spec: Spec) -> str | None:
    return None if any(cs.required for _, _, _, cs in spec.iter_columns()) else "the spec has no required columns"


def _applies(spec: Spec) -> str | None:
    return None


@dataclass(frozen=True)
class CheckDef:
    """One check: `build` fills its validators/ template (None: the row pass, which has no template of its own)."""

    name: str
    description: str
    build: Builder | None
    # Run on every chunk, or only where the chunk hash differs (where it matches the check cannot fail).
    every_chunk: bool = False
    # Why the check does not apply to a spec, or None.
    skip: Callable[[Spec], str | None] = _applies

    def statement(
        self,
        q: Queries,
        scope: Scope,
        references: Sequence[int] | None = None,
        *,
        quarantine_from_table: bool = True,
    ) -> sql.Composed | None:
        """The check over `scope`, or None when the spec gives it nothing to check. `references` limits the
        references check to those [[references]] entries; `quarantine_from_table` see Queries.not_quarantined."""
        if self.build is None:
            return None
        branches = self.build(Branches(q, self.name, scope, references, quarantine_from_table))
        return join(branches, "\nUNION ALL\n") if branches else None


CHECKS: tuple[CheckDef, ...] = (
    CheckDef("row_equality", "each legacy row equals the join of its split rows, column by column", None),
    CheckDef("legacy_missing", "every legacy row has a base row or is in quarantine", _on("l", _pk)),
    CheckDef("split_extra", "no base row without a legacy row", _on("b", _pk)),
    CheckDef(
        "required_fields",
        "required columns of the base and variant tables hold a value",
        _required_fields,
        skip=_no_required,
    ),
    CheckDef("variant_child", "every base row has its child row in the table of its variant", _variants("b", _pk)),
    CheckDef("wrong_variant", "no child row in the table of another variant", _variants("c", _link)),
    CheckDef("orphans", "no variant or meta row without a base row", _orphans),
    CheckDef(
        "meta_values",
        "each meta row holds the legacy value, and exists exactly when it is not NULL",
        _meta_values,
        skip=_no_meta,
    ),
    CheckDef("meta_keys", "no meta row under a key the spec does not list", _meta_keys, skip=_no_meta),
    CheckDef("quarantine_clean", "a quarantined key has no split rows", _on("b", _pk)),
    CheckDef(
        "references",
        "every referencing row points at a base row or a quarantined key (contract re-points these FKs)",
        _references,
        every_chunk=True,
        skip=_no_references,
    ),
)
CHECK_NAMES = tuple(c.name for c in CHECKS)
SQL_CHECKS = tuple(c for c in CHECKS if c.build is not None)
BY_NAME: dict[str, CheckDef] = {c.name: c for c in CHECKS}


def check_files() -> list[str]:
    """The check templates shipped in validators/ (files starting with _ are the engine's own statements)."""
    return sorted(p.stem for p in validators_dir().glob("*.sql") if not p.name.startswith("_"))

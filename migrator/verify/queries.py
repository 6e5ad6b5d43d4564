"""Every statement one validation runs, rendered from the spec (and the catalog's column types): the chunk
boundaries, the chunk hash, the row pass, the quarantine statements. The checks' own statements are built in
checks.py, from the same Queries.

The chunk hash cuts every row into the split rows it implies (base, its variant's child, one per non-NULL meta
value) and sums a hash per part on both sides: the split side is then four range scans without a join, and equal
sums mean the split tables hold exactly the rows the legacy rows imply.

Measured on 1M seeded rows (PostgreSQL 15, legacy side of the whole table): sum of hash_record_extended 0.57 s,
sum of hashtextextended(row::text) 1.12 s, md5(string_agg(row::text ORDER BY key)) 2.99 s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from migrator.spec import ColumnSpec, Spec
from migrator.sqlgen import names, rules, views
from migrator.sqlgen.compose import ident, join, literal, raw, render_validator

# Types without a hash function or an equality operator: compared (and hashed) by their text form.
TEXT_COMPARED_TYPES = frozenset(
    {"json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle", "tsvector", "tsquery"}
)


@dataclass(frozen=True)
class Scope:
    """Which keys a statement looks at: a half-open range [lo, hi) (None = unbounded), or a list of keys."""

    lo: str | None = None
    hi: str | None = None
    keys: tuple[str, ...] | None = None

    def predicate(self, column: sql.Composable, pk_type: sql.Composable) -> sql.Composable:
        if self.keys is not None:
            return sql.SQL("{} = ANY (%(keys)s::text[]::{}[])").format(column, pk_type)
        parts: list[sql.Composable] = []
        if self.lo is not None:
            parts.append(sql.SQL("{} >= %(lo)s::{}").format(column, pk_type))
        if self.hi is not None:
            parts.append(sql.SQL("{} < %(hi)s::{}").format(column, pk_type))
        return join(parts, " AND ") if parts else raw("TRUE")

    def params(self) -> dict[str, Any]:
        if self.keys is not None:
            return {"keys": list(self.keys)}
        return {"lo": self.lo, "hi": self.hi}

    def describe(self) -> str:
        if self.keys is not None:
            return f"{len(self.keys)} key(s)"
        return f"[{self.lo if self.lo is not None else '-inf'}, {self.hi if self.hi is not None else '+inf'})"


def qualified(alias: str, column: str) -> sql.Composed:
    """`"alias"."column"`, both quoted, as every statement of the verifier writes it."""
    return sql.Composed([ident(alias), raw("."), ident(column)])


def display(schema: str, table: str) -> str:
    """A table as a report names it: unqualified in public."""
    return table if schema == "public" else f"{schema}.{table}"


def text_compared(col_type: str) -> bool:
    return col_type.lower().removesuffix("[]").split("(")[0].strip() in TEXT_COMPARED_TYPES


class Queries:
    """Every statement one validation runs, rendered from the spec (and the catalog's column types)."""

    def __init__(self, spec: Spec, cast_columns: frozenset[str] = frozenset(), *, poison: bool = True) -> None:
        self.spec = spec
        # Legacy columns whose type differs from their split column's: cast to the spec type before comparing,
        # because hashes are only equal between equal types (a timestamp is not its timestamptz).
        self.cast_columns = cast_columns
        # Whether the chunk hash needs the poison part (see legacy_parts); not when every required split column is
        # NOT NULL, since then no split row can hold the NULLs of a legacy row the split schema rejects.
        self.poison = poison
        self.pk = ident(spec.pk)
        self.pk_type = raw(spec.source.primary_key_type)
        self.link = ident(spec.base.link_column)
        self.legacy = names.source(spec)
        self.base = names.split(spec, spec.base.table)
        self.quarantine = names.state(spec, "quarantine")
        self.base_name = literal(display(spec.target_schema, spec.base.table))
        self.legacy_name = literal(display(spec.source.schema_, spec.source.table))

    # -- chunking and hashing -------------------------------------------------------------------------------

    def chunk_bound(self, has_lower: bool) -> sql.Composed:
        lower = sql.SQL("l.{} >= %(lo)s::{}").format(self.pk, self.pk_type) if has_lower else raw("TRUE")
        return render_validator("_chunk_bound", pk=self.pk, legacy=self.legacy, lower=lower)

    def _legacy_value(self, col: str, expr: sql.Composable, col_type: str) -> sql.Composable:
        if col in self.cast_columns:
            expr = sql.SQL("CAST({} AS {})").format(expr, raw(col_type))
        return sql.SQL("({})::text").format(expr) if text_compared(col_type) else expr

    @staticmethod
    def _split_value(expr: sql.Composable, col_type: str) -> sql.Composable:
        return sql.SQL("({})::text").format(expr) if text_compared(col_type) else expr

    @staticmethod
    def _hash(fields: Sequence[sql.Composable]) -> sql.Composed:
        return sql.SQL("hash_record_extended(ROW({}), 0)").format(join(fields))

    def legacy_parts(self) -> list[sql.Composable]:
        """The hash of each part of a legacy row l (NULL where the row has no such part): base, variant child,
        one per meta column, and a poison part for a row the split schema must reject."""
        spec = self.spec
        exprs = dict(views.legacy_columns(spec, "l"))
        key = self._legacy_value(spec.pk, qualified("l", spec.pk), spec.source.primary_key_type)
        base = self._hash(
            [
                literal(0),
                key,
                *(self._legacy_value(c, exprs[c], cs.type) for c, cs in spec.stored(spec.base.columns).items()),
            ]
        )
        whens = [
            sql.SQL("WHEN {} THEN {}").format(
                literal(v.when),
                self._hash(
                    [
                        literal(1 + i),
                        key,
                        *(self._legacy_value(c, exprs[c], cs.type) for c, cs in spec.stored(v.columns).items()),
                    ]
                ),
            )
            for i, v in enumerate(spec.variants)
        ]
        parts: list[sql.Composable] = [
            base,
            sql.SQL("CASE {} {} END").format(qualified("l", spec.source.discriminator), join(whens, " ")),
        ]
        if spec.meta:
            for col, cs in spec.meta.columns.items():
                value = self.meta_value_hash(qualified("l", col), cs, legacy=True)
                parts.append(
                    sql.SQL("CASE WHEN {} IS NOT NULL THEN {} END").format(
                        qualified("l", col),
                        self._hash([literal(-1), key, sql.SQL("{}::text").format(literal(col)), value]),
                    )
                )
        if self.poison:
            # A legacy row the split schema must reject but that is not quarantined gets a part no split row can
            # match, so its chunk is examined even if the split side holds the same NULLs.
            poisoned = self._hash([literal(-2), key])
            parts.append(sql.SQL("CASE WHEN {} THEN {} END").format(rules.invalid(spec, "l"), poisoned))
        return parts

    @staticmethod
    def meta_value_hash(value: sql.Composable, cs: ColumnSpec, *, legacy: bool) -> sql.Composed:
        """The hash of a meta value as a value of its column's type (a legacy column's value, or a meta row's
        JSON read back): JSON that spells one value two ways ("P1D" and "1 day", 1.5 and 1.50) hashes the same.
        Types without a hash function hash the JSON the trigger writes."""
        if text_compared(cs.type):
            typed = sql.SQL("to_jsonb({})").format(value) if legacy else value
        elif legacy:
            typed = sql.SQL("CAST({} AS {})").format(value, raw(cs.type))
        else:
            typed = views.meta_to_legacy(value, cs.type)
        return sql.SQL("hash_record_extended(ROW({}), 0)").format(typed)

    def split_parts(self, scope: Scope) -> sql.Composed:
        """The split side's hash parts over `scope`: one range scan per split table, no join."""
        spec = self.spec
        link = spec.base.link_column

        def part(tag: int, table: sql.Identifier, key: str, fields: list[sql.Composable]) -> sql.Composed:
            return render_validator(
                "_hash_part",
                fields=join([literal(tag), qualified("c", key), *fields]),
                table=table,
                scope=scope.predicate(qualified("c", key), self.pk_type),
            )

        def values(columns: dict[str, ColumnSpec]) -> list[sql.Composable]:
            return [self._split_value(qualified("c", c), cs.type) for c, cs in columns.items()]

        # A generated column no split table holds is a function of compared columns: nothing of its own to hash.
        parts = [part(0, self.base, spec.pk, values(spec.stored(spec.base.columns)))]
        for i, v in enumerate(spec.variants):
            parts.append(part(1 + i, names.split(spec, v.table), link, values(spec.stored(v.columns))))
        if spec.meta:
            m = spec.meta
            value = qualified("c", m.value_column)
            by_key = join(
                [
                    sql.SQL("WHEN {} THEN {}").format(literal(col), self.meta_value_hash(value, cs, legacy=False))
                    for col, cs in m.columns.items()
                ],
                " ",
            )
            # A key the spec does not list hashes its JSON: no legacy part can match it.
            typed = sql.SQL("CASE {} {} ELSE hash_record_extended(ROW({}), 0) END").format(
                qualified("c", m.key_column), by_key, value
            )
            parts.append(part(-1, names.split(spec, m.table), link, [qualified("c", m.key_column), typed]))
        return join(parts, "\n                UNION ALL\n                ")

    def not_quarantined(self, key: sql.Composable, *, from_table: bool) -> sql.Composable:
        """True for a key not in open quarantine: read from the table (exact, per row), or from the chunk's
        %(quarantined)s keys read at the start (cheap; a key quarantined since makes a false alarm, which the
        re-check, reading the table, drops)."""
        if from_table:
            return sql.SQL(
                "NOT EXISTS (SELECT 1 FROM {} AS q WHERE q.migration = %(migration)s AND q.key = {}::text "
                "AND q.resolved_at IS NULL)"
            ).format(self.quarantine, key)
        # IS NOT TRUE, not NOT: the planner turns NOT (x = ANY(a)) into x <> ALL(a), which PostgreSQL 14 does not
        # hash; x = ANY(a) it does, so a chunk with thousands of quarantined keys stays linear.
        return sql.SQL("({} = ANY (%(quarantined)s::text[]::{}[])) IS NOT TRUE").format(key, self.pk_type)

    def chunk_hash(self, scope: Scope, *, quarantine_from_table: bool = False) -> sql.Composed:
        pk = qualified("l", self.spec.pk)
        parts = self.legacy_parts()
        # One sum per part rather than one row per part: expressions in a LATERAL VALUES list are compiled again
        # for every row, which made the legacy side five times slower.
        return render_validator(
            "_chunk_hash",
            legacy=self.legacy,
            legacy_parts=join([raw("count(*)"), *(sql.SQL("count({})").format(p) for p in parts[1:])], " + "),
            legacy_hash=join([sql.SQL("coalesce(sum({}), 0)").format(p) for p in parts], "\n                     + "),
            scope=scope.predicate(pk, self.pk_type),
            not_quarantined=self.not_quarantined(pk, from_table=quarantine_from_table),
            split_parts=self.split_parts(scope),
        )

    # -- the row pass --------------------------------------------------------------------------------------------

    def row_diff(self, scope: Scope) -> sql.Composed:
        spec = self.spec
        types = {spec.pk: spec.source.primary_key_type}
        types.update({c: cs.type for _, _, c, cs in spec.iter_columns()})
        differs: list[sql.Composable] = []
        legacy_values: list[sql.Composable] = []
        split_values: list[sql.Composable] = []
        for col in spec.legacy_columns():
            lv = self._legacy_value(col, qualified("l", col), types[col])
            sv = self._split_value(qualified("s", col), types[col])
            differs.append(sql.SQL("({} IS DISTINCT FROM {})").format(lv, sv))
            legacy_values.append(sql.SQL("({})::text").format(lv))
            split_values.append(sql.SQL("({})::text").format(sv))
        return render_validator(
            "_row_diff",
            legacy=views.legacy_normalized(spec),
            split=views.split_as_legacy(spec),
            legacy_scope=scope.predicate(qualified("x", spec.pk), self.pk_type),
            split_scope=scope.predicate(qualified("y", spec.pk), self.pk_type),
            pk=self.pk,
            differs=join(differs),
            any_differs=join(differs, " OR "),
            legacy_values=join(legacy_values),
            split_values=join(split_values),
            quarantine=self.quarantine,
        )

    # -- quarantine ----------------------------------------------------------------------------------------------

    def quarantine_buckets(self) -> sql.Composed:
        return render_validator("_quarantine_buckets", pk_type=self.pk_type, quarantine=self.quarantine)

    def quarantine_summary(self) -> sql.Composed:
        return render_validator("_quarantine_summary", quarantine=self.quarantine)

    def quarantine_references(self, i: int) -> sql.Composed:
        ref = self.spec.references[i]
        return render_validator(
            "_quarantine_references",
            reference=ident(ref.schema_, ref.table),
            column=ident(ref.column),
            pk_type=self.pk_type,
            quarantine=self.quarantine,
        )

    def quarantine_accept(self) -> sql.Composed:
        return render_validator("_quarantine_accept", quarantine=self.quarantine)

    def quarantine_unaccepted(self) -> sql.Composed:
        return render_validator("_quarantine_unaccepted", quarantine=self.quarantine)

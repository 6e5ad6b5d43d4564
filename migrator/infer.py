"""`migrator infer-spec`: propose a spec from the legacy table's catalog and a sample of its rows.

What the catalog says is taken as it stands: every column with its exact type as the server formats it (enums,
domains and arrays of them schema-qualified, since the tool's sessions see pg_catalog only), the single-column
primary key and its type, generated columns with their expression, single-column foreign keys out of the table
(onto base columns) and every foreign key pointing at it (the references contract re-points). What the catalog
cannot say is suggested from the rows: the discriminator is the operator's to name; each other column goes where
its NULL pattern per discriminator value in a sample puts it:

- set (in the sample) for rows of exactly one value: a column of that value's variant, required when it is set
  in at least REQUIRED_SHARE of that value's rows (the rest would be quarantined: the notes say how many);
- set for rows of several values, NOT NULL, generated or the discriminator: a base column;
- set in less than META_SHARE of all sampled rows, or never: a meta column (key/JSONB rows only where set).

The result is a TOML text that parses, with its reasoning in comments; an operator reviews it before `expand`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from migrator import jsonenc
from migrator.errors import BadInputError, TableDoesNotExist
from migrator.spec import Spec, spec_from_toml
from migrator.sqlgen.compose import as_text, ident

DEFAULT_SAMPLE = 10_000
REQUIRED_SHARE = 0.95
META_SHARE = 0.2

_COLUMNS = """
SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
       a.attgenerated::text, CASE WHEN a.attgenerated <> '' THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid) END
  FROM pg_catalog.pg_attribute a
  LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attrelid = pg_catalog.to_regclass(%(table)s) AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum
"""

_PRIMARY_KEY = """
SELECT ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k (attnum, n)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.n)
  FROM pg_catalog.pg_index i
 WHERE i.indrelid = pg_catalog.to_regclass(%(table)s) AND i.indisprimary
"""

# Single-column foreign keys out of the table (onto base columns) and into it (contract re-points those).
_FKS_OUT = """
SELECT a.attname::text, rn.nspname::text, r.relname::text, ra.attname::text, c.confdeltype::text
  FROM pg_catalog.pg_constraint c
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
  JOIN pg_catalog.pg_class r ON r.oid = c.confrelid
  JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
  JOIN pg_catalog.pg_attribute ra ON ra.attrelid = c.confrelid AND ra.attnum = c.confkey[1]
 WHERE c.conrelid = pg_catalog.to_regclass(%(table)s) AND c.contype = 'f' AND pg_catalog.cardinality(c.conkey) = 1
 ORDER BY c.conname
"""

_FKS_IN = """
SELECT n.nspname::text, t.relname::text, a.attname::text
  FROM pg_catalog.pg_constraint c
  JOIN pg_catalog.pg_class t ON t.oid = c.conrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
 WHERE c.confrelid = pg_catalog.to_regclass(%(table)s) AND c.contype = 'f' AND c.conrelid <> c.confrelid
   AND pg_catalog.cardinality(c.conkey) = 1
 ORDER BY n.nspname, t.relname, a.attname
"""

_ON_DELETE = {"a": "no action", "r": "restrict", "c": "cascade", "n": "set null"}


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    not_null: bool
    generated: str | None


@dataclass
class Inferred:
    """The proposed spec: its TOML text, the parsed spec, and the notes an operator should read."""

    text: str
    spec: Spec
    notes: list[str] = field(default_factory=list)
    sampled_rows: int = 0


def split_table_name(name: str) -> tuple[str, str]:
    """`shop.orders` -> ("shop", "orders"); an unqualified name is in public. Quoted parts keep their case."""
    parts = re.findall(r'"((?:[^"]|"")+)"|([^.]+)', name)
    names = [quoted.replace('""', '"') if quoted else bare for quoted, bare in parts]
    if len(names) == 1:
        return "public", names[0]
    if len(names) == 2:
        return names[0], names[1]
    raise BadInputError(f"--table {name!r} is not a table name", hint="write TABLE or SCHEMA.TABLE")


def infer_spec(conn: psycopg.Connection[Any], table: str, discriminator: str, sample: int = DEFAULT_SAMPLE) -> Inferred:
    """Propose a spec for `table` (SCHEMA.TABLE) split by `discriminator`, from the catalog and `sample` rows."""
    schema, name = split_table_name(table)
    legacy = ident(schema, name)
    params = {"table": as_text(legacy)}
    columns = [Column(n, t, bool(nn), expr if gen else None) for n, t, nn, gen, expr in conn.execute(_COLUMNS, params)]
    if not columns:
        raise TableDoesNotExist(f"table {schema}.{name} does not exist", hint="check --table (SCHEMA.TABLE)")
    by_name = {c.name: c for c in columns}
    if discriminator not in by_name:
        raise BadInputError(
            f"{schema}.{name} has no column {discriminator!r}",
            hint=f"--discriminator is one of: {', '.join(by_name)}",
        )
    row = conn.execute(_PRIMARY_KEY, params).fetchone()
    if not row or len(row[0]) != 1:
        raise BadInputError(
            f"{schema}.{name} has no single-column primary key ({row[0] if row else 'none'})",
            hint="the split tables keep the legacy key: give the table a single-column primary key first",
        )
    pk = str(row[0][0])
    if discriminator == pk:
        raise BadInputError("the discriminator cannot be the primary key", hint="name the column that tells kinds")
    return _Inference(conn, schema, name, legacy, columns, pk, discriminator, sample).run()


@dataclass
class _Inference:
    conn: psycopg.Connection[Any]
    schema: str
    table: str
    legacy: sql.Identifier
    columns: list[Column]
    pk: str
    discriminator: str
    sample: int
    notes: list[str] = field(default_factory=list)

    def run(self) -> Inferred:
        others = [c for c in self.columns if c.name not in (self.pk, self.discriminator)]
        counts, rows = self._null_pattern(others)
        values = sorted(counts)
        if not values:
            self.notes.append("the sample holds no row with a discriminator value: no variant could be suggested")
        base: list[tuple[Column, bool]] = [(self._column(self.discriminator), True)]
        variants: dict[str, list[tuple[Column, bool]]] = {v: [] for v in values}
        meta: list[Column] = []
        for c in others:
            set_in = {v: counts[v][1][c.name] for v in values if counts[v][1][c.name] > 0}
            total_set = sum(set_in.values())
            if c.generated is not None or c.not_null:
                base.append((c, c.not_null and c.generated is None))
            elif len(set_in) == 1:
                ((value, n),) = set_in.items()
                share = n / counts[value][0]
                required = share >= REQUIRED_SHARE
                if required and n < counts[value][0]:
                    self.notes.append(
                        f"{c.name}: set in {n} of {counts[value][0]} sampled {value!r} rows; marked required, so "
                        "rows without it go to quarantine (drop `required` to keep them)"
                    )
                variants[value].append((c, required))
            elif rows == 0 or total_set / rows < META_SHARE:
                meta.append(c)
            else:
                base.append((c, False))
        for value, cols in list(variants.items()):
            if not cols:
                self.notes.append(
                    f"discriminator value {value!r} has no column of its own in the sample: it has no variant "
                    "table, so its rows would go to quarantine; give it one (move a column into it)"
                )
                del variants[value]
        if not variants:
            raise BadInputError(
                f"no variant could be suggested for {self.schema}.{self.table} by {self.discriminator!r} "
                f"({'; '.join(self.notes)})",
                hint="check --discriminator, or sample more rows with --sample",
            )
        text = self._render(base, variants, meta, counts, rows)
        spec = spec_from_toml(text, f"<inferred spec for {self.schema}.{self.table}>")
        return Inferred(text, spec, self.notes, rows)

    def _column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def _null_pattern(self, others: list[Column]) -> tuple[dict[str, tuple[int, dict[str, int]]], int]:
        """Per discriminator value in the first `sample` rows (by key): (rows, {column: rows where set})."""
        set_counts = [sql.SQL("count({})").format(ident(c.name)) for c in others]
        query = sql.SQL(
            "SELECT s.{disc}::text, count(*){counts} FROM (SELECT * FROM {legacy} ORDER BY {pk} LIMIT %(n)s) AS s "
            "WHERE s.{disc} IS NOT NULL GROUP BY 1 ORDER BY 1"
        ).format(
            disc=ident(self.discriminator),
            counts=sql.SQL("").join([sql.SQL(", "), sql.SQL(", ").join(set_counts)]) if set_counts else sql.SQL(""),
            legacy=self.legacy,
            pk=ident(self.pk),
        )
        out: dict[str, tuple[int, dict[str, int]]] = {}
        for value, n, *sets in self.conn.execute(query, {"n": self.sample}):
            out[str(value)] = (int(n), {c.name: int(k) for c, k in zip(others, sets, strict=True)})
        return out, sum(n for n, _ in out.values())

    # -- TOML ------------------------------------------------------------------------------------------------

    def _render(
        self,
        base: list[tuple[Column, bool]],
        variants: dict[str, list[tuple[Column, bool]]],
        meta: list[Column],
        counts: dict[str, tuple[int, dict[str, int]]],
        rows: int,
    ) -> str:
        prefix = _slug(self.table)
        pk_type = next(c.type for c in self.columns if c.name == self.pk)
        shares = ", ".join(f"{v} {n}" for v, (n, _) in counts.items())
        lines = [
            f"# Proposed by `migrator infer-spec` from {self.schema}.{self.table}: types, key, generated columns and",
            f"# foreign keys from the catalog; the split from the NULL pattern of {rows} sampled rows ({shares}).",
            "# Review the table names and which columns are required before `migrator expand`.",
            *(f"# note: {n}" for n in self.notes),
            f"name = {_str(prefix + '_split')}",
            "",
            "[source]",
            f"table = {_str(self.table)}",
            f"schema = {_str(self.schema)}",
            f"primary_key = {_str(self.pk)}",
            f"primary_key_type = {_str(pk_type)}",
            f"discriminator = {_str(self.discriminator)}",
            "",
            "[base]",
            f"table = {_str(prefix + '_base')}",
            f"schema = {_str(self.schema)}",
            f"link_column = {_str(self._link_column())}",
            "",
            "[base.columns]",
            *(_column_line(c, required) for c, required in base),
        ]
        base_names = {c.name for c, _ in base}
        for column, ref_schema, ref_table, ref_column, deltype in self.conn.execute(
            _FKS_OUT, {"table": as_text(self.legacy)}
        ):
            if column not in base_names:
                continue
            lines += [
                "",
                "[[base.foreign_keys]]",
                f"column = {_str(column)}",
                f"references = {_str(ref_table)}",
                f"references_schema = {_str(ref_schema)}",
                f"references_column = {_str(ref_column)}",
                f"on_delete = {_str(_ON_DELETE.get(deltype, 'no action'))}",
            ]
        for value, cols in variants.items():
            lines += [
                "",
                "[[variants]]",
                f"when = {_str(value)}",
                f"table = {_str(prefix + '_' + _slug(value))}",
                "[variants.columns]",
                *(_column_line(c, required) for c, required in cols),
            ]
        if meta:
            lines += ["", "[meta]", f"table = {_str(prefix + '_meta')}", "[meta.columns]"]
            lines += [_column_line(c, False) for c in meta]
        for ref_schema, ref_table, ref_column in self.conn.execute(_FKS_IN, {"table": as_text(self.legacy)}):
            lines += [
                "",
                "[[references]]",
                f"table = {_str(ref_table)}",
                f"schema = {_str(ref_schema)}",
                f"column = {_str(ref_column)}",
            ]
        return "\n".join(lines) + "\n"

    def _link_column(self) -> str:
        taken = {c.name for c in self.columns} | {"id", "key", "value"}
        link = f"{_slug(self.table).removesuffix('s')}_id"
        while link in taken:
            link = f"legacy_{link}"
        return link


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return (slug or "t")[:40]


def _str(value: str) -> str:
    # A TOML basic string: JSON's escapes are TOML's (\", \\, \n, \uXXXX).
    return jsonenc.dumps(value, ensure_ascii=False)


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _str(name)


def _column_line(c: Column, required: bool) -> str:
    fields = [f"type = {_str(c.type)}"]
    if required:
        fields.append("required = true")
    if c.generated is not None:
        fields.append(f"generated = {_str(c.generated)}")
    if len(fields) == 1:
        return f"{_key(c.name)} = {_str(c.type)}"
    return f"{_key(c.name)} = {{ {', '.join(fields)} }}"

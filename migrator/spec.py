"""The split spec: which wide table becomes which split tables.

Loaded from TOML and validated by pydantic. Every error names the file, the key path and the fix, because the
person reading it is a DBA at a terminal, not a Python developer reading a stack of validation errors.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from migrator.errors import SpecError

BUILTIN_SPECS = ("projects",)

# A column type is emitted into DDL verbatim (types cannot be quoted as identifiers), so it must match a strict
# grammar: words, an optional (n) or (n,m) modifier, an optional [] — nothing that could end a statement.
# A type name is written into DDL as it stands, so it must be a type name and nothing more: one name (optionally
# schema-qualified, optionally quoted), PostgreSQL's own multi-word names, a type modifier, array brackets. Words
# that would turn it into a column definition (default, references, primary key, generated, collate …) cannot match.
_IDENT = r'(?:[a-z_][a-z0-9_$]*|"(?:[^"]|"")+")'
_TYPMOD = r"(?:\(\s*\d+\s*(?:,\s*\d+\s*)?\))"
_MULTI_WORD = r"(?:double precision|character varying|bit varying|national character varying|national character)"
_TIME = rf"(?:timestamp|time){_TYPMOD}?(?: with(?:out)? time zone)?"
_INTERVAL = (
    r"interval(?: (?:year|month|day|hour|minute)(?: to (?:month|hour|minute|second))?| second)?(?:\(\s*\d+\s*\))?"
)
TYPE_RE = re.compile(
    rf"^(?:{_TIME}|{_INTERVAL}|{_MULTI_WORD}{_TYPMOD}?|{_IDENT}(?:\.{_IDENT})?{_TYPMOD}?)(?:\[\d*\])*$",
    re.IGNORECASE,
)
PG_MAX_IDENT_BYTES = 63

Scalar = str | int | float | bool


def _check_identifier(value: str) -> str:
    # Any character is legal inside a quoted PostgreSQL identifier; what PostgreSQL cannot hold is NUL, and it
    # silently truncates past 63 bytes, which would make two spec names collide without a word.
    if not value:
        raise ValueError("must not be empty")
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    if len(value.encode()) > PG_MAX_IDENT_BYTES:
        raise ValueError(f"is {len(value.encode())} bytes; PostgreSQL identifiers hold at most 63")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DefaultValue(_Model):
    """`on_missing = { default = "" }`: fill a missing required value instead of quarantining the row."""

    default: Scalar


class ColumnSpec(_Model):
    """One column of a split table. `name = "date"` is short for `name = { type = "date" }`.

    `generated` is the expression of a legacy column GENERATED ALWAYS AS (…) STORED, as the catalog renders it
    (`migrator plan --infer-spec` writes it; the spec check compares it with the legacy table's before any DDL).
    The syncs and copies never write such a column. When every column its expression uses lands in the table that
    lists it, the split table gets the same generated column; otherwise it is computed where the split side is read
    as legacy rows (the compatibility view, validation)."""

    type: str
    required: bool = False
    on_missing: Literal["quarantine"] | DefaultValue = "quarantine"
    generated: str | None = None

    @field_validator("generated")
    @classmethod
    def _expression(cls, v: str | None) -> str | None:
        # Written into DDL and views as it stands: one expression, nothing that could end a statement or a comment.
        if v is not None and (not v.strip() or ";" in _without_literals(v) or "--" in v or "/*" in v):
            raise ValueError(f"{v!r} is not one expression; copy the legacy column's GENERATED ALWAYS AS (…) text")
        return v

    @field_validator("type")
    @classmethod
    def _type_grammar(cls, v: str) -> str:
        v = " ".join(v.split())
        if not TYPE_RE.match(v):
            raise ValueError(
                f"{v!r} is not a type name; write e.g. 'text', 'varchar(50)', 'numeric(10,2)', 'uuid[]', "
                "'shop.order_kind' (constraints and defaults come from the legacy table, not the spec)"
            )
        return v


def _without_literals(expr: str) -> str:
    return re.sub(r"'(?:[^']|'')*'", "''", expr)


_EXPR_IDENT = re.compile(r'"((?:[^"]|"")+)"|\b([A-Za-z_][A-Za-z0-9_$]*)\b')


def expression_columns(expr: str, candidates: Iterable[str]) -> set[str]:
    """The candidate column names an expression mentions (quoted names exactly, others folded to lower case);
    string literals are skipped. A function name equal to a column name counts too, which only errs towards
    computing the column in the view."""
    found: set[str] = set()
    for quoted, bare in _EXPR_IDENT.findall(_without_literals(expr)):
        found.add(quoted.replace('""', '"') if quoted else bare.lower())
    return found & set(candidates)


def _column_shorthand(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ({"type": c} if isinstance(c, str) else c) for k, c in value.items()}
    return value


Columns = Annotated[dict[str, ColumnSpec], BeforeValidator(_column_shorthand)]


def written(columns: dict[str, ColumnSpec]) -> dict[str, ColumnSpec]:
    """The columns a sync or copy writes: every listed column but the generated ones."""
    return {c: cs for c, cs in columns.items() if cs.generated is None}


class Source(_Model):
    """The legacy wide table."""

    table: str
    schema_: str = Field("public", alias="schema")
    primary_key: str = "id"
    primary_key_type: str = "bigint"
    discriminator: str

    @field_validator("primary_key_type")
    @classmethod
    def _pk_type(cls, v: str) -> str:
        return ColumnSpec(type=v).type


class ForeignKey(_Model):
    """A foreign key from a base column to another (existing) table."""

    column: str
    references: str
    references_column: str = "id"
    references_schema: str = "public"
    on_delete: Literal["no action", "restrict", "cascade", "set null"] = "no action"


class Base(_Model):
    """The base table: the primary key, the discriminator and every column all variants share."""

    table: str
    schema_: str = Field("public", alias="schema")
    link_column: str = "project_id"
    columns: Columns
    foreign_keys: list[ForeignKey] = []


class Variant(_Model):
    """One child table, holding the columns of rows whose discriminator equals `when`."""

    when: str
    table: str
    columns: Columns


class Meta(_Model):
    """Key/JSONB rows: each listed legacy column becomes a (key, value) row when it is not NULL."""

    table: str
    id_column: str = "id"
    key_column: str = "key"
    value_column: str = "value"
    columns: Columns


class Index(_Model):
    """A secondary index on a split table, built CONCURRENTLY: by expand when it enforces something (unique)
    or covers a foreign key of the base table; otherwise by the backfill once the rows are in (`build`
    overrides), so the bulk copy and the dual-write triggers do not maintain an index no reader uses yet."""

    table: str
    columns: list[str] = Field(min_length=1)
    method: Literal["btree", "gin", "gist", "brin", "hash"] = "btree"
    unique: bool = False
    where: dict[str, Scalar | None] | None = None
    name: str | None = None
    build: Literal["expand", "backfill"] | None = None


class Reference(_Model):
    """A table whose foreign key points at the legacy table; contract re-points it at the base table."""

    table: str
    column: str
    schema_: str = Field("public", alias="schema")


class HookSettings(_Model):
    """`[hooks]`: the event hooks every command of this spec runs (`--hook-dir` and `--hook-timeout` win)."""

    dir: str = Field(min_length=1)  # relative to the spec file's directory
    timeout: float = Field(default=30.0, gt=0, le=3600)


class Spec(_Model):
    """A whole split: source, base, variants, meta, indexes and references."""

    name: str | None = None
    state_schema: str = "migrator"
    source: Source
    base: Base
    variants: list[Variant] = Field(min_length=1)
    meta: Meta | None = None
    indexes: list[Index] = []
    references: list[Reference] = []
    hooks: HookSettings | None = None

    # -- derived views used by the SQL renderers ------------------------------------------------------------

    @property
    def migration_name(self) -> str:
        return self.name or f"{self.source.table}_split"

    @property
    def pk(self) -> str:
        return self.source.primary_key

    @property
    def target_schema(self) -> str:
        return self.base.schema_

    def split_tables(self) -> list[str]:
        tables = [self.base.table, *(v.table for v in self.variants)]
        if self.meta:
            tables.append(self.meta.table)
        return tables

    def index_phase(self, i: int) -> str:
        """ "expand" or "backfill": which command builds indexes[i]."""
        ix = self.indexes[i]
        if ix.build:
            return ix.build
        fk_columns = {fk.column for fk in self.base.foreign_keys}
        if ix.unique or (ix.table == self.base.table and ix.columns[0] in fk_columns):
            return "expand"
        return "backfill"

    def legacy_columns(self) -> list[str]:
        """Every legacy column the split covers, primary key first, in a stable order."""
        cols = [self.pk, *self.base.columns]
        for v in self.variants:
            cols.extend(c for c in v.columns if c not in cols)
        if self.meta:
            cols.extend(self.meta.columns)
        return cols

    def written_legacy_columns(self) -> list[str]:
        """legacy_columns() without the generated ones: what the syncs and copies write to legacy."""
        generated = {c for _, _, c, cs in self.iter_columns() if cs.generated is not None}
        return [c for c in self.legacy_columns() if c not in generated]

    def computed(self) -> dict[str, str]:
        """Generated columns that no split table can hold (their expression uses columns of another table or of
        the meta table): column -> expression, computed where the split side is read as legacy rows."""
        out = {}
        tables = [(self.base.columns, {self.pk, *self.base.columns})]
        tables += [(v.columns, set(v.columns)) for v in self.variants]
        every = self.legacy_columns()
        for columns, home in tables:
            for col, cs in columns.items():
                if cs.generated is not None and not expression_columns(cs.generated, every) <= home - {col}:
                    out[col] = cs.generated
        return out

    def stored(self, columns: dict[str, ColumnSpec]) -> dict[str, ColumnSpec]:
        """A split table's listed columns that it holds (all but the computed generated ones)."""
        computed = self.computed()
        return {c: cs for c, cs in columns.items() if c not in computed}

    def iter_columns(self) -> Iterator[tuple[str, str, str, ColumnSpec]]:
        """(path, table, column, spec) for every non-key column of every split table."""
        for col, cs in self.base.columns.items():
            yield f"base.columns.{col}", self.base.table, col, cs
        for i, v in enumerate(self.variants):
            for col, cs in v.columns.items():
                yield f"variants[{i}].columns.{col}", v.table, col, cs
        if self.meta:
            for col, cs in self.meta.columns.items():
                yield f"meta.columns.{col}", self.meta.table, col, cs


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    fix: str


def _identifier_problems(spec: Spec) -> Iterator[Problem]:
    names: list[tuple[str, str | None]] = [
        ("name", spec.name),
        ("state_schema", spec.state_schema),
        ("source.table", spec.source.table),
        ("source.schema", spec.source.schema_),
        ("source.primary_key", spec.pk),
        ("source.discriminator", spec.source.discriminator),
        ("base.table", spec.base.table),
        ("base.schema", spec.base.schema_),
        ("base.link_column", spec.base.link_column),
    ]
    names += [(f"variants[{i}].table", v.table) for i, v in enumerate(spec.variants)]
    names += [(path, col) for path, _, col, _ in spec.iter_columns()]
    names += [(f"base.foreign_keys[{i}].references", fk.references) for i, fk in enumerate(spec.base.foreign_keys)]
    if spec.meta:
        names += [
            ("meta.table", spec.meta.table),
            ("meta.id_column", spec.meta.id_column),
            ("meta.key_column", spec.meta.key_column),
            ("meta.value_column", spec.meta.value_column),
        ]
    names += [(f"references[{i}].table", r.table) for i, r in enumerate(spec.references)]
    names += [(f"references[{i}].column", r.column) for i, r in enumerate(spec.references)]
    names += [(f"indexes[{i}].name", ix.name) for i, ix in enumerate(spec.indexes)]
    for path, value in names:
        if value is None:
            continue
        try:
            _check_identifier(value)
        except ValueError as exc:
            yield Problem(path, f"identifier {value!r} {exc}", "use a shorter name without NUL characters")


def _structure_problems(spec: Spec) -> Iterator[Problem]:  # noqa: PLR0912 — one flat list of checks reads best
    base_cols = spec.base.columns
    if spec.source.discriminator not in base_cols:
        yield Problem(
            "source.discriminator",
            f"discriminator {spec.source.discriminator!r} is not a base column",
            f"add {spec.source.discriminator} to [base.columns]",
        )
    seen_cols: dict[str, str] = {}
    for path, _, col, _ in spec.iter_columns():
        if col in (spec.pk, spec.base.link_column):
            yield Problem(path, f"column {col!r} is the key of the split tables", "remove it from the columns")
        if col in seen_cols:
            yield Problem(path, f"column {col!r} is already listed at {seen_cols[col]}", "keep it in one place")
        else:
            seen_cols[col] = path
    seen_when: dict[str, int] = {}
    seen_tables: dict[str, str] = (
        {spec.source.table: "source.table"} if spec.source.schema_ == spec.base.schema_ else {}
    )
    tables = [("base.table", spec.base.table)] + [
        (f"variants[{i}].table", v.table) for i, v in enumerate(spec.variants)
    ]
    if spec.meta:
        tables.append(("meta.table", spec.meta.table))
    for path, table in tables:
        if table in seen_tables:
            yield Problem(
                path, f"table {table!r} is already used by {seen_tables[table]}", "give each table its own name"
            )
        else:
            seen_tables[table] = path
    for i, v in enumerate(spec.variants):
        if v.when in seen_when:
            yield Problem(
                f"variants[{i}].when",
                f"discriminator value {v.when!r} is used by variants[{seen_when[v.when]}] too",
                "give each variant its own `when`",
            )
        else:
            seen_when[v.when] = i
        if not v.columns:
            yield Problem(f"variants[{i}].columns", "a variant needs at least one column", "list its columns")
    if spec.meta:
        m = spec.meta
        meta_names = {m.id_column, m.key_column, m.value_column, spec.base.link_column}
        if len(meta_names) != 4:
            yield Problem("meta", "id_column, key_column, value_column and base.link_column must differ", "rename one")
        for col, cs in m.columns.items():
            if cs.required:
                yield Problem(f"meta.columns.{col}", "meta columns cannot be required", "drop `required`")
            if cs.generated is not None:
                yield Problem(
                    f"meta.columns.{col}", "a generated column cannot be a meta column", "list it in [base.columns]"
                )
    for path, _, col, cs in spec.iter_columns():
        if cs.generated is not None and cs.required:
            yield Problem(path, f"generated column {col!r} cannot be required", "drop `required`")
        if cs.generated is not None and col == spec.source.discriminator:
            yield Problem(path, "the discriminator cannot be a generated column", "choose another discriminator")
    for i, fk in enumerate(spec.base.foreign_keys):
        if fk.column not in base_cols:
            yield Problem(
                f"base.foreign_keys[{i}].column", f"{fk.column!r} is not a base column", "add it to [base.columns]"
            )
    table_cols = split_table_columns(spec)
    for i, ix in enumerate(spec.indexes):
        if ix.table not in table_cols:
            yield Problem(
                f"indexes[{i}].table",
                f"{ix.table!r} is not a split table",
                f"use one of: {', '.join(sorted(table_cols))}",
            )
            continue
        for col in [*ix.columns, *(ix.where or {})]:
            if col not in table_cols[ix.table]:
                yield Problem(f"indexes[{i}]", f"{ix.table} has no column {col!r}", "fix the column name")


def split_table_columns(spec: Spec) -> dict[str, set[str]]:
    """Every split table's full column set, keys included."""
    out = {spec.base.table: {spec.pk, *spec.stored(spec.base.columns)}}
    for v in spec.variants:
        out[v.table] = {spec.base.link_column, *spec.stored(v.columns)}
    if spec.meta:
        m = spec.meta
        out[m.table] = {m.id_column, spec.base.link_column, m.key_column, m.value_column}
    return out


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("function-after[_type_grammar()]",) or str(part).startswith(("function-", "str", "json-or")):
            continue
        else:
            path += f".{part}" if path else str(part)
    return path.replace("schema_", "schema")


def _pydantic_problems(exc: ValidationError) -> Iterator[Problem]:
    for err in exc.errors():
        path = _key_path(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            yield Problem(path, f"unknown key {path.rsplit('.', 1)[-1]!r}", "remove it or check its spelling")
        elif kind == "missing":
            yield Problem(path, "required key is missing", f"add `{path.rsplit('.', 1)[-1]} = …`")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            yield Problem(path, msg, "see the spec reference in README.md")


def parse_spec(data: dict[str, Any], origin: str) -> Spec:
    """Validate a decoded TOML document; raise SpecError listing every problem found."""
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise _spec_error(origin, list(_pydantic_problems(exc))) from None
    problems = [*_identifier_problems(spec), *_structure_problems(spec)]
    if problems:
        raise _spec_error(origin, problems)
    return spec


def _spec_error(origin: str, problems: list[Problem]) -> SpecError:
    first, *rest = problems
    lines = [f"{origin}: {first.path}: {first.message} — fix: {first.fix}"]
    lines += [f"{origin}: {p.path}: {p.message} — fix: {p.fix}" for p in rest]
    return SpecError("\n".join(lines))


def load_spec(path: str | Path | None = None) -> Spec:
    """Load a spec file, or a built-in spec by name (`projects`), or the default when None."""
    if path is None or str(path) in BUILTIN_SPECS:
        name = str(path or "projects")
        text = resources.files("migrator.specs").joinpath(f"{name}.toml").read_text()
        origin = f"<built-in spec {name}>"
    else:
        p = Path(path)
        origin = str(p)
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise SpecError(f"{origin}: spec file not found", hint="pass --spec with an existing TOML file") from None
        except OSError as exc:
            raise SpecError(f"{origin}: cannot read spec: {exc.strerror}") from None
    return spec_from_toml(text, origin)


def spec_from_toml(text: str, origin: str = "<spec>") -> Spec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{origin}: not valid TOML: {exc}", hint="fix the TOML syntax") from None
    return parse_spec(data, origin)

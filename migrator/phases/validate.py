"""validate (backfilled -> validated): row-level proof that the split tables hold exactly the legacy rows.

Two things are compared, per key range (DESIGN.md §Validation):
- Row equality: each legacy row (views.legacy_normalized) against the join of its split rows
  (views.split_as_legacy). A hash per chunk first; the rows of a chunk only when its hashes differ; then the
  columns that differ, with both values.
- The checks in validators/*.sql, one file per check, each returning failing rows (key, check, detail).

The chunk hash cuts every row into the split rows it implies (base, its variant's child, one per non-NULL meta
value) and sums a hash per part on both sides: the split side is then four range scans without a join, and equal
sums mean the split tables hold exactly the rows the legacy rows imply. Every check's condition holds on such a
range, so the checks run only where the hashes differ — except `references`, whose tables the hash does not
cover, which runs on every chunk.

Concurrency: the application writes while this runs. Both sides of a chunk are read in one REPEATABLE READ
transaction (one snapshot), and the forward triggers change legacy and split rows in one transaction, so a chunk
never sees half a write. Every failure found is re-checked once more in a fresh snapshot and dropped when it is
gone, so rows that changed between the hash and the row pass are not reported.

Measured on 1M seeded rows (PostgreSQL 15, legacy side of the whole table): sum of hash_record_extended 0.57 s,
sum of hashtextextended(row::text) 1.12 s, md5(string_agg(row::text ORDER BY key)) 2.99 s.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql

from migrator import state
from migrator.sqlgen import names, views
from migrator.engine import retry
from migrator.db import Database
from migrator.errors import GuardFailed, TableDoesNotExist, WrongState
from migrator.phases.base import Action, Context, NullReporter, Query, RateLimiter, Report, Reporter
from migrator.reports import JUnitCase, write_json, write_junit
from migrator.spec import ColumnSpec, Spec
from migrator.sqlgen.compose import as_text, ident, join, literal, raw, render_validator, validators_dir

name = "validate"

# Validation is read-only, so it may run as the guard of every later phase; `apply` moves the state only from
# backfilled. In dual_write the backfill may not be done, and after contract there is no legacy table to compare.
ALLOWED_STATES = ("backfilled", "validated", "read_new", "write_new")

DEFAULT_CHUNK_ROWS = 50_000
DEFAULT_WORKERS = 2
MAX_FAILURES = 100_000  # failures kept per check (the counts stay exact); bounds memory on a badly broken table
RECHECK_BATCH = 5_000
VALUE_WIDTH = 120  # characters of a value shown in a report
LOCK_TIMEOUT = 5.0  # a chunk waits this long behind DDL before it retries, rather than queue the app behind it
STATEMENT_TIMEOUT = 600.0

# Types without a hash function or an equality operator: compared (and hashed) by their text form.
TEXT_COMPARED_TYPES = frozenset(
    {"json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle", "tsvector", "tsquery"}
)


# -- results ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """One failing row of one check."""

    key: str
    check: str
    detail: str


@dataclass(frozen=True)
class ColumnDiff:
    column: str
    legacy: str | None
    split: str | None


@dataclass(frozen=True)
class RowDiff:
    """A key on which legacy_normalized and split_as_legacy disagree."""

    key: str
    kind: Literal["differs", "missing_in_split", "extra_in_split"]
    columns: tuple[ColumnDiff, ...] = ()

    def describe(self) -> str:
        if self.kind == "missing_in_split":
            return "the legacy row has no split rows"
        if self.kind == "extra_in_split":
            return "split rows with no legacy row"
        return "; ".join(f"{c.column}: legacy {_shown(c.legacy)} != split {_shown(c.split)}" for c in self.columns)


@dataclass
class CheckResult:
    """What one check found: every failing key (up to MAX_FAILURES), and the exact count."""

    name: str
    description: str
    count: int = 0
    failures: list[Failure] = field(default_factory=list)
    skipped: str | None = None  # why the check does not apply to this spec
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.count == 0

    def add(self, failure: Failure) -> None:
        self.count += 1
        if len(self.failures) < MAX_FAILURES:
            self.failures.append(failure)


@dataclass
class QuarantineSummary:
    """The open quarantine: rows the split schema rejected, excluded from equality and reported here."""

    open: int = 0
    accepted: int = 0
    by_sqlstate: dict[str, int] = field(default_factory=dict)
    sample: list[dict[str, Any]] = field(default_factory=list)
    # "table.column" -> rows of a referencing table pointing at quarantined keys: they block contract.
    referenced_by: dict[str, int] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list, repr=False)

    @property
    def unaccepted(self) -> int:
        return self.open - self.accepted

    def as_dict(self) -> dict[str, Any]:
        return {
            "open": self.open,
            "accepted": self.accepted,
            "by_sqlstate": self.by_sqlstate,
            "referenced_by": self.referenced_by,
            "sample": self.sample,
        }


@dataclass
class ValidationResult:
    """Everything one validation found; `ok` when no check failed (the quarantine is judged by the caller)."""

    migration: str
    state: str
    checks: list[CheckResult]
    row_diffs: list[RowDiff] = field(default_factory=list)
    quarantine: QuarantineSummary = field(default_factory=QuarantineSummary)
    rows: int = 0
    chunks: int = 0
    mismatched_chunks: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def mismatches(self) -> int:
        return sum(c.count for c in self.checks)

    def check(self, check_name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == check_name)

    def failing_keys(self) -> set[str]:
        return {f.key for c in self.checks for f in c.failures}

    def summary(self) -> str:
        """One line for a terminal or a CI log."""
        head = f"{self.rows:,} rows in {self.chunks} chunk(s), {self.seconds:.1f} s"
        quarantine = f"; {self.quarantine.open:,} quarantined" if self.quarantine.open else ""
        if self.ok:
            return f"validation passed: {head}, 0 mismatches{quarantine}"
        failed = ", ".join(f"{c.name} {c.count:,}" for c in self.checks if c.count)
        first = next(f for c in self.checks for f in c.failures)
        return (
            f"validation failed: {self.mismatches:,} mismatch(es) ({failed}) in {head}{quarantine}; "
            f"first: {first.check} {first.key}: {_clip(first.detail, 160)}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "migration": self.migration,
            "state": self.state,
            "ok": self.ok,
            "rows": self.rows,
            "chunks": self.chunks,
            "mismatched_chunks": self.mismatched_chunks,
            "seconds": round(self.seconds, 3),
            "mismatches": self.mismatches,
            "counts": {c.name: c.count for c in self.checks},
            "checks": [
                {
                    "name": c.name,
                    "description": c.description,
                    "ok": c.ok,
                    "count": c.count,
                    "skipped": c.skipped,
                    "seconds": round(c.seconds, 3),
                    "failures": [{"key": f.key, "detail": f.detail} for f in c.failures],
                    "truncated": c.count > len(c.failures),
                }
                for c in self.checks
            ],
            "row_diffs": [
                {
                    "key": d.key,
                    "kind": d.kind,
                    "columns": [{"column": c.column, "legacy": c.legacy, "split": c.split} for c in d.columns],
                }
                for d in self.row_diffs
            ],
            "quarantine": self.quarantine.as_dict(),
            "notes": self.notes,
        }

    def junit_cases(self, classname: str = "migrator.validate") -> list[JUnitCase]:
        cases = []
        for c in self.checks:
            lines = [f"{f.key}: {f.detail}" for f in c.failures]
            cases.append(
                JUnitCase(
                    name=c.name,
                    classname=classname,
                    seconds=c.seconds,
                    failure=None if c.ok else f"{c.count:,} failing row(s): {c.description}",
                    failure_lines=lines,
                    failure_count=c.count,
                    skipped=c.skipped,
                    output=f"{c.description}; {c.count:,} failing",
                )
            )
        return cases

    @property
    def suite_name(self) -> str:
        return f"migrator validate {self.migration}"


class ValidationFailed(GuardFailed):
    """Validation found mismatches (exit 1); `result` holds every one of them."""

    def __init__(self, result: ValidationResult, *, hint: str | None = None) -> None:
        super().__init__(result.summary(), hint=hint)
        self.result = result


def _clip(text: str, width: int = VALUE_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _shown(value: str | None) -> str:
    return "NULL" if value is None else repr(_clip(value))


# -- the checks -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckDef:
    name: str
    description: str
    # Run on every chunk, or only where the chunk hash differs (where it matches the check cannot fail).
    every_chunk: bool = False


CHECKS: tuple[CheckDef, ...] = (
    CheckDef("row_equality", "each legacy row equals the join of its split rows, column by column"),
    CheckDef("legacy_missing", "every legacy row has a base row or is in quarantine"),
    CheckDef("split_extra", "no base row without a legacy row"),
    CheckDef("required_fields", "required columns of the base and variant tables hold a value"),
    CheckDef("variant_child", "every base row has its child row in the table of its variant"),
    CheckDef("wrong_variant", "no child row in the table of another variant"),
    CheckDef("orphans", "no variant or meta row without a base row"),
    CheckDef("meta_values", "each meta row holds the legacy value, and exists exactly when it is not NULL"),
    CheckDef("meta_keys", "no meta row under a key the spec does not list"),
    CheckDef("quarantine_clean", "a quarantined key has no split rows"),
    CheckDef(
        "references",
        "every referencing row points at a base row or a quarantined key (contract re-points these FKs)",
        every_chunk=True,
    ),
)
CHECK_NAMES = tuple(c.name for c in CHECKS)
SQL_CHECKS = tuple(c for c in CHECKS if c.name != "row_equality")


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


def _q(alias: str, column: str) -> sql.Composed:
    return sql.Composed([ident(alias), raw("."), ident(column)])


def _display(schema: str, table: str) -> str:
    return table if schema == "public" else f"{schema}.{table}"


def _text_compared(col_type: str) -> bool:
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
        self.base_name = literal(_display(spec.target_schema, spec.base.table))
        self.legacy_name = literal(_display(spec.source.schema_, spec.source.table))

    # -- chunking and hashing -------------------------------------------------------------------------------

    def chunk_bound(self, has_lower: bool) -> sql.Composed:
        lower = sql.SQL("l.{} >= %(lo)s::{}").format(self.pk, self.pk_type) if has_lower else raw("TRUE")
        return render_validator("_chunk_bound", pk=self.pk, legacy=self.legacy, lower=lower)

    def _legacy_value(self, col: str, expr: sql.Composable, col_type: str) -> sql.Composable:
        if col in self.cast_columns:
            expr = sql.SQL("CAST({} AS {})").format(expr, raw(col_type))
        return sql.SQL("({})::text").format(expr) if _text_compared(col_type) else expr

    @staticmethod
    def _split_value(expr: sql.Composable, col_type: str) -> sql.Composable:
        return sql.SQL("({})::text").format(expr) if _text_compared(col_type) else expr

    @staticmethod
    def _hash(fields: Sequence[sql.Composable]) -> sql.Composed:
        return sql.SQL("hash_record_extended(ROW({}), 0)").format(join(fields))

    def legacy_parts(self) -> list[sql.Composable]:
        """The hash of each part of a legacy row l (NULL where the row has no such part): base, variant child,
        one per meta column, and a poison part for a row the split schema must reject."""
        spec = self.spec
        exprs = dict(views.legacy_columns(spec, "l"))
        key = self._legacy_value(spec.pk, _q("l", spec.pk), spec.source.primary_key_type)
        base = self._hash(
            [literal(0), key, *(self._legacy_value(c, exprs[c], cs.type) for c, cs in spec.base.columns.items())]
        )
        whens = [
            sql.SQL("WHEN {} THEN {}").format(
                literal(v.when),
                self._hash(
                    [
                        literal(1 + i),
                        key,
                        *(self._legacy_value(c, exprs[c], cs.type) for c, cs in v.columns.items()),
                    ]
                ),
            )
            for i, v in enumerate(spec.variants)
        ]
        parts: list[sql.Composable] = [
            base,
            sql.SQL("CASE {} {} END").format(_q("l", spec.source.discriminator), join(whens, " ")),
        ]
        if spec.meta:
            for col in spec.meta.columns:
                # to_jsonb of the legacy value, exactly what the trigger stores in the meta row.
                value = sql.SQL("to_jsonb({})").format(_q("l", col))
                parts.append(
                    sql.SQL("CASE WHEN {} IS NOT NULL THEN {} END").format(
                        _q("l", col), self._hash([literal(-1), key, sql.SQL("{}::text").format(literal(col)), value])
                    )
                )
        if self.poison:
            # A legacy row the split schema must reject but that is not quarantined gets a part no split row can
            # match, so its chunk is examined even if the split side holds the same NULLs.
            parts.append(sql.SQL("CASE WHEN {} THEN {} END").format(self.invalid(), self._hash([literal(-2), key])))
        return parts

    def invalid(self) -> sql.Composed:
        """True for a legacy row l the split schema rejects: a missing required value, an unknown variant."""
        spec = self.spec
        disc = _q("l", spec.source.discriminator)
        conds: list[sql.Composable] = [
            sql.SQL("{} IS NULL").format(disc),
            sql.SQL("{} NOT IN ({})").format(disc, join([literal(v.when) for v in spec.variants])),
        ]
        for col, cs in spec.base.columns.items():
            if cs.required and isinstance(cs.on_missing, str):
                conds.append(sql.SQL("{} IS NULL").format(_q("l", col)))
        for v in spec.variants:
            for col, cs in v.columns.items():
                if cs.required and isinstance(cs.on_missing, str):
                    conds.append(sql.SQL("({} = {} AND {} IS NULL)").format(disc, literal(v.when), _q("l", col)))
        return sql.Composed([raw("("), join(conds, " OR "), raw(")")])

    def split_parts(self, scope: Scope) -> sql.Composed:
        spec = self.spec
        parts = [
            render_validator(
                "_hash_part",
                fields=join(
                    [
                        literal(0),
                        _q("c", spec.pk),
                        *(self._split_value(_q("c", c), cs.type) for c, cs in spec.base.columns.items()),
                    ]
                ),
                table=self.base,
                scope=scope.predicate(_q("c", spec.pk), self.pk_type),
            )
        ]
        link = spec.base.link_column
        for i, v in enumerate(spec.variants):
            fields = [
                literal(1 + i),
                _q("c", link),
                *(self._split_value(_q("c", c), cs.type) for c, cs in v.columns.items()),
            ]
            parts.append(
                render_validator(
                    "_hash_part",
                    fields=join(fields),
                    table=names.split(spec, v.table),
                    scope=scope.predicate(_q("c", link), self.pk_type),
                )
            )
        if spec.meta:
            m = spec.meta
            fields = [literal(-1), _q("c", link), _q("c", m.key_column), _q("c", m.value_column)]
            parts.append(
                render_validator(
                    "_hash_part",
                    fields=join(fields),
                    table=names.split(spec, m.table),
                    scope=scope.predicate(_q("c", link), self.pk_type),
                )
            )
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
        pk = _q("l", self.spec.pk)
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
            lv = _q("l", col)
            if col in self.cast_columns:
                lv = sql.SQL("CAST({} AS {})").format(lv, raw(types[col]))
            sv: sql.Composable = _q("s", col)
            if _text_compared(types[col]):
                lv, sv = sql.SQL("({})::text").format(lv), sql.SQL("({})::text").format(sv)
            differs.append(sql.SQL("({} IS DISTINCT FROM {})").format(lv, sv))
            legacy_values.append(sql.SQL("({})::text").format(lv))
            split_values.append(sql.SQL("({})::text").format(sv))
        return render_validator(
            "_row_diff",
            legacy=views.legacy_normalized(spec),
            split=views.split_as_legacy(spec),
            legacy_scope=scope.predicate(_q("x", spec.pk), self.pk_type),
            split_scope=scope.predicate(_q("y", spec.pk), self.pk_type),
            pk=self.pk,
            differs=join(differs),
            any_differs=join(differs, " OR "),
            legacy_values=join(legacy_values),
            split_values=join(split_values),
            quarantine=self.quarantine,
        )

    # -- the SQL checks ------------------------------------------------------------------------------------------

    def check(
        self,
        check_name: str,
        scope: Scope,
        references: Sequence[int] | None = None,
        *,
        quarantine_from_table: bool = True,
    ) -> sql.Composed | None:
        """The statement of one check over `scope` (its branches joined by UNION ALL), or None when the spec
        gives it nothing to check. `references` limits the references check to those [[references]] entries."""
        spec = self.spec
        pk, pk_type, link = spec.pk, self.pk_type, spec.base.link_column
        slots: dict[str, sql.Composable] = {
            "pk": self.pk,
            "link": self.link,
            "legacy": self.legacy,
            "base": self.base,
            "quarantine": self.quarantine,
            "base_name": self.base_name,
            "legacy_name": self.legacy_name,
            # The scope again on the table a check joins to: a join on the key alone cannot narrow the other
            # side to the range, and with it the planner merges two index ranges instead of probing per row.
            "base_scope": scope.predicate(_q("b", pk), pk_type),
            "legacy_scope": scope.predicate(_q("l", pk), pk_type),
            "child_scope": scope.predicate(_q("c", link), pk_type),
            "meta_scope": scope.predicate(_q("m", link), pk_type),
        }
        builders: dict[str, Callable[[], list[sql.Composable]]] = {
            "legacy_missing": lambda: [self._render(check_name, slots, scope, _q("l", pk))],
            "split_extra": lambda: [self._render(check_name, slots, scope, _q("b", pk))],
            "quarantine_clean": lambda: [self._render(check_name, slots, scope, _q("b", pk))],
            "required_fields": lambda: self._required_fields(slots, scope),
            "variant_child": lambda: self._variants(check_name, slots, scope, _q("b", pk)),
            "wrong_variant": lambda: self._variants(check_name, slots, scope, _q("c", link)),
            "orphans": lambda: self._orphans(slots, scope),
            "meta_values": lambda: self._meta(check_name, slots, scope),
            "meta_keys": lambda: self._meta(check_name, slots, scope),
            "references": lambda: self._references(slots, scope, references, quarantine_from_table),
        }
        branches = builders[check_name]()
        return join(branches, "\nUNION ALL\n") if branches else None

    def _render(
        self, template: str, slots: dict[str, sql.Composable], scope: Scope, scoped: sql.Composable, **more: Any
    ) -> sql.Composed:
        """Fill a check template; `scoped` is the key column the template's {scope} restricts."""
        return render_validator(template, **{**slots, **more, "scope": scope.predicate(scoped, self.pk_type)})

    def _required_fields(self, slots: dict[str, sql.Composable], scope: Scope) -> list[sql.Composable]:
        spec = self.spec
        tables: list[tuple[str, str, dict[str, ColumnSpec]]] = [(spec.base.table, spec.pk, spec.base.columns)]
        tables += [(v.table, spec.base.link_column, v.columns) for v in spec.variants]
        out: list[sql.Composable] = []
        for table, key, cols in tables:
            required = [c for c, cs in cols.items() if cs.required]
            if required:
                nulls = [sql.SQL("CASE WHEN {} IS NULL THEN {} END").format(_q("c", c), literal(c)) for c in required]
                out.append(
                    self._render(
                        "required_fields",
                        slots,
                        scope,
                        _q("c", key),
                        key=ident(key),
                        table=names.split(spec, table),
                        table_name=literal(_display(spec.target_schema, table)),
                        null_columns=join(nulls),
                        any_null=join([sql.SQL("{} IS NULL").format(_q("c", c)) for c in required], " OR "),
                    )
                )
        return out

    def _variants(
        self, template: str, slots: dict[str, sql.Composable], scope: Scope, column: sql.Composable
    ) -> list[sql.Composable]:
        spec = self.spec
        return [
            self._render(
                template,
                slots,
                scope,
                column,
                variant=names.split(spec, v.table),
                variant_name=literal(_display(spec.target_schema, v.table)),
                disc=ident(spec.source.discriminator),
                disc_name=literal(spec.source.discriminator),
                when=literal(v.when),
            )
            for v in spec.variants
        ]

    def _orphans(self, slots: dict[str, sql.Composable], scope: Scope) -> list[sql.Composable]:
        spec = self.spec
        children = [v.table for v in spec.variants] + ([spec.meta.table] if spec.meta else [])
        return [
            self._render(
                "orphans",
                slots,
                scope,
                _q("c", spec.base.link_column),
                child=names.split(spec, table),
                child_name=literal(_display(spec.target_schema, table)),
            )
            for table in children
        ]

    def _meta(self, template: str, slots: dict[str, sql.Composable], scope: Scope) -> list[sql.Composable]:
        spec = self.spec
        if not spec.meta:
            return []
        m = spec.meta
        meta: dict[str, sql.Composable] = {
            "meta": names.split(spec, m.table),
            "meta_name": literal(_display(spec.target_schema, m.table)),
            "key": ident(m.key_column),
            "value": ident(m.value_column),
        }
        if template == "meta_keys":
            names_ = join([literal(c) for c in m.columns])
            return [self._render(template, slots, scope, _q("m", spec.base.link_column), names=names_, **meta)]
        return [
            self._render(
                template,
                slots,
                scope,
                _q("l", spec.pk),
                column=ident(col),
                column_name=literal(col),
                name=literal(col),
                **meta,
            )
            for col in m.columns
        ]

    def _references(
        self,
        slots: dict[str, sql.Composable],
        scope: Scope,
        references: Sequence[int] | None,
        quarantine_from_table: bool,
    ) -> list[sql.Composable]:
        out: list[sql.Composable] = []
        for i, ref in enumerate(self.spec.references):
            if references is not None and i not in references:
                continue
            column = _q("r", ref.column)
            out.append(
                self._render(
                    "references",
                    slots,
                    scope,
                    column,
                    reference=ident(ref.schema_, ref.table),
                    reference_name=literal(f"{_display(ref.schema_, ref.table)}.{ref.column}"),
                    column=ident(ref.column),
                    not_quarantined=self.not_quarantined(column, from_table=quarantine_from_table),
                )
            )
        return out

    def skipped(self, check_name: str) -> str | None:
        """Why a check does not apply to this spec, or None."""
        spec = self.spec
        if check_name in ("meta_values", "meta_keys") and not spec.meta:
            return "the spec has no [meta] table"
        if check_name == "references" and not spec.references:
            return "the spec lists no [[references]]"
        if check_name == "required_fields" and not any(cs.required for _, _, _, cs in spec.iter_columns()):
            return "the spec has no required columns"
        return None

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


def check_files() -> list[str]:
    """The check templates shipped in validators/ (files starting with _ are the engine's own statements)."""
    return sorted(p.stem for p in validators_dir().glob("*.sql") if not p.name.startswith("_"))


# -- the run ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    number: int
    scope: Scope
    quarantined: tuple[str, ...] = ()


@dataclass
class _Found:
    """What one pass found: check failures and row differences, keyed for the re-check."""

    failures: dict[tuple[str, str], Failure] = field(default_factory=dict)
    row_diffs: dict[str, RowDiff] = field(default_factory=dict)

    def merge(self, other: _Found) -> None:
        self.failures.update(other.failures)
        self.row_diffs.update(other.row_diffs)

    def keys(self) -> set[str]:
        return {k for _, k in self.failures} | set(self.row_diffs)


def _execute(conn: psycopg.Connection[Any], query: Query, params: dict[str, Any]) -> psycopg.Cursor[Any]:
    # prepare=False: psycopg prepares a statement run five times, and a generic plan cannot see that a chunk's
    # key range is narrow (it seq-scanned every table: 37 s instead of 2.4 s for 1M rows).
    return conn.execute(query, params, prepare=False)


@contextmanager
def _snapshot(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """One short read-only transaction, one snapshot for every statement in it."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        # No parallel query: chunks run in parallel already (`workers`), and starting parallel workers for each
        # small chunk cost more than it saved (3.2 s vs 2.6 s for 1M rows on two cores).
        conn.execute(
            "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true),"
            " set_config('max_parallel_workers_per_gather', '0', true)",
            [f"{int(LOCK_TIMEOUT * 1000)}ms", f"{int(STATEMENT_TIMEOUT * 1000)}ms"],
        )
        yield conn


class Validation:
    """One validation run: plan the chunks, hash them in parallel, examine the ones that differ, re-check."""

    def __init__(
        self,
        db: Database,
        spec: Spec,
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        workers: int = DEFAULT_WORKERS,
        max_rows_per_second: float | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be at least 1")
        self.db, self.spec = db, spec
        self.chunk_rows = chunk_rows
        self.workers = max(1, workers)
        self.limiter = RateLimiter(max_rows_per_second)
        self.reporter: Reporter = reporter or NullReporter()
        self.params: dict[str, Any] = {"migration": spec.migration_name}
        self.queries = Queries(spec)
        self.indexed_refs: list[int] = []
        self.unindexed_refs: list[int] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        self._conns: list[psycopg.Connection[Any]] = []

    # -- connections -------------------------------------------------------------------------------------------

    def _conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self.db.raw_connect(autocommit=True)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _close(self) -> None:
        for conn in self._conns:
            conn.close()
        self._conns.clear()

    # -- run ---------------------------------------------------------------------------------------------------

    def run(self) -> ValidationResult:
        t0 = time.monotonic()
        try:
            return self._run(t0)
        finally:
            self._close()

    def _run(self, t0: float) -> ValidationResult:
        spec = self.spec
        conn = self._conn()
        current = self._preflight(conn)
        self.queries = self._queries(conn)
        self._classify_references(conn)
        chunks = self._plan_chunks(conn)
        estimate = _execute(conn, render_validator("_estimate"), {"table": as_text(self.queries.legacy)}).fetchone()
        total = int(estimate[0]) if estimate else 0
        result = ValidationResult(spec.migration_name, current, [CheckResult(c.name, c.description) for c in CHECKS])
        result.chunks = len(chunks)
        for c in result.checks:
            c.skipped = None if c.name == "row_equality" else self.queries.skipped(c.name)
        self.reporter.step(
            f"validating {spec.source.table}: {len(chunks)} chunk(s) of up to {self.chunk_rows:,} rows, "
            f"{self.workers} worker(s)"
        )
        found, mismatched, rows = self._hash_pass(chunks, total)
        result.rows = rows
        result.mismatched_chunks = len(mismatched)
        confirmed = self._recheck(found)
        # A chunk whose hashes differ is explained by a confirmed failure it found (references aside: the hash
        # does not cover the referencing tables).
        unexplained = [
            chunk
            for chunk, pairs in mismatched
            if not any(p in confirmed.failures for p in pairs if p[0] != "references")
        ]
        for chunk in self._still_differs(unexplained):
            confirmed.failures[("row_equality", chunk.scope.describe())] = Failure(
                chunk.scope.describe(),
                "row_equality",
                "the chunk's hashes differ on a fresh read but no row or check names a difference",
            )
        if self.unindexed_refs:
            confirmed.merge(self._unindexed_references())
        self._collect(result, confirmed)
        result.quarantine = self._quarantine_summary(conn)
        result.seconds = time.monotonic() - t0
        for c in result.checks:
            status = "skipped: " + c.skipped if c.skipped else ("ok" if c.ok else f"{c.count:,} failing")
            self.reporter.step(f"{c.name}: {status}")
        if result.quarantine.open:
            self.reporter.step(
                f"quarantine: {result.quarantine.open:,} open row(s) ({result.quarantine.accepted:,} accepted)"
            )
        return result

    def _preflight(self, conn: psycopg.Connection[Any]) -> str:
        spec = self.spec
        st = state.read(conn, spec)
        missing = [
            t
            for t in spec.split_tables()
            if _execute(conn, sql.SQL("SELECT to_regclass(%(t)s)"), {"t": as_text(names.split(spec, t))}).fetchone()
            == (None,)
        ]
        if missing or st.state == "legacy":
            raise WrongState(
                f"nothing to validate: the split tables are not there ({', '.join(missing) or 'state legacy'})",
                hint="run `migrator expand` and `migrator backfill` first",
            )
        return st.state

    def _queries(self, conn: psycopg.Connection[Any]) -> Queries:
        """Queries for this database: casts where a legacy column's type differs from its split column's, and
        the poison part only when a required split column lacks its NOT NULL."""
        spec = self.spec

        def columns(table: sql.Identifier) -> dict[str, tuple[str, bool]]:
            rows = _execute(conn, render_validator("_column_types"), {"table": as_text(table)}).fetchall()
            return {r[0]: (r[1], r[2]) for r in rows}

        legacy = columns(self.queries.legacy)
        split = columns(self.queries.base)
        for v in spec.variants:
            split.update(columns(names.split(spec, v.table)))
        # Meta columns are compared as the jsonb the trigger stores: no cast.
        compared = [spec.pk, *spec.base.columns, *(c for v in spec.variants for c in v.columns)]
        casts = frozenset(c for c in compared if legacy.get(c, ("?", False))[0] != split.get(c, ("", False))[0])
        required = [c for _, _, c, cs in spec.iter_columns() if cs.required and c in split]
        poison = not all(split[c][1] for c in required)
        return Queries(spec, casts, poison=poison)

    def _classify_references(self, conn: psycopg.Connection[Any]) -> None:
        for i, ref in enumerate(self.spec.references):
            exists, indexed = _execute(
                conn,
                render_validator("_reference_indexed"),
                {"table": as_text(ident(ref.schema_, ref.table)), "column": ref.column},
            ).fetchone()  # type: ignore[misc]
            if not exists:
                raise TableDoesNotExist(
                    f"the spec's reference table {ref.schema_}.{ref.table} does not exist",
                    hint="fix [[references]] in the spec",
                )
            (self.indexed_refs if indexed else self.unindexed_refs).append(i)
            if not indexed:
                self.reporter.step(
                    f"{ref.table}.{ref.column} has no index: its references check reads it in one pass "
                    "(contract's foreign key will want that index too)"
                )

    def _plan_chunks(self, conn: psycopg.Connection[Any]) -> list[Chunk]:
        """Chunk boundaries, each found by a short index walk; then the open quarantine keys per chunk."""
        bounds: list[str] = []
        while True:
            lo = bounds[-1] if bounds else None
            row = _execute(
                conn, self.queries.chunk_bound(lo is not None), {"lo": lo, "chunk_rows": self.chunk_rows}
            ).fetchone()
            if row is None:
                break
            bounds.append(row[0])
        edges: list[str | None] = [None, *bounds, None]
        quarantined: dict[int, tuple[str, ...]] = {}
        rows = _execute(conn, self.queries.quarantine_buckets(), {**self.params, "bounds": bounds}).fetchall()
        for bucket, keys in rows:
            quarantined[int(bucket)] = tuple(keys)
        return [Chunk(i, Scope(edges[i], edges[i + 1]), quarantined.get(i, ())) for i in range(len(edges) - 1)]

    # -- the hash pass -------------------------------------------------------------------------------------------

    def _hash_pass(
        self, chunks: list[Chunk], total: int
    ) -> tuple[_Found, list[tuple[Chunk, set[tuple[str, str]]]], int]:
        """Hash every chunk (in parallel); returns what was found, the chunks whose hashes differed (with the
        failures each found), and the legacy rows hashed."""
        found = _Found()
        mismatched: list[tuple[Chunk, set[tuple[str, str]]]] = []
        done = [0, 0, 0]  # rows compared, chunks, legacy rows read (quarantined ones too: what the total counts)
        t0 = time.monotonic()

        def work(chunk: Chunk) -> None:
            # A lock timeout behind someone's DDL, or a dropped connection, costs this chunk one more try.
            rows, chunk_found, differs = retry.run_with_retry(lambda: self._examine(chunk), attempts=5)
            with self._lock:
                found.merge(chunk_found)
                if differs:
                    mismatched.append((chunk, set(chunk_found.failures)))
                done[0] += rows
                done[1] += 1
                done[2] += rows + len(chunk.quarantined)
                self.reporter.progress(
                    done[2],
                    max(total, done[2]),
                    chunk=chunk.number,
                    chunks=len(chunks),
                    chunks_done=done[1],
                    mismatched_chunks=len(mismatched),
                    seconds=round(time.monotonic() - t0, 3),
                )
            self.limiter.done(rows + len(chunk.quarantined))

        if self.workers == 1 or len(chunks) == 1:
            for chunk in chunks:
                work(chunk)
        else:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="validate") as pool:
                futures = [pool.submit(work, c) for c in chunks]
                try:
                    for future in futures:
                        future.result()
                except BaseException:
                    # Do not read the rest of a big table only to report the first error afterwards.
                    for future in futures:
                        future.cancel()
                    raise
        mismatched.sort(key=lambda m: m[0].number)
        return found, mismatched, done[0]

    def _examine(self, chunk: Chunk) -> tuple[int, _Found, bool]:
        """Hash one chunk; where the hashes differ, run the row pass and every check on it, same snapshot."""
        conn = self._conn()
        params = {**self.params, **chunk.scope.params(), "quarantined": list(chunk.quarantined)}
        found = _Found()
        with _snapshot(conn):
            row = _execute(conn, self.queries.chunk_hash(chunk.scope), params).fetchone()
            assert row is not None
            rows, legacy_parts, legacy_hash, split_parts, split_hash = row
            differs = (legacy_parts, legacy_hash) != (split_parts, split_hash)
            if self.indexed_refs:
                found.merge(
                    self._run_checks(
                        conn, chunk.scope, ["references"], refs=self.indexed_refs, quarantined=chunk.quarantined
                    )
                )
            if differs:
                found.merge(self._row_pass(conn, chunk.scope))
                names_ = [c.name for c in SQL_CHECKS if not c.every_chunk]
                found.merge(self._run_checks(conn, chunk.scope, names_))
        return int(rows), found, differs

    def _row_pass(self, conn: psycopg.Connection[Any], scope: Scope) -> _Found:
        found = _Found()
        # The views join base and children on the key alone; on a key range the planner picks hash joins that
        # read each child table whole. Nested loops over the children's primary keys read only the range.
        conn.execute("SELECT set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)")
        try:
            rows = _execute(conn, self.queries.row_diff(scope), {**self.params, **scope.params()}).fetchall()
        finally:
            conn.execute("SELECT set_config('enable_hashjoin', 'on', true), set_config('enable_mergejoin', 'on', true)")
        columns = self.spec.legacy_columns()
        for key, in_legacy, in_split, differs, legacy_values, split_values in rows:
            if not in_split:
                diff = RowDiff(key, "missing_in_split")
            elif not in_legacy:
                diff = RowDiff(key, "extra_in_split")
            else:
                diff = RowDiff(
                    key,
                    "differs",
                    tuple(
                        ColumnDiff(col, _value(lv), _value(sv))
                        for col, d, lv, sv in zip(columns, differs, legacy_values, split_values, strict=True)
                        if d
                    ),
                )
            found.row_diffs[key] = diff
            found.failures[("row_equality", key)] = Failure(key, "row_equality", diff.describe())
        return found

    def _run_checks(
        self,
        conn: psycopg.Connection[Any],
        scope: Scope,
        check_names: Sequence[str],
        refs: Sequence[int] | None = None,
        quarantined: Sequence[str] | None = None,
    ) -> _Found:
        """Run checks over scope; with `quarantined` (the chunk's keys read at the start) instead of reading the
        quarantine table per row."""
        found = _Found()
        params = {**self.params, **scope.params(), "quarantined": list(quarantined or ())}
        for check_name in check_names:
            query = self.queries.check(check_name, scope, refs, quarantine_from_table=quarantined is None)
            if query is None:
                continue
            for key, check, detail in _execute(conn, query, params):
                found.failures[(check, key)] = Failure(key, check, _clip(detail, 400))
        return found

    # -- re-check ------------------------------------------------------------------------------------------------

    def _recheck(self, found: _Found) -> _Found:
        """Read every failing key again in a fresh snapshot; keep what is still failing."""
        keys = sorted(found.keys())
        confirmed = _Found()
        if not keys:
            return confirmed
        self.reporter.step(f"re-checking {len(keys):,} key(s) in a fresh snapshot")
        conn = self._conn()
        check_names = [c.name for c in SQL_CHECKS]
        for i in range(0, len(keys), RECHECK_BATCH):
            scope = Scope(keys=tuple(keys[i : i + RECHECK_BATCH]))
            with _snapshot(conn):
                again = self._row_pass(conn, scope)
                again.merge(self._run_checks(conn, scope, check_names, refs=self.indexed_refs))
            for pair, failure in again.failures.items():
                if pair in found.failures:
                    confirmed.failures[pair] = failure
                    if pair[0] == "row_equality":
                        confirmed.row_diffs[pair[1]] = again.row_diffs[pair[1]]
        return confirmed

    def _still_differs(self, chunks: list[Chunk]) -> list[Chunk]:
        """Chunks whose hashes differed with nothing to show for it: hash again, quarantine read fresh."""
        out = []
        conn = self._conn()
        for chunk in chunks:
            with _snapshot(conn):
                row = _execute(
                    conn,
                    self.queries.chunk_hash(chunk.scope, quarantine_from_table=True),
                    {**self.params, **chunk.scope.params()},
                ).fetchone()
            assert row is not None
            if (row[1], row[2]) != (row[3], row[4]):
                out.append(chunk)
        return out

    def _unindexed_references(self) -> _Found:
        conn = self._conn()
        with _snapshot(conn):
            first = self._run_checks(conn, Scope(), ["references"], refs=self.unindexed_refs)
        if not first.failures:
            return first
        keys = tuple(sorted({k for _, k in first.failures}))
        with _snapshot(conn):
            again = self._run_checks(conn, Scope(keys=keys), ["references"], refs=self.unindexed_refs)
        return _Found({p: f for p, f in again.failures.items() if p in first.failures})

    # -- results -------------------------------------------------------------------------------------------------

    def _collect(self, result: ValidationResult, confirmed: _Found) -> None:
        by_name = {c.name: c for c in result.checks}
        for (check, _), failure in sorted(confirmed.failures.items(), key=lambda kv: _sort_key(kv[0])):
            by_name[check].add(failure)
        result.row_diffs = [confirmed.row_diffs[k] for k in sorted(confirmed.row_diffs, key=_natural)]

    def _quarantine_summary(self, conn: psycopg.Connection[Any]) -> QuarantineSummary:
        summary = QuarantineSummary()
        with _snapshot(conn):
            for key, sqlstate, message, source, accepted in _execute(
                conn, self.queries.quarantine_summary(), self.params
            ):
                summary.open += 1
                summary.accepted += bool(accepted)
                summary.by_sqlstate[sqlstate] = summary.by_sqlstate.get(sqlstate, 0) + 1
                summary.keys.append(key)
                if len(summary.sample) < 100:
                    summary.sample.append(
                        {"key": key, "sqlstate": sqlstate, "message": message, "source": source, "accepted": accepted}
                    )
            if summary.open:
                for i, ref in enumerate(self.spec.references):
                    n = _execute(conn, self.queries.quarantine_references(i), self.params).fetchone()
                    if n and n[0]:
                        summary.referenced_by[f"{_display(ref.schema_, ref.table)}.{ref.column}"] = int(n[0])
        return summary


def _value(v: str | None) -> str | None:
    return None if v is None else _clip(v)


def _natural(key: str) -> tuple[int, int | str]:
    return (0, int(key)) if re.fullmatch(r"-?\d+", key) else (1, key)


def _sort_key(pair: tuple[str, str]) -> tuple[int, tuple[int, int | str]]:
    return (CHECK_NAMES.index(pair[0]), _natural(pair[1]))


def run_validation(
    db: Database,
    spec: Spec,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    workers: int = DEFAULT_WORKERS,
    max_rows_per_second: float | None = None,
    reporter: Reporter | None = None,
) -> ValidationResult:
    """Run every check, read-only, in any state that has split tables; the guard later phases call."""
    return Validation(
        db, spec, chunk_rows=chunk_rows, workers=workers, max_rows_per_second=max_rows_per_second, reporter=reporter
    ).run()


# -- the phase ----------------------------------------------------------------------------------------------------


def plan(ctx: Context) -> list[Action]:
    """The statements a validation runs, each read-only; chunked ones show a key range [lo, hi)."""
    q = Queries(ctx.spec)
    chunk = Scope("lo", "hi")
    actions = [
        Action("find the next chunk boundary (repeated: an index walk of chunk_rows keys)", q.chunk_bound(True)),
        Action("open quarantine keys per chunk (read once)", q.quarantine_buckets()),
        Action(
            "hash one chunk, legacy and split side in one statement (REPEATABLE READ, READ ONLY; repeated)",
            q.chunk_hash(chunk),
            statement_timeout=STATEMENT_TIMEOUT,
        ),
        Action("where a chunk's hashes differ: its rows that differ, column by column", q.row_diff(chunk)),
    ]
    for check in SQL_CHECKS:
        query = q.check(check.name, chunk)
        if query is not None:
            when = "every chunk" if check.every_chunk else "where a chunk's hashes differ"
            actions.append(Action(f"check {check.name} ({when}): {check.description}", query))
    actions.append(Action("quarantine summary", q.quarantine_summary()))
    return actions


@dataclass
class Options:
    """What ctx.options may hold for validate; every field has a CLI option of the same name."""

    junit: Path | None = None
    report: Path | None = None
    accept_quarantine: bool = False
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    workers: int = DEFAULT_WORKERS
    max_rows_per_second: float | None = None
    reason: str | None = None

    @classmethod
    def from_context(cls, ctx: Context) -> Options:
        o = ctx.options
        return cls(
            junit=Path(o["junit"]) if o.get("junit") else None,
            report=Path(o["report"]) if o.get("report") else None,
            accept_quarantine=bool(o.get("accept_quarantine", False)),
            chunk_rows=int(o.get("chunk_rows") or DEFAULT_CHUNK_ROWS),
            workers=int(o.get("workers") or DEFAULT_WORKERS),
            max_rows_per_second=float(o["max_rows_per_second"]) if o.get("max_rows_per_second") else None,
            reason=o.get("reason"),
        )


def write_reports(result: ValidationResult, opts: Options) -> None:
    if opts.junit:
        write_junit(result, opts.junit)
    if opts.report:
        write_json(result, opts.report)


def apply(ctx: Context) -> ValidationResult:
    """Validate; from backfilled, a clean result (quarantine empty or accepted) moves the state to validated.

    In later states it only checks (the guard of switch-reads, switch-writes, contract). Mismatches raise
    ValidationFailed (exit 1) and leave the state where it was; the reports are written either way.
    """
    db, spec, opts = ctx.require_db(), ctx.spec, Options.from_context(ctx)
    with state.transition(db, spec, "validate", ALLOWED_STATES) as tr:
        result = run_validation(
            db,
            spec,
            chunk_rows=opts.chunk_rows,
            workers=opts.workers,
            max_rows_per_second=opts.max_rows_per_second,
            reporter=ctx.reporter,
        )
        write_reports(result, opts)
        if not result.ok:
            raise ValidationFailed(result, hint="the --report/--junit files list every row; fix them and re-run")
        if tr.start.state != "backfilled":
            ctx.reporter.step(f"state stays {tr.start.state}: validate moves the state only from backfilled")
            return result
        quarantine = result.quarantine
        if quarantine.unaccepted and not opts.accept_quarantine:
            raise GuardFailed(
                f"{quarantine.unaccepted:,} row(s) are in quarantine (by SQLSTATE: "
                f"{', '.join(f'{k} {v:,}' for k, v in sorted(quarantine.by_sqlstate.items()))})",
                hint=f"fix them in {spec.source.table} (the trigger then syncs them), or accept them with "
                "--accept-quarantine",
            )
        _finish(tr, ctx, result, opts)
    return result


def _finish(tr: state.Transition, ctx: Context, result: ValidationResult, opts: Options) -> None:
    """Accept the quarantine this validation saw and move to validated, in one transaction."""
    spec, q = ctx.spec, Queries(ctx.spec)
    params = {"migration": spec.migration_name}
    with tr.conn.transaction():
        accepted = 0
        if opts.accept_quarantine and result.quarantine.keys:
            accepted = tr.conn.execute(q.quarantine_accept(), {**params, "keys": result.quarantine.keys}).rowcount
        row = tr.conn.execute(q.quarantine_unaccepted(), params).fetchone()
        left = int(row[0]) if row else 0
        if left:
            raise GuardFailed(
                f"{left:,} row(s) were quarantined while validation ran; nothing was accepted",
                hint="run `migrator validate` again",
            )
        state.record(
            tr.conn,
            spec,
            from_state=tr.start.state,
            to_state="validated",
            command=tr.command,
            reason=opts.reason,
            duration_ms=int((time.monotonic() - tr.started) * 1000),
            details={
                "rows": result.rows,
                "chunks": result.chunks,
                "seconds": round(result.seconds, 3),
                "counts": {c.name: c.count for c in result.checks},
                "quarantine_open": result.quarantine.open,
                "quarantine_accepted_now": accepted,
                "accept_quarantine": opts.accept_quarantine,
                "quarantine_referenced_by": result.quarantine.referenced_by,
            },
        )


def verify(ctx: Context) -> Report:
    """A fresh validation as a Report: the guard switch-reads, switch-writes and contract check before they move."""
    opts = Options.from_context(ctx)
    result = run_validation(
        ctx.require_db(), ctx.spec, chunk_rows=opts.chunk_rows, workers=opts.workers, reporter=ctx.reporter
    )
    report = Report(name, details={"result": result, "counts": {c.name: c.count for c in result.checks}})
    for c in result.checks:
        first = f"; first: {c.failures[0].key}: {c.failures[0].detail}" if c.failures else ""
        report.check(c.ok, f"{c.name}: ok", f"{c.name}: {c.count:,} failing row(s){first}")
    return report


def rollback(ctx: Context) -> None:
    """validated -> backfilled: only the state moves (validation changed no data; accepted quarantine stays)."""
    with state.transition(ctx.require_db(), ctx.spec, "rollback", ("validated",)) as tr:
        tr.finish("backfilled", reason=ctx.options.get("reason"))

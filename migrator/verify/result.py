"""What a validation found: the failing rows of each check, the row differences column by column, the quarantine,
and the same as a one-line summary, a JSON document and JUnit testcases."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from migrator.errors import GuardFailed
from migrator.verify.reports import JUnitCase

MAX_FAILURES = 100_000  # failures kept per check (the counts stay exact); bounds memory on a badly broken table
VALUE_WIDTH = 120  # characters of a value shown in a report


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
        return "; ".join(f"{c.column}: legacy {shown(c.legacy)} != split {shown(c.split)}" for c in self.columns)


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
            f"first: {first.check} {first.key}: {clip(first.detail, 160)}"
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


def clip(text: str, width: int = VALUE_WIDTH) -> str:
    """`text`, cut to `width` characters with an ellipsis: a report shows values, it does not archive them."""
    return text if len(text) <= width else text[: width - 1] + "…"


def shown(value: str | None) -> str:
    return "NULL" if value is None else repr(clip(value))

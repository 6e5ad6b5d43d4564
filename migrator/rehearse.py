"""rehearse: restore a pg_dump snapshot into a throwaway database, then run every phase and every rollback on it,
validating at each step — what CI runs on a copy of production before a release.

The steps are a list (`DEFAULT_STEPS`) of small callables, so later phases append theirs: an advance is a phase's
`apply`, a rollback is `lifecycle.rollback(ctx, to)`, and a step marked `validate` is followed by a full
validation that must come back clean. The throwaway database is dropped whatever happens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg

from migrator import lifecycle, operations, state
from migrator.db import Database
from migrator.engine.context import Context, NullReporter, Reporter
from migrator.errors import MigratorError
from migrator.phases.base import Phase
from migrator.phases.validate import Options as ValidateOptions
from migrator.phases.validate import Validate
from migrator.snapshots import SnapshotInfo, inspect_snapshot, restore, throwaway_database
from migrator.spec import Spec
from migrator.verify.reports import JUnitCase, write_json, write_junit
from migrator.verify.result import ValidationFailed, ValidationResult
from migrator.verify.runner import DEFAULT_CHUNK_ROWS, run_validation

# -- results ------------------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    name: str
    ok: bool
    seconds: float
    state: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    skipped: bool = False


@dataclass
class RehearsalResult:
    """The steps of one rehearsal, and the last full validation (its checks become testcases too)."""

    snapshot: str
    database: str
    steps: list[StepResult] = field(default_factory=list)
    validation: ValidationResult | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps) and (self.validation is None or self.validation.ok)

    @property
    def suite_name(self) -> str:
        return f"migrator rehearse {Path(self.snapshot).name}"

    def summary(self) -> str:
        done = [s for s in self.steps if not s.skipped]
        if self.ok:
            return f"rehearsal passed: {len(done)} steps in {self.seconds:.1f} s on a copy of {self.snapshot}"
        failed = next(s for s in self.steps if not s.ok and not s.skipped)
        why = failed.error or "validation found mismatches"
        return f"rehearsal failed at step {failed.name!r}: {why}"

    def junit_cases(self) -> list[JUnitCase]:
        cases = []
        for s in self.steps:
            detail = ", ".join(f"{k}={v}" for k, v in s.details.items() if not isinstance(v, dict | list))
            failure = None if s.ok or s.skipped else (s.error or "validation found mismatches")
            cases.append(
                JUnitCase(
                    name=s.name,
                    classname="migrator.rehearse",
                    seconds=s.seconds,
                    failure=failure,
                    failure_lines=s.details.get("failures", []),
                    skipped="an earlier step failed" if s.skipped else None,
                    output=f"state {s.state}; {detail}" if s.state else detail or None,
                )
            )
        if self.validation is not None:
            cases += self.validation.junit_cases(classname="migrator.rehearse.validate")
        return cases

    def as_dict(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot,
            "database": self.database,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "steps": [
                {
                    "name": s.name,
                    "ok": s.ok,
                    "skipped": s.skipped,
                    "seconds": round(s.seconds, 3),
                    "state": s.state,
                    "details": s.details,
                    "error": s.error,
                }
                for s in self.steps
            ],
            "validation": self.validation.as_dict() if self.validation else None,
        }


# -- steps --------------------------------------------------------------------------------------------------------


@dataclass
class Rehearsal:
    """What a step gets: a context on the throwaway database, and the validations so far."""

    ctx: Context
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    validations: list[ValidationResult] = field(default_factory=list)

    def context(self) -> Context:
        return Context(self.ctx.spec, self.ctx.db, self.ctx.lock_timeout, self.ctx.reporter, reason="rehearse")

    def validate(self) -> ValidationResult:
        result = run_validation(
            self.ctx.require_db(), self.ctx.spec, chunk_rows=self.chunk_rows, reporter=self.ctx.reporter
        )
        self.validations.append(result)
        return result


StepFn = Callable[[Rehearsal], dict[str, Any] | None]


@dataclass(frozen=True)
class Step:
    """One rehearsal step; with `validate_after`, a full validation follows and must be clean."""

    name: str
    run: StepFn
    validate_after: bool = False


def advance(phase: Phase[Any], *, again: bool = False) -> Step:
    """A step that runs one phase's apply(); a full validation follows once the split side holds every row
    (validate itself validates)."""

    def run(r: Rehearsal) -> dict[str, Any] | None:
        phase.apply(r.context())
        if isinstance(phase, Validate) and phase.result is not None:
            r.validations.append(phase.result)
        return None

    validates_itself = isinstance(phase, Validate)
    complete = lifecycle.stage(phase.entered).split_complete
    return Step(phase.name + (" again" if again else ""), run, complete and not validates_itself)


def back_to(to_state: str, *, validate_after: bool | None = None) -> Step:
    """A step that rolls back (one state at a time, as on-call would) down to `to_state`; validated after, as long
    as something keeps the split rows current there (no triggers at the start)."""

    def run(r: Rehearsal) -> dict[str, Any] | None:
        steps = operations.rollback(r.context(), to_state)
        return {"rolled_back": " -> ".join([steps[0][0], *(to for _, to in steps)]) if steps else ""}

    if validate_after is None:
        validate_after = to_state != lifecycle.START
    return Step(f"rollback to {to_state}", run, validate_after)


# How far a rehearsal goes forward, before it rolls back to the start and goes forward again.
REHEARSE_UNTIL = "validated"


def _phase(name: str) -> Phase[Any]:
    if name == "validate":
        # A rehearsal runs on a copy: the quarantine is accepted there and reported (a production snapshot
        # usually has dirty rows, and the point is to rehearse every step after validate too).
        return operations.PHASES[name](ValidateOptions(accept_quarantine=True))
    return operations.PHASES[name]()


def default_steps(until: str = REHEARSE_UNTIL) -> tuple[Step, ...]:
    """Forward from the start to `until`, back one state at a time to the start, and forward again: every phase and
    every rollback on the way, in lifecycle order."""
    states = lifecycle.between(lifecycle.START, until)
    phases = [lifecycle.stage(s).enter for s in states[1:]]
    forward = [advance(_phase(p)) for p in phases if p]
    back = [back_to(s) for s in reversed(states[:-1])]
    again = [advance(_phase(p), again=True) for p in phases if p]
    return (*forward, *back, *again)


DEFAULT_STEPS: tuple[Step, ...] = default_steps()


def _run_step(step: Step, r: Rehearsal) -> StepResult:
    t0 = time.monotonic()
    r.ctx.reporter.step(f"rehearse: {step.name}")
    before = len(r.validations)
    details: dict[str, Any] = {}
    error: str | None = None
    try:
        details = dict(step.run(r) or {})
        if step.validate_after:
            r.validate()
    except ValidationFailed as exc:
        r.validations.append(exc.result)
        error = str(exc)
    except MigratorError as exc:
        error = str(exc)
    except (psycopg.Error, OSError) as exc:
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    ok = error is None
    if len(r.validations) > before:
        v = r.validations[-1]
        ok = ok and v.ok
        details.update(
            {
                "validated_rows": v.rows,
                "mismatches": v.mismatches,
                "quarantined": v.quarantine.open,
                "failures": [f"{f.check} {f.key}: {f.detail}" for c in v.checks for f in c.failures][:50],
            }
        )
    with r.ctx.require_db().connect(autocommit=True) as conn:
        current = state.read(conn, r.ctx.spec).state
    return StepResult(step.name, ok, time.monotonic() - t0, current, details, error)


def rehearse(
    server_dsn: str | None,
    snapshot: Path,
    spec: Spec,
    *,
    junit: Path | None = None,
    report: Path | None = None,
    reporter: Reporter | None = None,
    steps: Sequence[Step] = DEFAULT_STEPS,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> RehearsalResult:
    """Restore `snapshot` into a throwaway database on server_dsn's server (an embedded PostgreSQL when None), run
    `steps` on it, write the reports, drop the database. A failed step ends the rehearsal (the rest are skipped);
    the result says which, and `ok` is the CI gate."""
    reporter = reporter or NullReporter()
    info = inspect_snapshot(Path(snapshot))
    t0 = time.monotonic()
    result = RehearsalResult(str(snapshot), "")
    try:
        with throwaway_database(server_dsn) as (dsn, name):
            result.database = name
            reporter.step(f"rehearse: restoring {snapshot} ({info.format}) into throwaway database {name}")
            db = Database(dsn, application_name="migrator-rehearse")
            try:
                _rehearse(db, dsn, info, spec, steps, chunk_rows, reporter, result)
            finally:
                db.dispose()
    except MigratorError as exc:
        # The database could not be created or dropped: a step of its own, so the report still says why.
        result.steps.append(StepResult("throwaway database", False, 0.0, error=str(exc)))
    result.seconds = time.monotonic() - t0
    if junit:
        write_junit(result, junit)
    if report:
        write_json(result, report)
    return result


def _rehearse(
    db: Database,
    dsn: str,
    info: SnapshotInfo,
    spec: Spec,
    steps: Sequence[Step],
    chunk_rows: int,
    reporter: Reporter,
    result: RehearsalResult,
) -> None:
    t0 = time.monotonic()
    try:
        with db.connect(autocommit=True) as conn:
            server_major = conn.info.server_version // 10000
        details = restore(info, dsn, server_major)
        result.steps.append(StepResult("restore snapshot", True, time.monotonic() - t0, "legacy", details))
    except MigratorError as exc:
        result.steps.append(StepResult("restore snapshot", False, time.monotonic() - t0, error=str(exc)))
        result.steps += [StepResult(s.name, False, 0.0, skipped=True) for s in steps]
        return
    r = Rehearsal(Context(spec, db, reporter=reporter), chunk_rows=chunk_rows)
    with db.connect(autocommit=True) as conn:
        start = state.read(conn, spec).state
    if start != lifecycle.START:
        # A snapshot taken mid-migration: roll the copy back first, so every phase is rehearsed from the start.
        steps = [replace(back_to(lifecycle.START), name=f"rollback snapshot from {start}"), *steps]
    failed = False
    for step in steps:
        if failed:
            result.steps.append(StepResult(step.name, False, 0.0, skipped=True))
            continue
        outcome = _run_step(step, r)
        result.steps.append(outcome)
        failed = not outcome.ok
    result.validation = r.validations[-1] if r.validations else None

"""rehearse: restore a pg_dump snapshot into a throwaway database and run the whole lifecycle on it — every forward
phase through contract, every rollback one state at a time back to the start (the one from contracted included),
every phase again, and finalize last (it has no rollback) — with the real guards, validating after every step
where the split side is complete. What CI runs on a copy of production before a release: a green rehearsal means
a real run's guards pass on that data.

What differs from a real run is said in the report's `notes`: the quiet periods are shortened (the rehearsal
cannot wait a minute per guard), validate accepts the quarantine (and reports how many rows), and a synthetic writer
(demo.Writer) plays the application for the built-in spec — inserts, updates, type changes and deletes on the side
each state writes; it knows only that spec's tables, so other specs are rehearsed without one.

The steps come from the lifecycle table (`default_steps`): an advance is a phase's `apply`, a rollback is
`operations.rollback` by one state. The throwaway database is dropped whatever happens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg

from migrator import demo, lifecycle, operations, state, status
from migrator.db import Database
from migrator.engine.context import Context, NullReporter, Reporter
from migrator.errors import MigratorError
from migrator.phases import contract, finalize, switch_reads, validate
from migrator.phases.base import Phase, RollbackOptions
from migrator.phases.validate import Validate
from migrator.snapshots import SnapshotInfo, inspect_snapshot, restore, throwaway_database
from migrator.spec import Spec
from migrator.verify.reports import JUnitCase, write_json, write_junit
from migrator.verify.result import ValidationFailed, ValidationResult
from migrator.verify.runner import DEFAULT_CHUNK_ROWS, run_validation

# How far a rehearsal goes forward: the whole lifecycle.
REHEARSE_UNTIL = lifecycle.STATES[-1]
# A real run's default quiet period (contract, and the rollback that removes the reverse sync).
REAL_QUIET_PERIOD = contract.Options().quiet_period


@dataclass(frozen=True)
class Settings:
    """How a rehearsal differs from a real run; each difference is written in the report's notes."""

    # Seconds without direct writes that contract (legacy side) and the rollback from read_new (split side) require;
    # a real run's default is a minute. Each guard keeps checking for up to `wait` seconds before it refuses.
    quiet_period: float = 1.0
    wait: float = 30.0
    # contract leaves the compatibility view, so its creation and the rollback that removes it are rehearsed too.
    compat_view: bool = True
    # The synthetic application's transactions per second (0: no writer).
    writer_rate: float = 40.0
    # Keys per validated chunk.
    chunk_rows: int = DEFAULT_CHUNK_ROWS

    def rollback_options(self) -> RollbackOptions:
        return RollbackOptions(quiet_period=self.quiet_period, wait=self.wait)


DEFAULT_SETTINGS = Settings()

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
    """The steps of one rehearsal, what differed from a real run, and the last full validation."""

    snapshot: str
    database: str
    steps: list[StepResult] = field(default_factory=list)
    validation: ValidationResult | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    writer: dict[str, Any] | None = None
    settings: Settings = DEFAULT_SETTINGS

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps) and (self.validation is None or self.validation.ok)

    @property
    def failed_step(self) -> StepResult | None:
        return next((s for s in self.steps if not s.ok and not s.skipped), None)

    @property
    def final_state(self) -> str | None:
        done = [s for s in self.steps if not s.skipped and s.state]
        return done[-1].state if done else None

    @property
    def suite_name(self) -> str:
        return f"migrator rehearse {Path(self.snapshot).name}"

    def summary(self) -> str:
        done = [s for s in self.steps if not s.skipped]
        failed = self.failed_step
        if self.ok or failed is None:
            return f"rehearsal passed: {len(done)} steps in {self.seconds:.1f} s on a copy of {self.snapshot}"
        return f"rehearsal failed at step {failed.name!r}: {failed.error or 'validation found mismatches'}"

    def junit_cases(self) -> list[JUnitCase]:
        cases = []
        for s in self.steps:
            shown = {k: v for k, v in s.details.items() if k != "failures"}
            detail = ", ".join(f"{k}={v}" for k, v in shown.items())
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
        failed = self.failed_step
        return {
            "snapshot": self.snapshot,
            "database": self.database,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "final_state": self.final_state,
            "failed_step": failed.name if failed else None,
            "notes": self.notes,
            "settings": asdict(self.settings),
            "writer": self.writer,
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
    """What a step gets: a context on the throwaway database, the settings, the validations so far, the synthetic
    writer (None when the spec is not the one it writes), and notes for the report."""

    ctx: Context
    settings: Settings = DEFAULT_SETTINGS
    validations: list[ValidationResult] = field(default_factory=list)
    writer: demo.Writer | None = None
    notes: list[str] = field(default_factory=list)
    # Quarantined rows each validate step accepted.
    accepted: list[int] = field(default_factory=list)
    _keys: list[str] = field(default_factory=list, repr=False)

    def context(self) -> Context:
        return Context(self.ctx.spec, self.ctx.db, self.ctx.lock_timeout, self.ctx.reporter, reason="rehearse")

    def validate(self) -> ValidationResult:
        result = run_validation(
            self.ctx.require_db(), self.ctx.spec, chunk_rows=self.settings.chunk_rows, reporter=self.ctx.reporter
        )
        self.validations.append(result)
        return result

    def note(self, text: str, key: str | None = None) -> None:
        """Add a note for the report; a note with the same `key` (or text) is replaced, not repeated."""
        key = key or text
        if key in self._keys:
            self.notes[self._keys.index(key)] = text
        else:
            self._keys.append(key)
            self.notes.append(text)


StepFn = Callable[[Rehearsal], dict[str, Any] | None]


@dataclass(frozen=True)
class Step:
    """One rehearsal step; with `validate_after`, a full validation follows and must be clean."""

    name: str
    run: StepFn
    validate_after: bool = False


def advance(phase: Phase[Any], *, again: bool = False) -> Step:
    """A step that runs one phase's apply() with its guards; a full validation follows where the split side holds
    every row (validate validates itself)."""

    def run(r: Rehearsal) -> dict[str, Any] | None:
        phase.apply(r.context())
        if isinstance(phase, Validate) and phase.result is not None:
            r.validations.append(phase.result)
            return _accepted(r, phase.result)
        return None

    complete = lifecycle.stage(phase.entered).split_complete
    return Step(phase.name + (" again" if again else ""), run, complete and not isinstance(phase, Validate))


def _accepted(r: Rehearsal, result: ValidationResult) -> dict[str, Any]:
    """What validate accepted: a real run needs --accept-quarantine for it (or the rows fixed), and contract still
    refuses accepted keys that other tables reference — so the report says it."""
    quarantine = result.quarantine
    if not quarantine.open:
        return {"quarantine_accepted": 0}
    r.accepted.append(quarantine.open)
    counts = " and ".join(f"{n:,}" for n in r.accepted)
    r.note(
        f"validate accepted {counts} quarantined row(s) (a real run needs `migrator validate "
        "--accept-quarantine`, or the rows fixed in the legacy table first); they stay in the legacy table only",
        key="accepted",
    )
    return {
        "quarantine_accepted": quarantine.open,
        "quarantine_by_sqlstate": quarantine.by_sqlstate,
        "quarantine_referenced_by": quarantine.referenced_by,
    }


def back_to(to_state: str, opts: RollbackOptions | None = None, *, validate_after: bool | None = None) -> Step:
    """A step that rolls back (one state at a time, as on-call would) down to `to_state`; validated after where the
    split side holds every row."""

    def run(r: Rehearsal) -> dict[str, Any] | None:
        steps = operations.rollback(r.context(), to_state, opts or r.settings.rollback_options())
        return {"rolled_back": " -> ".join([steps[0][0], *(to for _, to in steps)]) if steps else ""}

    if validate_after is None:
        validate_after = lifecycle.stage(to_state).split_complete
    return Step(f"rollback to {to_state}", run, validate_after)


def rehearsal_phase(name: str, settings: Settings = DEFAULT_SETTINGS) -> Phase[Any]:
    """The phase `name` as the rehearsal runs it: the real guards, with the settings' quiet periods."""
    cls = operations.PHASES[name]
    if cls is Validate:
        # A snapshot of production usually has dirty rows: accepted here and reported, so every later step runs.
        return cls(validate.Options(accept_quarantine=True, chunk_rows=settings.chunk_rows))
    if cls.options_type is contract.Options:
        return cls(
            contract.Options(quiet_period=settings.quiet_period, compat_view=settings.compat_view, wait=settings.wait)
        )
    if cls.options_type is switch_reads.Options:
        return cls(switch_reads.Options(percent=100))
    if cls.options_type is finalize.Options:
        # The retention period is a real run's wait; the quiet period on the compatibility view is rehearsed.
        return cls(finalize.Options(min_age=0, quiet_period=settings.quiet_period, wait=settings.wait))
    return cls()


def default_steps(
    until: str = REHEARSE_UNTIL, settings: Settings = DEFAULT_SETTINGS, *, again: bool = True
) -> tuple[Step, ...]:
    """Forward from the start to `until` (as far as a rollback can come back from), back one state at a time to
    the start, and (with `again`) forward again: every phase and every rollback on the way, in lifecycle order.
    With `again`, the phases past the last state a rollback leaves (finalize) end the rehearsal, once."""
    states = lifecycle.between(lifecycle.START, until)
    reversible = [s for s in states if s in lifecycle.REVERSIBLE]
    phases = [p for p in (lifecycle.stage(s).enter for s in reversible[1:]) if p]
    final = [p for p in (lifecycle.stage(s).enter for s in states[len(reversible) :]) if p]
    forward = [advance(rehearsal_phase(p, settings)) for p in phases]
    back = [back_to(s, settings.rollback_options()) for s in reversed(reversible[:-1])]
    forward_again = [advance(rehearsal_phase(p, settings), again=True) for p in phases] if again else []
    last = [advance(rehearsal_phase(p, settings)) for p in final] if again else []
    return (*forward, *back, *forward_again, *last)


DEFAULT_STEPS: tuple[Step, ...] = default_steps()


def _run_step(step: Step, r: Rehearsal) -> StepResult:
    t0 = time.monotonic()
    r.ctx.reporter.step(f"rehearse: {step.name}")
    before = len(r.validations)
    writes_before = _writer_counts(r)
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
    seconds = time.monotonic() - t0
    if r.writer is not None:
        transactions, failures = (a - b for a, b in zip(_writer_counts(r), writes_before, strict=True))
        details["writer"] = {"transactions": transactions, "failures": failures}
        if failures and ok:
            ok = False
            first = r.writer.stats.errors[-1] if r.writer.stats.errors else "no message"
            error = f"the synthetic writer saw {failures} failed transaction(s) during this step: {first}"
    current, counts = _counts(r)
    details.update(counts)
    return StepResult(step.name, ok, seconds, current, details, error)


def _writer_counts(r: Rehearsal) -> tuple[int, int]:
    return (r.writer.stats.transactions, r.writer.stats.failures) if r.writer is not None else (0, 0)


def _counts(r: Rehearsal) -> tuple[str, dict[str, Any]]:
    """The state after a step, and the row counts of the legacy (or archived) table, the split tables and the open
    quarantine: what the JSON report shows per step."""
    st = status.collect(r.ctx.require_db(), r.ctx.spec)
    rows = {t.table: t.rows for t in st.tables if t.exists}
    return st.state, {"rows": rows, "quarantine_open": st.quarantine_open}


def rehearse(
    server_dsn: str | None,
    snapshot: Path,
    spec: Spec,
    *,
    junit: Path | None = None,
    report: Path | None = None,
    reporter: Reporter | None = None,
    steps: Sequence[Step] | None = None,
    settings: Settings = DEFAULT_SETTINGS,
) -> RehearsalResult:
    """Restore `snapshot` into a throwaway database on server_dsn's server (an embedded PostgreSQL when None), run
    `steps` (default: the whole lifecycle, `default_steps(settings=settings)`) on it, write the reports, drop the
    database. A failed step ends the rehearsal (the rest are skipped); the result says which, and `ok` is the CI
    gate."""
    reporter = reporter or NullReporter()
    steps = default_steps(settings=settings) if steps is None else steps
    info = inspect_snapshot(Path(snapshot))
    t0 = time.monotonic()
    result = RehearsalResult(str(snapshot), "", settings=settings)
    try:
        with throwaway_database(server_dsn) as (dsn, name):
            result.database = name
            reporter.step(f"rehearse: restoring {snapshot} ({info.format}) into throwaway database {name}")
            db = Database(dsn, application_name="migrator-rehearse")
            try:
                _rehearse(db, dsn, info, spec, steps, settings, reporter, result)
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
    settings: Settings,
    reporter: Reporter,
    result: RehearsalResult,
) -> None:
    t0 = time.monotonic()
    try:
        with db.connect(autocommit=True) as conn:
            server_major = conn.info.server_version // 10000
        details = restore(info, dsn, server_major)
        result.steps.append(StepResult("restore snapshot", True, time.monotonic() - t0, lifecycle.START, details))
    except MigratorError as exc:
        result.steps.append(StepResult("restore snapshot", False, time.monotonic() - t0, error=str(exc)))
        result.steps += [StepResult(s.name, False, 0.0, skipped=True) for s in steps]
        return
    r = Rehearsal(Context(spec, db, reporter=reporter), settings)
    result.notes = r.notes
    if any(s.name == "finalize" for s in steps):
        r.note("finalize ran with --min-age 0 (a real run keeps the archive for 7 days after contract by default)")
    r.note(
        f"quiet periods shortened to {settings.quiet_period:g} s (a real run's default: {REAL_QUIET_PERIOD:g} s) "
        f"for contract and for the rollback that removes the reverse sync, each checked for up to "
        f"{settings.wait:g} s"
    )
    with db.connect(autocommit=True) as conn:
        start = state.read(conn, spec).state
    first: list[Step] = []
    if start != lifecycle.START:
        # A snapshot taken mid-migration: roll the copy back first, so every phase is rehearsed from the start.
        rollback = back_to(lifecycle.START, settings.rollback_options())
        first.append(replace(rollback, name=f"rollback snapshot from {start}"))
    failed = False
    try:
        for i, step in enumerate([*first, *steps]):
            if failed:
                result.steps.append(StepResult(step.name, False, 0.0, skipped=True))
                continue
            if i == len(first):
                # The synthetic application starts once the copy is at the start (it writes the legacy table there).
                _start_writer(r, dsn, spec, settings)
            outcome = _run_step(step, r)
            result.steps.append(outcome)
            failed = not outcome.ok
    finally:
        if r.writer is not None:
            stats = r.writer.stop()
            result.writer = {
                "rate": settings.writer_rate,
                "transactions": stats.transactions,
                "legacy_writes": stats.legacy_writes,
                "split_writes": stats.split_writes,
                "failures": stats.failures,
                "errors": stats.errors,
            }
    result.validation = r.validations[-1] if r.validations else None


def _start_writer(r: Rehearsal, dsn: str, spec: Spec, settings: Settings) -> None:
    """Start demo.Writer on the copy when it fits the spec; the notes say which way it went."""
    if settings.writer_rate <= 0:
        r.note("no synthetic writer (writer rate 0): the rehearsal ran without concurrent writes")
        return
    if not demo.writer_fits(spec):
        r.note(
            f"no synthetic writer: it writes the built-in spec's tables (core_project and its split tables), and "
            f"this spec splits {spec.source.schema_}.{spec.source.table}; the rehearsal ran without concurrent writes"
        )
        return
    writer = demo.Writer(dsn, spec, rate=settings.writer_rate)
    if not writer.ready():
        r.note(f"no synthetic writer: {writer.stats.setup_error}; the rehearsal ran without concurrent writes")
        return
    writer.start()
    r.writer = writer
    r.note(
        f"a synthetic writer ({settings.writer_rate:g} transactions/s) followed the flags throughout: inserts, "
        "updates, type changes and deletes on the side each state writes"
    )

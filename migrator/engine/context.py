"""What a phase runs with (Context: spec, database, DDL lock timeout, reporter, observer) and what verify() returns
(Report)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg

from migrator.db import DEFAULT_LOCK_TIMEOUT, Database
from migrator.engine.actions import Action
from migrator.engine.health import Health, Limits, Reading
from migrator.spec import Spec
from migrator.sqlgen import names
from migrator.sqlgen.compose import as_text


@dataclass
class Report:
    """What verify() found: passed checks and failures, each a short sentence."""

    phase: str
    failures: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def check(self, condition: bool, passed: str, failed: str) -> None:
        (self.checks if condition else self.failures).append(passed if condition else failed)

    def check_done(self, conn: psycopg.Connection[Any], actions: Sequence[Action]) -> None:
        """Record whether each action's effect is in place (actions without a done check are skipped)."""
        for action in actions:
            if action.done_check is not None:
                row = conn.execute(action.done_check).fetchone()
                self.check(bool(row and row[0]), f"done: {action.description}", f"not done: {action.description}")


class Reporter(Protocol):
    """Where phases send progress; console.py renders it, tests collect it."""

    def step(self, message: str) -> None: ...

    def progress(self, done: int, total: int | None, **fields: Any) -> None: ...


class NullReporter:
    def step(self, message: str) -> None:
        pass

    def progress(self, done: int, total: int | None, **fields: Any) -> None:
        pass


class Observer(Protocol):
    """Who watches a job besides its reporter: metrics (migrator.metrics) and event hooks (migrator.hooks).

    `event` is told what happened (a named event and its fields; it must not fail the job), `gate` asks before a
    step that cannot be undone and raises to refuse it."""

    def event(self, name: str, **fields: Any) -> None: ...

    def gate(self, name: str, **fields: Any) -> None: ...


class NullObserver:
    def event(self, name: str, **fields: Any) -> None:
        pass

    def gate(self, name: str, **fields: Any) -> None:
        pass


class Observers:
    """Several observers as one: each is told every event, each gate is asked in turn."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = list(observers)

    def event(self, name: str, **fields: Any) -> None:
        for observer in self.observers:
            observer.event(name, **fields)

    def gate(self, name: str, **fields: Any) -> None:
        for observer in self.observers:
            observer.gate(name, **fields)


class Observed:
    """A reporter that also tells an observer each step and progress line (`job` names the job in the event), so
    metrics and hooks follow the progress the phases report anyway, without a parameter of their own."""

    def __init__(self, inner: Reporter, observer: Observer, job: str) -> None:
        self.inner, self.observer, self.job = inner, observer, job

    def step(self, message: str) -> None:
        self.inner.step(message)
        self.observer.event("step", job=self.job, message=message)

    def progress(self, done: int, total: int | None, **fields: Any) -> None:
        self.inner.progress(done, total, **fields)
        self.observer.event("progress", job=self.job, done=done, total=total, **fields)


@dataclass
class Context:
    """Everything a phase runs with: the spec, the database (None for an offline plan), the DDL lock timeout, a
    reporter, the reason recorded in the audit log, and who else watches (metrics, hooks: `observer`). What a
    phase may be asked to do differently is its own typed Options, given to the phase, not carried here."""

    spec: Spec
    db: Database | None = None
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    reporter: Reporter = field(default_factory=NullReporter)
    reason: str | None = None
    observer: Observer = field(default_factory=NullObserver)

    def require_db(self) -> Database:
        if self.db is None:
            raise RuntimeError("this step needs a database connection")
        return self.db

    def announce(self) -> Callable[[Action, bool], None]:
        """An on_step callback for run_actions that tells the reporter each step (or that it was already done)."""

        def on_step(action: Action, ran: bool) -> None:
            self.reporter.step(action.description if ran else f"{action.description} (already done)")

        return on_step

    def health(self, limits: Limits, on_step: Callable[[str], None] | None = None) -> Health:
        """The health a long job of this migration waits on between chunks: it says when it pauses and resumes
        (`on_step`, default the reporter) and shows the observer every reading, and each signal that turns red
        (throttled) or green again (unthrottled)."""
        red: dict[str, str] = {}

        def on_read(readings: list[Reading]) -> None:
            self.observer.event("health", readings=readings)
            for r in readings:
                if r.red and r.signal not in red:
                    red[r.signal] = r.detail
                    self.observer.event("throttled", signal=r.signal, detail=r.detail)
                elif not r.red and r.signal in red:
                    self.observer.event("unthrottled", signal=r.signal, detail=red.pop(r.signal))

        spec = self.spec
        tables = [as_text(names.source(spec)), *(as_text(names.split(spec, t)) for t in spec.split_tables())]
        return Health(tables, limits, on_change=on_step or self.reporter.step, on_read=on_read)

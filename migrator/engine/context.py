"""What a phase runs with (Context: spec, database, DDL lock timeout, reporter) and what verify() returns (Report)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg

from migrator.db import DEFAULT_LOCK_TIMEOUT, Database
from migrator.engine.actions import Action
from migrator.spec import Spec


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


@dataclass
class Context:
    """Everything a phase runs with: the spec, the database (None for an offline plan), the DDL lock timeout, a
    reporter, and the reason recorded in the audit log. What a phase may be asked to do differently is its own
    typed Options, given to the phase, not carried here."""

    spec: Spec
    db: Database | None = None
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    reporter: Reporter = field(default_factory=NullReporter)
    reason: str | None = None

    def require_db(self) -> Database:
        if self.db is None:
            raise RuntimeError("this step needs a database connection")
        return self.db

    def announce(self) -> Callable[[Action, bool], None]:
        """An on_step callback for run_actions that tells the reporter each step (or that it was already done)."""

        def on_step(action: Action, ran: bool) -> None:
            self.reporter.step(action.description if ran else f"{action.description} (already done)")

        return on_step

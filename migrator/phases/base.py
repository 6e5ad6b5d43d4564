"""What every phase shares: the Action a plan is made of, the run context, and the report a verify returns.

`plan()` returns Actions; `apply()` executes exactly those Actions. The dry run and the live run share one path,
so what `migrator plan` prints is what `migrator <phase>` runs.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from psycopg import sql

from migrator import retry
from migrator.db import DEFAULT_LOCK_TIMEOUT, Database
from migrator.spec import Spec
from migrator.sqlfiles import as_text, ident, literal, raw

PG_MAX_IDENT_BYTES = 63
# A transaction that locks both the legacy and the split tables meets application transactions that lock them in
# either order (forward sync: legacy then split; reverse sync: split then legacy). Waiting less than PostgreSQL's
# deadlock_timeout (1 s by default) means we give up and retry before the deadlock detector could pick an
# application transaction as its victim.
MULTI_TABLE_LOCK_TIMEOUT = 0.1

# What psycopg can execute: a plain SQL fragment or a composition of them.
Query = sql.SQL | sql.Composed


class RateLimiter:
    """Keeps a long job (shared by its threads) at or under `rate` rows per second: after each piece of work,
    wait until the rows done so far are due. On a busy primary the cap leaves CPU to the application."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.rows = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def done(self, rows: int) -> None:
        if not self.rate:
            return
        with self._lock:
            self.rows += rows
            due = self.rows / self.rate - (time.monotonic() - self.started)
        if due > 0:
            time.sleep(min(due, 5.0))


def after_cursor(spec: Spec, alias: str, has_cursor: bool) -> sql.Composable:
    """The keyset condition of a chunk: `alias.pk > %(lo)s`, or TRUE for a range's first chunk."""
    if not has_cursor:
        return raw("TRUE")
    # alias is one of our own fixed table aliases ("l", "s"), written as the templates write it
    return sql.SQL("{}.{} > %(lo)s::{}").format(raw(alias), ident(spec.pk), raw(spec.source.primary_key_type))


def object_name(*parts: str, suffix: str) -> str:
    """A deterministic constraint/index/trigger name that fits in 63 bytes (a hash keeps truncated names unique)."""
    name = "_".join([*parts, suffix])
    if len(name.encode()) <= PG_MAX_IDENT_BYTES:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]  # noqa: S324 — a name tag, not security
    head = name.encode()[: PG_MAX_IDENT_BYTES - len(suffix) - 10].decode(errors="ignore")
    return f"{head}_{digest}_{suffix}"


@dataclass(frozen=True)
class Action:
    """One step of a plan: a statement, whether it may run inside a transaction, and how to tell it is done."""

    description: str
    statement: Query
    transactional: bool = True
    # SQL returning one boolean: true when the step's effect is already there (re-running after a crash skips it).
    done_check: Query | None = None
    # Run (outside a transaction) before the statement when it is not done: removes a broken leftover, such as
    # the INVALID index a failed CREATE INDEX CONCURRENTLY leaves behind.
    cleanup: Query | None = None
    # None: the run's DDL lock timeout (--lock-timeout); a number: this step's own (0 = wait forever).
    lock_timeout: float | None = None
    # Brief DDL gets a bound; scans that are slow by nature (VALIDATE, CONCURRENTLY) say 0 = no limit.
    statement_timeout: float = 60.0

    def text(self) -> str:
        return as_text(self.statement).strip()


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
    """Everything a phase needs: the spec, the database (None for an offline plan), timeouts, a reporter."""

    spec: Spec
    db: Database | None = None
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    reporter: Reporter = field(default_factory=NullReporter)
    options: dict[str, Any] = field(default_factory=dict)

    def require_db(self) -> Database:
        if self.db is None:
            raise RuntimeError("this step needs a database connection")
        return self.db


class Phase(Protocol):
    name: str

    def plan(self, ctx: Context) -> list[Action]: ...

    def apply(self, ctx: Context) -> None: ...

    def verify(self, ctx: Context) -> Report: ...

    def rollback(self, ctx: Context) -> None: ...


def statements(action: Action, lock_timeout: float | None) -> list[Query]:
    """The exact statements that carry out one action, as run and as `plan` prints them."""
    run_timeout = lock_timeout if lock_timeout is not None else DEFAULT_LOCK_TIMEOUT
    timeout = action.lock_timeout if action.lock_timeout is not None else run_timeout
    settings: list[tuple[str, float]] = [("statement_timeout", action.statement_timeout)]
    if timeout is not None:
        settings.insert(0, ("lock_timeout", timeout))
    if action.transactional:
        local = [sql.SQL("SET LOCAL {} = {}").format(raw(k), literal(_ms(v))) for k, v in settings]
        return [sql.SQL("BEGIN"), *local, action.statement, sql.SQL("COMMIT")]
    session = [sql.SQL("SET {} = {}").format(raw(k), literal(_ms(v))) for k, v in settings]
    reset = [sql.SQL("RESET {}").format(raw(k)) for k, _ in settings]
    return [*session, action.statement, *reset]


def _ms(seconds: float) -> str:
    return f"{int(seconds * 1000)}ms"


def positional(text: str) -> str:
    """Bind parameters as $1, $2 … (as in a PREPARE), which linters and psql parse; psycopg's %(name)s are not SQL."""
    seen: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        return f"${seen.setdefault(match.group(1), len(seen) + 1)}"

    return re.sub(r"%\((\w+)\)s", number, text)


def script(actions: Sequence[Action], lock_timeout: float | None = None) -> str:
    """A plan as a SQL script: what `migrator plan` prints and what squawk lints."""
    out: list[str] = []
    for action in actions:
        out.append(f"-- {action.description}")
        out.extend(positional(as_text(stmt).strip()) + ";" for stmt in statements(action, lock_timeout))
        out.append("")
    return "\n".join(out)


def run_actions(
    conn: psycopg.Connection[Any],
    actions: Sequence[Action],
    *,
    on_step: Callable[[Action, bool], None] | None = None,
    lock_timeout: float | None = None,
) -> None:
    """Execute a plan on an autocommit connection: each transactional step in its own short transaction under
    SET LOCAL lock_timeout, retried with backoff on lock timeout or deadlock; CONCURRENTLY steps outside one."""
    assert conn.autocommit, "run_actions needs an autocommit connection (CONCURRENTLY cannot run in a transaction)"
    for action in actions:
        if action.done_check is not None:
            row = conn.execute(action.done_check).fetchone()
            if row and row[0]:
                if on_step:
                    on_step(action, False)
                continue

        def attempt(action: Action = action) -> None:
            if action.cleanup is not None:
                conn.execute(action.cleanup)
            try:
                for stmt in statements(action, lock_timeout):
                    conn.execute(stmt)
            except BaseException:
                # A failed step leaves an aborted transaction or a session lock_timeout behind; clear both.
                if not conn.closed:
                    conn.execute("ROLLBACK") if conn.info.transaction_status else None
                    conn.execute("RESET lock_timeout")
                    conn.execute("RESET statement_timeout")
                raise

        # Short lock timeouts need more tries: ~30 attempts with backoff wait up to a few minutes in all.
        retry.run_with_retry(attempt, attempts=30, max_wait=10.0)
        if on_step:
            on_step(action, True)


def check_done(report: Report, conn: psycopg.Connection[Any], actions: Sequence[Action]) -> None:
    """Record in `report` whether each action's effect is in place (actions without a done check are skipped)."""
    for action in actions:
        if action.done_check is not None:
            row = conn.execute(action.done_check).fetchone()
            report.check(bool(row and row[0]), f"done: {action.description}", f"not done: {action.description}")


def announce(ctx: Context) -> Callable[[Action, bool], None]:
    def on_step(action: Action, ran: bool) -> None:
        ctx.reporter.step(action.description if ran else f"{action.description} (already done)")

    return on_step

"""The Action a plan is made of, and the one runner that executes it.

`plan()` returns Actions; `apply()` executes exactly those Actions. The dry run and the live run share one path,
so what `migrator plan` prints is what `migrator <phase>` runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from migrator.db import DEFAULT_LOCK_TIMEOUT
from migrator.engine import retry
from migrator.engine.session import ms
from migrator.sqlgen.compose import as_text, literal, raw

# What psycopg can execute: a plain SQL fragment or a composition of them.
Query = sql.SQL | sql.Composed


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


def statements(action: Action, lock_timeout: float | None) -> list[Query]:
    """The exact statements that carry out one action, as run and as `plan` prints them."""
    run_timeout = lock_timeout if lock_timeout is not None else DEFAULT_LOCK_TIMEOUT
    timeout = action.lock_timeout if action.lock_timeout is not None else run_timeout
    settings: list[tuple[str, float]] = [("statement_timeout", action.statement_timeout)]
    if timeout is not None:
        settings.insert(0, ("lock_timeout", timeout))
    if action.transactional:
        local = [sql.SQL("SET LOCAL {} = {}").format(raw(k), literal(ms(v))) for k, v in settings]
        return [sql.SQL("BEGIN"), *local, action.statement, sql.SQL("COMMIT")]
    session = [sql.SQL("SET {} = {}").format(raw(k), literal(ms(v))) for k, v in settings]
    reset = [sql.SQL("RESET {}").format(raw(k)) for k, _ in settings]
    return [*session, action.statement, *reset]


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

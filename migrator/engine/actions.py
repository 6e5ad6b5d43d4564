"""The Action a plan is made of, and the one runner that executes it.

`plan()` returns Actions; `apply()` executes exactly those Actions. The dry run and the live run share one path,
so what `migrator plan` prints is what `migrator <phase>` runs.

A transition that commits several steps records each in the step's own transaction (`record`), and its state
change in its last step's (`finish`): killed between two statements, it leaves a state that says what was done.
The kill hook below lets the tests check that at every statement boundary.
"""

from __future__ import annotations

import os
import re
import signal
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
Conn = psycopg.Connection[Any]

# -- the kill hook (tests): die at a statement boundary ----------------------------------------------------------

# MIGRATOR_KILL_AT=<n>: the process SIGKILLs itself (kill -9) right after the n-th statement boundary (_KillHook).
KILL_ENV = "MIGRATOR_KILL_AT"


class Killed(BaseException):
    """Raised by the in-process kill hook (kill_after): the session is gone, as after a kill -9. A BaseException,
    so no `except Exception` on the way out treats it as an error it could handle."""


class _KillHook:
    """Counts statement boundaries: every statement run_actions executes, and every reverse-backfill chunk commit."""

    def __init__(self) -> None:
        self.seen = 0
        self.at: int | None = None
        # Tests: for each boundary passed, whether something had just committed there (None: not traced).
        self.trace: list[bool] | None = None

    def boundary(self, conn: Conn, committed: bool) -> None:
        self.seen += 1
        if self.trace is not None:
            self.trace.append(committed)
        env = os.environ.get(KILL_ENV)
        if env and self.seen == int(env):
            os.kill(os.getpid(), signal.SIGKILL)
        if self.at is not None and self.seen == self.at:
            self.at = None
            conn.close()  # what a kill does to the session: its open transaction is rolled back by the server
            raise Killed(f"killed after statement {self.seen}")


KILL_HOOK = _KillHook()


def kill_after(n: int | None, *, trace: bool = False) -> None:
    """Tests: count boundaries from 0 again; raise Killed (closing the session) right after the n-th (None: never).
    `trace`: remember which boundaries follow a commit (committed_boundaries)."""
    KILL_HOOK.seen, KILL_HOOK.at, KILL_HOOK.trace = 0, n, [] if trace else None


def boundaries() -> int:
    """How many statement boundaries were passed since kill_after() (tests enumerate the kill points with it)."""
    return KILL_HOOK.seen


def committed_boundaries() -> list[int]:
    """The traced boundaries (1-based) right after a COMMIT, a statement run outside a transaction, or a chunk."""
    return [i for i, committed in enumerate(KILL_HOOK.trace or [], 1) if committed]


def boundary(conn: Conn, committed: bool = True) -> None:
    """A statement boundary (`committed`: its statement committed something): the kill hook may end the process,
    or the session, here."""
    KILL_HOOK.boundary(conn, committed)


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
    conn: Conn,
    actions: Sequence[Action],
    *,
    on_step: Callable[[Action, bool], None] | None = None,
    lock_timeout: float | None = None,
    record: Callable[[Conn, int], None] | None = None,
    finish: Callable[[Conn], None] | None = None,
) -> None:
    """Execute a plan on an autocommit connection: each transactional step in its own short transaction under
    SET LOCAL lock_timeout, retried with backoff on lock timeout or deadlock; CONCURRENTLY steps outside one.

    `record(conn, i)` runs inside step i's transaction, just before its COMMIT (a transition's progress commits
    with the step); `finish(conn)` runs inside the last step's transaction after it (the state change commits with
    the last step). A step that is already done, or cannot run in a transaction, gets them in a transaction of its
    own; so does `finish` for an empty plan. Neither adds a statement to what `plan` prints."""
    assert conn.autocommit, "run_actions needs an autocommit connection (CONCURRENTLY cannot run in a transaction)"
    for i, action in enumerate(actions):
        last = i == len(actions) - 1
        has_hooks = record is not None or (finish is not None and last)

        def hooks(i: int = i, last: bool = last) -> None:
            if record is not None:
                record(conn, i)
            if finish is not None and last:
                finish(conn)

        if action.done_check is not None:
            row = conn.execute(action.done_check).fetchone()
            if row and row[0]:
                if has_hooks:
                    _own_transaction(conn, hooks)
                if on_step:
                    on_step(action, False)
                continue

        def attempt(action: Action = action, hooks: Callable[[], None] = hooks, has_hooks: bool = has_hooks) -> None:
            if action.cleanup is not None:
                conn.execute(action.cleanup)
            try:
                stmts = statements(action, lock_timeout)
                for n, stmt in enumerate(stmts):
                    commit = n == len(stmts) - 1 if action.transactional else stmt is action.statement
                    if commit and action.transactional:
                        hooks()  # before COMMIT: what the step records commits with it
                    conn.execute(stmt)
                    boundary(conn, commit)
            except BaseException:
                # A failed step leaves an aborted transaction or a session lock_timeout behind; clear both.
                if not conn.closed:
                    conn.execute("ROLLBACK") if conn.info.transaction_status else None
                    conn.execute("RESET lock_timeout")
                    conn.execute("RESET statement_timeout")
                raise
            if not action.transactional and has_hooks:
                _own_transaction(conn, hooks)

        # Short lock timeouts need more tries: ~30 attempts with backoff wait up to a few minutes in all.
        retry.run_with_retry(attempt, attempts=30, max_wait=10.0)
        if on_step:
            on_step(action, True)
    if not actions and finish is not None:
        _own_transaction(conn, lambda: finish(conn))


def _own_transaction(conn: Conn, fn: Callable[[], None]) -> None:
    with conn.transaction():
        fn()

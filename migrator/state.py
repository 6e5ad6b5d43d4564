"""The flag state machine, persisted in the `migrator` schema (the states and their order: lifecycle.STAGES).

Every transition holds the migration's advisory lock (a second operator is refused, told who holds it), checks
the state it starts from, records an audit row and sends NOTIFY migrator_flags, all in the transaction that
moves the state, so an application listening never sees a state the audit log does not.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from migrator import jsonenc
from migrator.db import Database, advisory_lock, operator_name, table_exists
from migrator.engine.actions import Action
from migrator.errors import WrongState
from migrator.lifecycle import START, STATES, next_command
from migrator.spec import Spec
from migrator.sqlgen import names
from migrator.sqlgen.compose import ident, join, literal, raw, render

NOTIFY_CHANNEL = "migrator_flags"


@dataclass(frozen=True)
class State:
    migration: str
    state: str
    read_percent: int
    paused: bool
    updated_at: datetime | None
    updated_by: str | None


def lock_parts(spec: Spec) -> tuple[str, str, str]:
    return ("migrator", spec.state_schema, spec.migration_name)


def schema_action(spec: Spec) -> Action:
    """Create the state schema (state, transitions, quarantine, flag functions) when absent."""
    return Action(
        f"create state schema {spec.state_schema} (flags, audit log, quarantine)",
        render("state_schema", schema=ident(spec.state_schema), states=join([literal(s) for s in STATES])),
    )


def read(conn: psycopg.Connection[Any], spec: Spec) -> State:
    """The migration's state; `legacy` when the state schema does not exist yet."""
    if not table_exists(conn, spec.state_schema, "state"):
        return State(spec.migration_name, START, 0, False, None, None)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(render("state_select", state=names.state(spec, "state")), {"migration": spec.migration_name})
        row = cur.fetchone()
    if row is None:
        return State(spec.migration_name, START, 0, False, None, None)
    return State(
        spec.migration_name, row["state"], row["read_percent"], row["paused"], row["updated_at"], row["updated_by"]
    )


def require(current: State, allowed: tuple[str, ...], command: str) -> None:
    """Refuse a command in the wrong state, naming the command that comes next."""
    if current.state in allowed:
        return
    nxt = next_command(current.state)
    want = " or ".join(allowed)
    hint = f"run `migrator {nxt}` next" if nxt else "the migration is complete; `migrator rollback` goes back"
    raise WrongState(f"`{command}` needs state {want}; the migration is in {current.state}", hint=hint)


def record(
    conn: psycopg.Connection[Any],
    spec: Spec,
    *,
    from_state: str,
    to_state: str,
    command: str,
    reason: str | None = None,
    duration_ms: int | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Move the state, write the audit row and NOTIFY, in the caller's transaction."""
    params = {
        "migration": spec.migration_name,
        "from_state": from_state,
        "to_state": to_state,
        "command": command,
        "actor": operator_name(),
        "reason": reason,
        "duration_ms": duration_ms,
        "details": jsonenc.dumps(details or {}),
    }
    cur = conn.execute(
        render("state_record", state=names.state(spec, "state"), transitions=names.state(spec, "transitions")), params
    )
    if cur.rowcount != 1:
        raise WrongState(
            f"the migration left state {from_state} while `{command}` ran",
            hint="run `migrator status` to see where it is",
        )
    conn.execute(
        "SELECT pg_notify(%s, %s)",
        [NOTIFY_CHANNEL, jsonenc.dumps({"migration": spec.migration_name, "state": to_state, "from": from_state})],
    )


@dataclass
class Transition:
    """An open transition: the state it started from and a clock for the audit row."""

    spec: Spec
    conn: psycopg.Connection[Any]
    start: State
    command: str
    started: float
    db: Database | None = None
    # Owns every session this transition opened (and their locks), closed when the transition ends.
    sessions: ExitStack | None = field(default=None, repr=False)

    def reconnect(self) -> None:
        """Continue on a new session after the server dropped ours (a restart, a failover).

        The advisory lock went with the old session, so another operator may have taken it, and even moved the
        state, while we were away: take the lock again (LockHeld names who has it) and check the state is still
        the one this transition started from before anything else runs. Only for a session that is gone
        (`conn.closed`): a live one still holds the lock, and the new session would be refused by it.
        """
        if self.db is None or self.sessions is None:
            raise RuntimeError("this Transition was not opened by state.transition(); it cannot reconnect")
        conn = _locked_session(self.sessions, self.db, self.spec)
        current = read(conn, self.spec)
        if current.state != self.start.state:
            raise WrongState(
                f"the migration moved from {self.start.state} to {current.state} while `{self.command}` was "
                "reconnecting",
                hint="run `migrator status` to see where it is",
            )
        self.conn = conn

    def finish(
        self,
        to_state: str,
        *,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        flags: dict[str, Any] | None = None,
    ) -> None:
        """Move the state (and flags) in one transaction: a listener never sees one without the other."""
        ms = int((time.monotonic() - self.started) * 1000)
        with self.conn.transaction():
            if flags:
                set_flags(self.conn, self.spec, **flags)
            record(
                self.conn,
                self.spec,
                from_state=self.start.state,
                to_state=to_state,
                command=self.command,
                reason=reason,
                duration_ms=ms,
                details=details,
            )


def _locked_session(sessions: ExitStack, db: Database, spec: Spec) -> psycopg.Connection[Any]:
    conn = sessions.enter_context(db.connect(autocommit=True))
    sessions.enter_context(advisory_lock(conn, *lock_parts(spec)))
    return conn


@contextmanager
def transition(db: Database, spec: Spec, command: str, allowed: tuple[str, ...]) -> Iterator[Transition]:
    """Hold the advisory lock, check the starting state, hand the caller a Transition to finish()."""
    with ExitStack() as sessions:
        conn = _locked_session(sessions, db, spec)
        current = read(conn, spec)
        require(current, allowed, command)
        yield Transition(spec, conn, current, command, time.monotonic(), db, sessions)


def set_flags(conn: psycopg.Connection[Any], spec: Spec, **flags: Any) -> None:
    """Set read_percent / paused, and tell listeners."""
    allowed = {"read_percent", "paused"}
    assert set(flags) <= allowed, f"unknown flags {set(flags) - allowed}"
    with conn.transaction():
        for key, value in flags.items():
            conn.execute(
                render("state_set_flag", state=names.state(spec, "state"), column=raw(key)),
                {"migration": spec.migration_name, "value": value},
            )
        conn.execute(
            "SELECT pg_notify(%s, %s)", [NOTIFY_CHANNEL, jsonenc.dumps({"migration": spec.migration_name, **flags})]
        )

"""The flag state machine, persisted in the `migrator` schema (the states and their order: lifecycle.STAGES).

Every transition holds the migration's advisory lock (a second operator is refused, told who holds it), checks
the state it starts from, records an audit row and sends NOTIFY migrator_flags, all in the transaction that
moves the state, so an application listening never sees a state the audit log does not.

A transition that commits several steps before its state change (contract re-points foreign keys one by one; the
rollback from contracted restores the table, refills it, re-points them back) records each step in the state row's
`progress` as the step commits ({"command", "from", "steps", "done"}; NULL when none is in flight), and moves the
state in its last step's transaction, which clears it. Killed in between, the same command resumes it (each step
has a done check); a `rollback` from the state it started in first undoes what it did (UNDO_INTERRUPTED).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from migrator import jsonenc
from migrator.db import Database, advisory_lock, operator_name, table_exists
from migrator.engine.actions import Action, Conn, run_actions
from migrator.errors import WrongState
from migrator.lifecycle import START, STATES, next_command
from migrator.spec import Spec
from migrator.sqlgen import names, repoint
from migrator.sqlgen.compose import ident, join, literal, raw, render

log = logging.getLogger(__name__)

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
    hint = f"run `migrator {nxt}` next" if nxt else "the migration is complete; there is no rollback from it"
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
    # The state change ends whatever transition was in flight: its progress goes with it, in this transaction.
    save_progress(conn, spec, None)
    conn.execute(
        "SELECT pg_notify(%s, %s)",
        [NOTIFY_CHANNEL, jsonenc.dumps({"migration": spec.migration_name, "state": to_state, "from": from_state})],
    )


def audit(
    conn: psycopg.Connection[Any],
    spec: Spec,
    state_: str,
    command: str,
    details: dict[str, Any],
    *,
    reason: str | None = None,
    duration_ms: int | None = None,
) -> None:
    """An audit row for something that happened in a state without leaving it (from = to): not `record`, which
    moves the state row and ends a transition in flight."""
    params: dict[str, Any] = {"migration": spec.migration_name, "state": state_, "command": command}
    params |= {
        "actor": operator_name(),
        "reason": reason,
        "duration_ms": duration_ms,
        "details": jsonenc.dumps(details),
    }
    conn.execute(render("audit_row", transitions=names.state(spec, "transitions")), params)


class HealthAudit:
    """An observer (engine.context.Observer) that writes an audit row each time a long job pauses on a health
    signal and each time that signal is green again, naming the signal and what it read."""

    EDGES = {"throttled": "paused", "unthrottled": "resumed"}

    def __init__(self, db: Database, spec: Spec, state_: str, job: str) -> None:
        self.db, self.spec, self.state, self.job = db, spec, state_, job

    def event(self, name: str, **fields: Any) -> None:
        if name not in self.EDGES:
            return
        details = {"event": self.EDGES[name], "job": self.job, "signal": fields.get("signal"),
                   "detail": fields.get("detail")}  # fmt: skip
        try:
            with self.db.connect(autocommit=True) as conn:
                audit(conn, self.spec, self.state, "health", details)
        except psycopg.Error as exc:
            # The audit row is a record of the pause, not a condition of it: the job goes on.
            log.warning("could not write the health audit row (%s): %s", details["event"], exc)

    def gate(self, name: str, **fields: Any) -> None:
        pass


# -- progress of a multi-step transition -----------------------------------------------------------------------


def read_progress(conn: Conn, spec: Spec) -> dict[str, Any] | None:
    """The transition in flight ({"command", "from", "steps", "done"}), or None. Read through to_jsonb, so a state
    table created before the column existed reads as none in flight."""
    if not table_exists(conn, spec.state_schema, "state"):
        return None
    row = conn.execute(
        sql.SQL("SELECT to_jsonb(s) -> 'progress' FROM {} AS s WHERE s.migration = %s").format(
            names.state(spec, "state")
        ),
        [spec.migration_name],
    ).fetchone()
    progress = row[0] if row else None
    return progress if isinstance(progress, dict) else None


def save_progress(conn: Conn, spec: Spec, progress: dict[str, Any] | None) -> None:
    """Set (or clear) the transition's progress, in the caller's transaction."""
    if progress is None and read_progress(conn, spec) is None:
        return  # nothing in flight (or a state table without the column): no write
    conn.execute(
        sql.SQL("UPDATE {} SET progress = %s::jsonb WHERE migration = %s").format(names.state(spec, "state")),
        [None if progress is None else jsonenc.dumps(progress), spec.migration_name],
    )


def _where(progress: dict[str, Any]) -> tuple[str, str]:
    """The transition ("contract", "rollback from contracted") and how far it got."""
    command, done, total = progress.get("command", "?"), int(progress.get("done", 0)), len(progress.get("steps", []))
    what = f"rollback from {progress.get('from')}" if command == "rollback" else str(command)
    return what, f"after step {done} of {total}" if done else f"before the first of {total} steps"


def describe_running(progress: dict[str, Any], who: str) -> str:
    """One line for `status` while the transition's command still runs (`who` holds the migration's lock)."""
    what, where = _where(progress)
    return f"{what} running, {where}, by {who} — wait for it; nothing to run"


def describe_progress(progress: dict[str, Any]) -> str:
    """One line for `status` and for a refusal: what was interrupted, how far it got, and the way out."""
    what, where = _where(progress)
    if progress.get("command") == "rollback":
        return (
            f"{what} interrupted {where} — run `migrator rollback` to finish it "
            "(each step it committed is kept; the state moves when the last one commits)"
        )
    return f"{what} interrupted {where} — run `migrator {what}` to finish or `migrator rollback`"


# What undoes a transition interrupted part-way, by the command that recorded the progress: a `rollback` from the
# state it started in runs these first. Contract and finalize commit steps before their state change (each one's
# last step commits with the state): contract's re-pointed foreign keys go back to the legacy table.
UNDO_INTERRUPTED: dict[str, Callable[[Spec, Conn], list[Action]]] = {
    "contract": lambda spec, conn: repoint.repoint_actions(spec, conn, "base", only_existing=True),
    # finalize's steps before its last (the compatibility view, the sync functions and counters dropped) are what
    # the rollback from contracted re-creates anyway: nothing to undo but the progress.
    "finalize": lambda spec, conn: [],
}


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
    # This command's own progress when an earlier run of it was interrupted (the run resumes it), else None.
    progress: dict[str, Any] | None = None

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

    def recorder(self, steps: Sequence[str], offset: int = 0) -> Callable[[Conn, int], None]:
        """run_actions' `record`: step offset+i of `steps` is done, written in that step's transaction."""

        def record_step(conn: Conn, i: int) -> None:
            progress = {"command": self.command, "from": self.start.state, "steps": list(steps), "done": offset + i + 1}
            save_progress(conn, self.spec, progress)

        return record_step

    def finisher(
        self,
        to_state: str,
        *,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        before: Callable[[Conn], object] | None = None,
    ) -> Callable[[Conn], None]:
        """run_actions' `finish`: move the state (after `before`) in the caller's open transaction."""

        def finish_in(conn: Conn) -> None:
            if before is not None:
                before(conn)
            record(
                conn,
                self.spec,
                from_state=self.start.state,
                to_state=to_state,
                command=self.command,
                reason=reason,
                duration_ms=int((time.monotonic() - self.started) * 1000),
                details=details,
            )

        return finish_in

    def finish(
        self,
        to_state: str,
        *,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        flags: dict[str, Any] | None = None,
    ) -> None:
        """Move the state (and flags) in one transaction: a listener never sees one without the other."""
        with self.conn.transaction():
            if flags:
                set_flags(self.conn, self.spec, **flags)
            self.finisher(to_state, reason=reason, details=details)(self.conn)


def _locked_session(sessions: ExitStack, db: Database, spec: Spec) -> psycopg.Connection[Any]:
    conn = sessions.enter_context(db.connect(autocommit=True))
    sessions.enter_context(advisory_lock(conn, *lock_parts(spec)))
    return conn


@contextmanager
def transition(db: Database, spec: Spec, command: str, allowed: tuple[str, ...]) -> Iterator[Transition]:
    """Hold the advisory lock, check the starting state, hand the caller a Transition to finish().

    An earlier run of a multi-step transition that was interrupted: the same command gets its progress (and
    resumes), `rollback` first undoes it (or is refused when nothing knows how)."""
    with ExitStack() as sessions:
        conn = _locked_session(sessions, db, spec)
        current = read(conn, spec)
        require(current, allowed, command)
        tr = Transition(spec, conn, current, command, time.monotonic(), db, sessions)
        progress = read_progress(conn, spec)
        if progress is not None and progress.get("command") == command:
            tr.progress = progress
        elif progress is not None and command == "rollback":
            if progress.get("command") not in UNDO_INTERRUPTED:
                raise WrongState(f"`rollback` refused: {describe_progress(progress)}")
            _undo_interrupted(conn, spec, current.state, progress)
        # Any other command allowed here (validate: it only reads) runs and leaves the progress as it is.
        yield tr


def _undo_interrupted(conn: Conn, spec: Spec, state_: str, progress: dict[str, Any]) -> None:
    """Undo what an interrupted transition committed; the last undo step clears its progress, with an audit row."""
    interrupted = str(progress["command"])
    run_actions(
        conn,
        UNDO_INTERRUPTED[interrupted](spec, conn),
        finish=lambda c: record(
            c,
            spec,
            from_state=state_,
            to_state=state_,
            command="rollback",
            reason=f"undo the interrupted `{interrupted}`",
            details={"undid": interrupted, "steps_done": progress.get("done")},
        ),
    )


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

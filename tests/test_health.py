"""Health-driven pacing (issue 20, first part): a real backfill pauses while a health signal is red — a held old
transaction, a replication slot retaining WAL, a signal that cannot be read — and resumes when it clears."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

from migrator.db import Database
from migrator.engine import health
from migrator.engine.context import Context
from migrator.engine.health import Limits
from migrator.phases import backfill
from migrator.phases.backfill import Backfill
from migrator.phases.expand import Expand
from migrator.seed import seed
from migrator.spec import Spec

pytestmark = pytest.mark.db


class Collect:
    """A reporter that keeps every step message and the rows copied so far."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.rows = 0

    def step(self, message: str) -> None:
        self.steps.append(message)

    def progress(self, done: int, total: int | None, **fields: Any) -> None:
        self.rows = done


def _start(db: Database, spec: Spec, limits: Limits) -> tuple[threading.Thread, Collect, list[BaseException]]:
    reporter, errors = Collect(), []

    def run() -> None:
        try:
            Backfill(backfill.Options(health=limits, batch_size=200)).apply(Context(spec, db, reporter=reporter))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, reporter, errors


@pytest.fixture
def expanded(db: Database, projects_spec: Spec) -> Database:
    """3,000 seeded rows, expanded."""
    with db.connect() as c:
        seed(c, 3000, dirty_ratio=0.0, random_seed=2)
    Expand().apply(Context(projects_spec, db))
    return db


def _paused_then_done(thread: threading.Thread, reporter: Collect, errors: list[BaseException], clear: Any) -> None:
    time.sleep(2.5)
    assert thread.is_alive()
    assert reporter.rows == 0
    assert any(s.startswith("paused:") for s in reporter.steps), reporter.steps
    clear()
    thread.join(120)
    assert not thread.is_alive()
    assert errors == []
    assert reporter.rows >= 3000
    assert any(s.startswith("health green again") for s in reporter.steps)


def test_an_old_transaction_pauses_the_backfill(expanded: Database, projects_spec: Spec, database_url: str) -> None:
    """A transaction open longer than the limit holds the copy; once it ends, the copy runs to the end."""
    holder = psycopg.connect(database_url)
    holder.execute("SELECT pg_catalog.txid_current()")
    time.sleep(1.2)
    thread, reporter, errors = _start(expanded, projects_spec, Limits(max_transaction_age=1.0))
    try:
        _paused_then_done(thread, reporter, errors, holder.commit)
        assert any("open longer than 1 s" in s for s in reporter.steps)
    finally:
        holder.close()


def test_a_slot_retaining_wal_pauses_the_backfill(expanded: Database, projects_spec: Spec) -> None:
    """A replication slot holding more WAL than the limit holds the copy; once it is dropped, the copy resumes."""
    slot = f"mt_{uuid.uuid4().hex[:10]}"
    with expanded.connect(autocommit=True) as c:
        c.execute("SELECT pg_catalog.pg_create_physical_replication_slot(%s, true)", [slot])
        c.execute("SELECT pg_catalog.pg_switch_wal()")  # some WAL for it to hold

    def drop() -> None:
        with expanded.connect(autocommit=True) as c:
            c.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", [slot])

    thread, reporter, errors = _start(expanded, projects_spec, Limits(max_lag_bytes=1))
    try:
        _paused_then_done(thread, reporter, errors, drop)
        assert any(f"slot {slot} retains" in s for s in reporter.steps)
    finally:
        with expanded.connect(autocommit=True) as c:
            c.execute(
                "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots "
                "WHERE slot_name = %s",
                [slot],
            )


def test_an_unreadable_signal_fails_closed_unless_told_otherwise(
    expanded: Database, projects_spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal whose query fails counts as red (the copy waits, saying why) until fail-open is chosen."""

    def broken(conn: psycopg.Connection[Any], _limits: Limits, _tables: Any) -> health.Reading:
        conn.execute("SELECT * FROM pg_catalog.no_such_view")
        raise AssertionError("unreachable")

    monkeypatch.setattr(health, "SIGNALS", (broken,))
    with expanded.connect(autocommit=True) as c:
        red = health.Health(["public.core_project"], Limits()).red(c)
        assert [r.signal for r in red] == ["broken"]
        assert health.Health(["public.core_project"], Limits(fail_open=True)).red(c) == []
    thread, reporter, errors = _start(expanded, projects_spec, Limits(fail_open=True))
    thread.join(120)
    assert errors == []
    assert any("cannot be read" in s and "--health-fail-open" in s for s in reporter.steps)

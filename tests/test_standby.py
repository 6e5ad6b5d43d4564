"""The flag reader on a physical standby of the test server: no LISTEN there, so it polls."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from migrator import state
from migrator.db import Database
from migrator.engine import health
from migrator.engine.context import Context
from migrator.engine.health import Limits
from migrator.flags import FlagReader
from migrator.phases import backfill
from migrator.phases.backfill import Backfill
from migrator.phases.expand import Expand
from migrator.seed import seed
from migrator.spec import Spec
from tests.standby import Standby, standby

__all__ = ["standby"]  # the fixture, imported so that pytest finds it here

from tests.helpers import wait_until

pytestmark = pytest.mark.db

MIGRATION = "core_project_split"


@pytest.fixture
def expanded_on_standby(db: Database, projects_spec: Spec, database_url: str, standby: Standby) -> str:
    """A seeded, expanded database on the primary, replayed on the standby; its standby DSN."""
    with db.connect() as c:
        seed(c, 200, random_seed=3)
    Expand().apply(Context(projects_spec, db))
    dbname = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    assert isinstance(dbname, str)
    replayed = f"SELECT migrator.flag_state('{MIGRATION}') = 'dual_write'"
    assert standby.wait_until(dbname, replayed, timeout=60), "the standby did not replay expand within 60 s"
    return standby.url_for(dbname)


def test_reader_on_standby_polls_and_follows_the_primary(
    expanded_on_standby: str, database_url: str, projects_spec: Spec, standby: Standby
) -> None:
    """On the standby the reader loads the flags in poll mode and sees a transition made on the primary."""
    assert standby.query("postgres", "SELECT pg_is_in_recovery()") is True
    with FlagReader(expanded_on_standby, max_age=0.5) as reader:
        assert reader.mode == "poll"
        assert reader.listener_ok is False  # no notification can arrive on a standby
        assert reader.state() == "dual_write"
        with psycopg.connect(database_url, autocommit=True) as primary, primary.transaction():
            state.record(primary, projects_spec, from_state="dual_write", to_state="backfilled", command="test")
        assert wait_until(lambda: reader.state() == "backfilled", timeout=30) is not None, reader.flags()


def test_reader_without_listen_on_standby(expanded_on_standby: str) -> None:
    """listen=False on the standby loads the flags too, and says poll."""
    with FlagReader(expanded_on_standby, max_age=0.5, listen=False) as reader:
        assert reader.mode == "poll"
        assert reader.state() == "dual_write"
        reader.refresh()
        assert reader.read_percent() == 0


def test_a_standby_that_falls_behind_pauses_the_backfill(
    expanded_on_standby: str, database_url: str, standby: Standby, db: Database, projects_spec: Spec
) -> None:
    """With the standby's replay paused while the primary writes, a backfill waits on the replication signal (the
    standby, or the slot that keeps its WAL, is behind by more than the limit); once replay resumes and the standby
    catches up, the backfill runs to the end."""
    limits = Limits(max_lag_bytes=1024 * 1024)
    dbname = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    assert isinstance(dbname, str)
    standby.query("postgres", "SELECT pg_catalog.pg_wal_replay_pause()")
    steps: list[str] = []
    errors: list[BaseException] = []
    reporter = Steps(steps)

    def run() -> None:
        try:
            Backfill(backfill.Options(health=limits)).apply(Context(projects_spec, db, reporter=reporter))
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    try:
        with psycopg.connect(database_url, autocommit=True) as c:
            c.execute(
                "CREATE TABLE public.lag_filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 2e4) g"
            )
            behind = wait_until(lambda: health.Health(["public.lag_filler"], limits).red(c) != [], timeout=30)
            assert behind is not None, "the replication signal never turned red"
        worker.start()
        assert wait_until(lambda: any(s.startswith("paused:") for s in steps), timeout=30) is not None, steps
        assert any("standby" in s or "slot" in s for s in steps if s.startswith("paused:")), steps
        assert worker.is_alive()
    finally:
        standby.query("postgres", "SELECT pg_catalog.pg_wal_replay_resume()")
    with psycopg.connect(database_url, autocommit=True) as c:
        lsn = c.execute("SELECT pg_catalog.pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
    # Caught up: replayed past the writes above (which also lets a slot-kept standby's slot move on).
    assert standby.wait_until(dbname, f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn", timeout=60)
    deadline = time.monotonic() + 120
    while worker.is_alive() and time.monotonic() < deadline:
        # A streaming standby's feedback moves its slot; a slot-kept one is moved to what it replayed here.
        standby.wait_until(dbname, "SELECT true", timeout=5)
        worker.join(1)
    assert not worker.is_alive()
    assert errors == []
    assert any(s.startswith("health green again") for s in steps), steps
    with psycopg.connect(database_url, autocommit=True) as c:
        assert state.read(c, projects_spec).state == "backfilled"


class Steps:
    """A reporter that keeps the step lines."""

    def __init__(self, steps: list[str]) -> None:
        self.steps = steps

    def step(self, message: str) -> None:
        self.steps.append(message)

    def progress(self, done: int, total: int | None, **fields: Any) -> None:
        pass

"""The flag reader on a physical standby of the test server: no LISTEN there, so it polls."""

from __future__ import annotations

import psycopg
import pytest

from migrator import state
from migrator.db import Database
from migrator.engine import health
from migrator.engine.context import Context
from migrator.engine.health import Limits
from migrator.flags import FlagReader
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


def test_a_standby_that_falls_behind_reads_red_on_replication_lag(
    expanded_on_standby: str, database_url: str, standby: Standby
) -> None:
    """With the standby's replay paused while the primary writes, the long jobs' replication signal is red (the
    standby, or the slot that keeps its WAL, is behind by more than the limit); with replay resumed a streaming
    standby catches up and the signal is green again."""
    limits = Limits(max_lag_bytes=256 * 1024)
    standby.query("postgres", "SELECT pg_catalog.pg_wal_replay_pause()")
    try:
        with psycopg.connect(database_url, autocommit=True) as c:
            c.execute(
                "CREATE TABLE public.lag_filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g"
            )
            behind = wait_until(lambda: health.Health(["public.lag_filler"], limits).red(c) != [], timeout=30)
            assert behind is not None, "the replication signal never turned red"
            red = health.Health(["public.lag_filler"], limits).red(c)
            assert [r.signal for r in red] == ["replication_lag"]
            assert "standby" in red[0].detail or "slot" in red[0].detail
    finally:
        standby.query("postgres", "SELECT pg_catalog.pg_wal_replay_resume()")
    if standby.method == "pg_basebackup":
        with psycopg.connect(database_url, autocommit=True) as c:
            caught_up = wait_until(lambda: health.Health(["public.lag_filler"], limits).red(c) == [], timeout=60)
            assert caught_up is not None, health.Health(["public.lag_filler"], limits).red(c)

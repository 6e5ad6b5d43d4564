"""The flag reader on a physical standby of the test server: no LISTEN there, so it polls."""

from __future__ import annotations

import psycopg
import pytest

from migrator import state
from migrator.db import Database
from migrator.engine.context import Context
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

"""The application-side flag reader: cached values, NOTIFY refresh, deterministic read splits, outages."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from migrator import state
from migrator.db import Database
from migrator.engine.context import Context
from migrator.flags import FlagReader, FlagsUnavailable, bucket
from migrator.phases.expand import Expand
from migrator.seed import seed
from migrator.spec import Spec
from tests.conftest import Server
from tests.helpers import move_state, wait_until

pytestmark = pytest.mark.db

MIGRATION = "core_project_split"
# The bucket formula from the flags module docstring, for applications that split reads in SQL.
SQL_BUCKET = (
    "SELECT ('x' || lpad(left(encode(sha256(convert_to(%s || chr(31) || %s, 'UTF8')), 'hex'), 8), 16, '0'))"
    "::bit(64)::bigint %% 100"
)


def _pids(conn: psycopg.Connection[Any], application_name: str = "migrator-flags-listener") -> set[int]:
    """Backends of this database with that application_name (the listener's, by default)."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
        [application_name],
    ).fetchall()
    return {r[0] for r in rows}


@pytest.fixture
def with_state(conn: psycopg.Connection[Any], projects_spec: Spec) -> psycopg.Connection[Any]:
    """A database holding only the state schema (no legacy data): flags can be moved directly."""
    conn.execute(state.schema_action(projects_spec).statement)
    return conn


@pytest.fixture
def reader(database_url: str, with_state: Any) -> Iterator[FlagReader]:
    """A listening reader whose max_age is far away, so only NOTIFY can refresh it in a test."""
    with FlagReader(database_url, max_age=60) as r:
        yield r


def test_legacy_when_no_state_schema(database_url: str) -> None:
    """Before expand (no state schema at all) the reader says legacy: read and write legacy."""
    with FlagReader(database_url) as r:
        assert r.state() == "legacy"
        assert r.read_percent() == 0
        assert not r.reads_split("user-1")
        assert not r.reads_split()
        assert not r.writes_split()


def test_reader_reports_dual_write_after_expand(db: Database, projects_spec: Spec, database_url: str) -> None:
    """After expand on a seeded database the reader says dual_write, which still reads and writes legacy."""
    with db.connect() as c:
        seed(c, 200, random_seed=3)
    Expand().apply(Context(projects_spec, db))
    with FlagReader(database_url) as r:
        assert r.state() == "dual_write"
        assert not r.reads_split(1)
        assert not r.writes_split()


def test_transition_reaches_reader_by_notify(reader: FlagReader, with_state: Any, projects_spec: Spec) -> None:
    """A transition committed by state.record reaches a reader with max_age=60 within seconds (NOTIFY)."""
    assert reader.state() == "legacy"
    move_state(with_state, projects_spec, "dual_write")
    took = wait_until(lambda: reader.state() == "dual_write")
    assert took is not None
    assert took < 5
    move_state(with_state, projects_spec, "backfilled", "validated", "read_new")
    assert wait_until(lambda: reader.state() == "read_new") is not None
    state.set_flags(with_state, projects_spec, read_percent=30)
    took = wait_until(lambda: reader.read_percent() == 30)
    assert took is not None
    assert took < 5
    move_state(with_state, projects_spec, "write_new")
    assert wait_until(reader.writes_split) is not None
    assert reader.reads_split()
    assert reader.reads_split("any key")


def test_uncommitted_transition_is_not_seen(reader: FlagReader, with_state: Any, projects_spec: Spec) -> None:
    """A transition rolled back never reaches the reader: NOTIFY is delivered only on commit."""
    with with_state.transaction():
        state.record(with_state, projects_spec, from_state="legacy", to_state="dual_write", command="test")
        raise psycopg.Rollback  # the transaction block rolls back and swallows it
    assert wait_until(lambda: reader.state() != "legacy", timeout=1.0) is None


def test_notify_for_another_migration_is_ignored(
    reader: FlagReader, with_state: Any, projects_spec: Spec, database_url: str
) -> None:
    """A reader of another migration keeps its (legacy) state when this migration moves."""
    with FlagReader(database_url, migration="payments_split", max_age=60) as other:
        move_state(with_state, projects_spec, "dual_write")
        assert wait_until(lambda: reader.state() == "dual_write") is not None
        assert other.state() == "legacy"


def test_without_listen_values_refresh_after_max_age(with_state: Any, projects_spec: Spec, database_url: str) -> None:
    """listen=False serves cached values and reloads them once they are older than max_age."""
    with FlagReader(database_url, max_age=0.3, listen=False) as r:
        assert r.state() == "legacy"
        move_state(with_state, projects_spec, "dual_write")
        assert r.state() == "legacy"  # cached: no query per call
        assert wait_until(lambda: r.state() == "dual_write", timeout=3.0) is not None


def test_refresh_forces_a_reload(with_state: Any, projects_spec: Spec, database_url: str) -> None:
    """refresh() reloads at once, whatever max_age says."""
    with FlagReader(database_url, max_age=60, listen=False) as r:
        move_state(with_state, projects_spec, "dual_write")
        r.refresh()
        assert r.state() == "dual_write"


def test_read_percent_is_deterministic_per_key(with_state: Any, projects_spec: Spec, database_url: str) -> None:
    """In read_new the same key always gets the same answer, about P% of keys read split; 0% none, 100% all."""
    move_state(with_state, projects_spec, "dual_write", "backfilled", "validated", "read_new")
    keys = range(10_000)
    with FlagReader(database_url, max_age=60) as r, FlagReader(database_url, max_age=60, listen=False) as r2:
        for percent in (0, 30, 100):
            state.set_flags(with_state, projects_spec, read_percent=percent)
            r.refresh()
            r2.refresh()
            answers = [r.reads_split(k) for k in keys]
            assert answers == [r.reads_split(k) for k in keys]  # the same key, the same answer
            assert answers == [r2.reads_split(k) for k in keys]  # in every process
            assert answers == [r.reads_split(str(k)) for k in keys]  # 42 and "42" are one key
            share = sum(answers) / len(keys)
            assert abs(share - percent / 100) < 0.02, (percent, share)
            assert r.reads_split() is (percent == 100)  # no key: only 100% reads split
            assert not r.writes_split()


def test_bucket_is_stable_and_matches_the_sql_formula(conn: psycopg.Connection[Any]) -> None:
    """bucket() is pinned (sha256, not hash()) and the documented SQL expression computes the same buckets."""
    assert bucket(MIGRATION, 42) == 13
    assert bucket(MIGRATION, "user-7") == 55
    for key in [*range(200), "user-7", "ü-ñ", ""]:
        row = conn.execute(SQL_BUCKET, [MIGRATION, str(key)]).fetchone()
        assert row is not None
        assert row[0] == bucket(MIGRATION, key), key


def test_sql_fallback_function_returns_the_state(with_state: Any, projects_spec: Spec) -> None:
    """SELECT migrator.flag_state(...) / read_percent(...) give what the reader gives, 'legacy'/0 when unknown."""
    move_state(with_state, projects_spec, "dual_write", "backfilled", "validated", "read_new")
    state.set_flags(with_state, projects_spec, read_percent=25)
    row = with_state.execute(
        "SELECT migrator.flag_state('core_project_split'), migrator.read_percent('core_project_split'), "
        "migrator.flag_state('no_such_migration'), migrator.read_percent('no_such_migration')"
    ).fetchone()
    assert row == ("read_new", 25, "legacy", 0)


def test_reader_survives_killed_listener_and_recovers(reader: FlagReader, with_state: Any, projects_spec: Spec) -> None:
    """pg_terminate_backend of the listener: the app keeps the last values, the listener reconnects and
    the next transition still arrives by NOTIFY."""
    move_state(with_state, projects_spec, "dual_write")
    assert wait_until(lambda: reader.state() == "dual_write") is not None
    (old_pid,) = _pids(with_state)
    with_state.execute("SELECT pg_terminate_backend(%s)", [old_pid])
    assert reader.state() == "dual_write"  # no exception, last values
    assert wait_until(lambda: bool(_pids(with_state) - {old_pid})) is not None
    move_state(with_state, projects_spec, "backfilled")
    took = wait_until(lambda: reader.state() == "backfilled")
    assert took is not None
    assert took < 5


def test_reader_keeps_last_values_while_database_is_gone(
    database_url: str, pg_server: Server, with_state: Any, projects_spec: Spec, caplog: pytest.LogCaptureFixture
) -> None:
    """With its database dropped the reader serves the last values and logs a warning; once the database is
    back (here: recreated empty, so legacy) the listener reconnects and reloads on its own."""
    move_state(with_state, projects_spec, "dual_write")
    name = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    assert isinstance(name, str)
    with FlagReader(database_url, max_age=60) as r:
        assert r.state() == "dual_write"
        with_state.close()
        with caplog.at_level(logging.WARNING, logger="migrator.flags"):
            with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            r.refresh()  # does not raise
            assert r.state() == "dual_write"
            assert r.reads_split() is False
        assert any("keeping state=dual_write" in m for m in caplog.messages), caplog.messages
        with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        assert wait_until(lambda: r.state() == "legacy", timeout=10.0) is not None


def test_first_load_failure_raises_a_clear_error() -> None:
    """An unreachable server on the first load raises FlagsUnavailable naming the migration, password masked."""
    with pytest.raises(FlagsUnavailable) as info:
        FlagReader("postgresql://root:s3cret@127.0.0.1:1/nowhere")
    message = str(info.value)
    assert "core_project_split" in message
    assert "127.0.0.1" in message
    assert "s3cret" not in message
    with pytest.raises(FlagsUnavailable):
        FlagReader("postgresql://root:s3cret@127.0.0.1:1/nowhere", listen=False)


def test_max_age_must_be_positive() -> None:
    """max_age <= 0 is refused before any connection is made (it would turn the cache into a busy loop)."""
    with pytest.raises(ValueError, match="max_age"):
        FlagReader("postgresql://root@127.0.0.1:1/nowhere", max_age=0)


def test_close_releases_every_connection(reader: FlagReader, with_state: Any, database_url: str) -> None:
    """close() (the with block's exit) stops the listener thread and closes both connections."""
    with FlagReader(database_url, max_age=60) as r:
        r.refresh()  # opens the request-side connection too
        assert len(_pids(with_state)) == 2  # this reader's listener and the fixture's
        assert len(_pids(with_state, "migrator-flags")) == 1
    # A backend leaves pg_stat_activity a moment after its client has gone.
    gone = wait_until(lambda: len(_pids(with_state)) == 1 and not _pids(with_state, "migrator-flags"), timeout=3.0)
    assert gone is not None
    assert r.state() == "legacy"  # the last values stay readable

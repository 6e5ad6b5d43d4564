"""PgBouncer in transaction pooling: the flag reader works through it (polling), the tool refuses it.

The pooler tests need PGBOUNCER_URL: a PgBouncer in pool_mode = transaction in front of the DATABASE_URL server
(`.ci/run` starts one), as a base URL to which the test database's name is appended.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from migrator import state
from migrator.db import SEARCH_PATH, Database, TransactionPooler, advisory_lock, require_session
from migrator.flags import FlagReader
from migrator.seed import seed
from migrator.spec import Spec
from tests.conftest import Server
from tests.helpers import move_state, wait_until

pytestmark = pytest.mark.db

READERS, RELOADS = 8, 500


@pytest.fixture
def pooler_dsn(pg_server: Server, database_url: str) -> str:
    """The fresh test database, reached through the transaction-pooling PgBouncer of PGBOUNCER_URL."""
    base = os.environ.get("PGBOUNCER_URL")
    if not base:
        pytest.skip("PGBOUNCER_URL is not set (a PgBouncer in transaction pooling; .ci/run starts one)")
    if pg_server.kind != "DATABASE_URL":
        pytest.skip("PGBOUNCER_URL fronts the DATABASE_URL server; this run uses another server")
    dbname = make_url(database_url).database
    return make_url(base).set(database=dbname).render_as_string(hide_password=False)


@pytest.fixture
def with_state(conn: psycopg.Connection[Any], projects_spec: Spec) -> psycopg.Connection[Any]:
    """A direct connection to a database holding only the state schema: flags can be moved directly."""
    conn.execute(state.schema_action(projects_spec).statement)
    return conn


def test_pooler_is_transaction_pooling(pooler_dsn: str) -> None:
    """The test pooler really pools by transaction: two clients share one server backend."""
    with psycopg.connect(pooler_dsn, autocommit=True) as a, psycopg.connect(pooler_dsn, autocommit=True) as b:
        first = a.execute("SELECT pg_backend_pid()").fetchone()
        assert first == b.execute("SELECT pg_backend_pid()").fetchone()


def test_reader_through_pooler_polls_and_follows_changes(
    pooler_dsn: str, with_state: psycopg.Connection[Any], projects_spec: Spec
) -> None:
    """Behind the pooler the reader says poll (not a silent notify) and follows transitions and read_percent."""
    with FlagReader(pooler_dsn, max_age=0.5) as reader:
        assert reader.mode == "poll"
        assert reader.listener_ok is False  # NOTIFY never arrives through a transaction pooler
        assert reader.state() == "legacy"
        move_state(with_state, projects_spec, "dual_write")
        assert wait_until(lambda: reader.state() == "dual_write", timeout=15) is not None
        move_state(with_state, projects_spec, "backfilled", "validated", "read_new")
        state.set_flags(with_state, projects_spec, read_percent=30)
        assert (
            wait_until(lambda: reader.flags().read_percent == 30 and reader.state() == "read_new", timeout=15)
            is not None
        )


def test_eight_readers_reload_500_times_without_error(
    pooler_dsn: str, with_state: psycopg.Connection[Any], projects_spec: Spec, caplog: pytest.LogCaptureFixture
) -> None:
    """8 readers reload 500 times each through the pooler without one failure (no prepared-statement clash),
    and no statement_timeout leaks to other clients of the pool."""
    move_state(with_state, projects_spec, "dual_write")
    readers = [FlagReader(pooler_dsn, max_age=60) for _ in range(READERS)]
    failures: list[str] = []

    def hammer(reader: FlagReader) -> None:
        for i in range(RELOADS):
            before = reader.flags().loaded_at
            reader.refresh()
            f = reader.flags()
            if f.loaded_at <= before or f.state != "dual_write":  # a failed reload keeps the old load
                failures.append(f"reload {i}: {f}")
                return

    try:
        with caplog.at_level(logging.WARNING, logger="migrator.flags"):
            threads = [threading.Thread(target=hammer, args=(r,)) for r in readers]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        assert not any(t.is_alive() for t in threads)
        assert failures == []
        assert [m for m in caplog.messages if "cannot reload" in m] == []
    finally:
        for r in readers:
            r.close()
    for _ in range(10):  # whichever server connection a new client gets, it has the default timeout
        with psycopg.connect(pooler_dsn, autocommit=True) as other:
            assert other.execute("SHOW statement_timeout").fetchone() == ("0",)


@pytest.mark.parametrize("command", ["expand", "backfill"])
def test_cli_refuses_transaction_pooler(
    command: str, pooler_dsn: str, db: Database, conn: psycopg.Connection[Any], run_cli: Any
) -> None:
    """A command that takes the migration's lock refuses the pooler with exit 3, naming the fix; nothing changes."""
    with db.connect() as c:
        seed(c, 50, random_seed=1)
    result = run_cli("--dsn", pooler_dsn, command)
    assert result.exit_code == 3, result
    output = result.stdout + result.stderr
    assert "transaction-pooling pooler" in output
    assert "use a direct or session-pooled DSN" in output
    assert conn.execute("SELECT to_regnamespace('migrator')").fetchone() == (None,)  # expand did nothing
    assert conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchone() == (0,)


def test_require_session_refuses_pooler_and_lock_is_never_taken(pooler_dsn: str) -> None:
    """require_session (and so advisory_lock) raises TransactionPooler through the pooler."""
    with Database(pooler_dsn).connect(autocommit=True) as c:
        with pytest.raises(TransactionPooler, match="direct or session-pooled"):
            require_session(c)
        with pytest.raises(TransactionPooler), advisory_lock(c, "test", "lock"):
            pass


def test_direct_session_is_accepted_and_pins_search_path(db: Database) -> None:
    """A direct connection passes require_session, and the tool's sessions resolve names in pg_catalog only."""
    with db.connect(autocommit=True) as c:
        require_session(c)
        (path,) = c.execute("SHOW search_path").fetchone()  # type: ignore[misc]
        assert path.replace(" ", "") == SEARCH_PATH.replace(" ", "")
        with advisory_lock(c, "test", "lock"):
            assert c.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchone() == (1,)
    with db.connect() as c:  # not autocommit: the probe commits its own statements
        require_session(c)

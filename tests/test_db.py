"""Database layer: DSN handling, timeouts, the retry policy, the advisory lock."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from migrator.db import Database, advisory_lock, mask_dsn
from migrator.engine import retry
from migrator.engine.session import transaction
from migrator.errors import BadInputError, LockHeld


@pytest.mark.unit
def test_mask_dsn_hides_passwords() -> None:
    """Passwords in URL and keyword DSNs are replaced by ***."""
    assert mask_dsn("postgresql://u:pw@h:5/d") == "postgresql://u:***@h:5/d"
    assert "pw" not in mask_dsn("host=h user=u password=pw dbname=d")


@pytest.mark.unit
def test_keyword_dsn_is_accepted() -> None:
    """A libpq keyword DSN becomes a psycopg URL with the same parts."""
    d = Database("host=127.0.0.1 port=5433 user=u password=pw dbname=app")
    assert d.url.host == "127.0.0.1"
    assert d.url.port == 5433
    assert d.url.database == "app"
    assert "pw" not in d.display


@pytest.mark.unit
def test_keyword_dsn_with_a_socket_directory_keeps_it_as_the_host() -> None:
    """host=/dir in a keyword DSN reaches libpq as the socket directory (with its port), not as a URL path."""
    db = Database("host=/var/run/postgresql port=5433 dbname=app user=mig")
    assert db.url.host is None
    assert db.url.database == "app"
    assert db.url.query["host"] == "/var/run/postgresql"
    assert db.url.query["port"] == "5433"


@pytest.mark.unit
def test_empty_dsn_is_bad_input() -> None:
    """An empty DSN is a BadInputError, not a crash."""
    with pytest.raises(BadInputError):
        Database("  ")


@pytest.mark.db
def test_transaction_sets_local_timeouts(db: Database) -> None:
    """transaction() applies lock_timeout/statement_timeout to that transaction only."""
    with db.connect(autocommit=True) as conn:
        with transaction(conn, lock_timeout=0.05, statement_timeout=1.5):
            assert conn.execute("SHOW lock_timeout").fetchone() == ("50ms",)
            assert conn.execute("SHOW statement_timeout").fetchone() == ("1500ms",)
        assert conn.execute("SHOW lock_timeout").fetchone() == ("0",)


@pytest.mark.db
def test_retry_policy_retries_lock_timeout_then_gives_up(db: Database, conn: psycopg.Connection[Any]) -> None:
    """A statement blocked by a lock is retried on 55P03 and finally re-raised after the bounded tries."""
    conn.execute("CREATE TABLE t (id int)")
    calls = 0
    with psycopg.connect(str(db.url.set(drivername="postgresql").render_as_string(hide_password=False))) as holder:
        holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")

        def attempt() -> None:
            nonlocal calls
            calls += 1
            with db.connect(autocommit=True) as c, transaction(c, lock_timeout=0.02):
                c.execute("SELECT * FROM public.t")

        with pytest.raises(psycopg.errors.LockNotAvailable):
            retry.run_with_retry(attempt, attempts=3, max_wait=0.05)
    assert calls == 3


@pytest.mark.unit
def test_non_transient_errors_are_not_retried() -> None:
    """A unique violation is not transient; a deadlock and a lock timeout are."""
    assert not retry.is_transient(psycopg.errors.UniqueViolation())
    assert retry.is_transient(psycopg.errors.DeadlockDetected())
    assert retry.is_transient(psycopg.errors.LockNotAvailable())
    assert retry.is_transient(psycopg.errors.SerializationFailure())


@pytest.mark.db
def test_advisory_lock_refuses_second_holder_and_names_first(db: Database) -> None:
    """A second session asking for the migration lock is refused with the holder's pid and application."""
    with db.connect(autocommit=True) as first, advisory_lock(first, "migrator", "x"):
        pid = first.info.backend_pid
        second = db.raw_connect(autocommit=True)
        with pytest.raises(LockHeld) as info, advisory_lock(second, "migrator", "x"):
            pass
        second.close()
    assert f"pid {pid}" in str(info.value)
    assert "migrator" in str(info.value)
    with db.connect(autocommit=True) as third, advisory_lock(third, "migrator", "x"):
        pass  # released when the first holder left

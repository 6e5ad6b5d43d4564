"""finalize (issue 18): contracted -> finalized drops the archive safely — the base key owns its sequence first, so
the application's inserts without an id keep working — after a retention period and a quiet period on the
compatibility view, with no rollback from it; a second run is a no-op."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from migrator import lifecycle, operations, state, status
from migrator.db import Database
from migrator.demo import Writer
from migrator.engine.context import Context
from migrator.errors import GuardFailed, WrongState
from migrator.phases import finalize
from migrator.phases.finalize import Finalize
from migrator.seed import seed
from migrator.spec import Spec
from tests.test_json_contract import check
from tests.test_lifecycle import _advance

pytestmark = pytest.mark.db

NOW = finalize.Options(min_age=0, quiet_period=0)


@pytest.fixture
def contracted(db: Database, projects_spec: Spec) -> Database:
    """A seeded migration in contracted, with the compatibility view."""
    with db.connect() as c:
        seed(c, 300, dirty_ratio=0.0, random_seed=3)
    _advance(db, projects_spec, "contracted")
    return db


def _state(db: Database, spec: Spec) -> str:
    with db.connect(autocommit=True) as c:
        return state.read(c, spec).state


def _last(r: Any) -> dict[str, Any]:
    """The result object, every stdout line checked against the JSON contract."""
    return check(r, "finalize", r.exit_code)


def _insert_without_id(conn: psycopg.Connection[Any]) -> int:
    """The application's insert on the split tables, the key from the base table's default."""
    pid = conn.execute(
        "INSERT INTO public.projects (name, project_type, owner_id, is_draft, created_at, updated_at) "
        "VALUES ('after finalize', 'self_study', (SELECT min(id) FROM public.auth_user), true, now(), now()) "
        "RETURNING id"
    ).fetchone()[0]  # type: ignore[index]
    conn.execute(
        "INSERT INTO public.self_study_projects (project_id, goal_description, study_frequency) "
        "VALUES (%s, 'g', 'daily')",
        [pid],
    )
    return int(pid)


def test_finalize_drops_the_archive_and_inserts_keep_working(
    contracted: Database, projects_spec: Spec, conn: psycopg.Connection[Any]
) -> None:
    """After finalize the archive, the compatibility view and the sync functions are gone, the base key owns its
    sequence and an insert without an id gets a key above every old one; a second finalize is a no-op."""
    before = conn.execute("SELECT max(id) FROM public.core_project_archived").fetchone()[0]  # type: ignore[index]
    ctx = Context(projects_spec, contracted)
    Finalize(NOW).apply(ctx)
    assert _state(contracted, projects_spec) == "finalized"
    gone = conn.execute(
        "SELECT to_regclass('public.core_project_archived'), to_regclass('public.core_project'), "
        "to_regprocedure('migrator.core_project_split_forward()'), "
        "to_regclass('migrator.core_project_split_legacy_writes')"
    ).fetchone()
    assert gone == (None, None, None, None)
    assert conn.execute("SELECT pg_get_serial_sequence('public.projects', 'id')").fetchone()[0]  # type: ignore[index]
    assert _insert_without_id(conn) > before
    assert Finalize(NOW).verify(ctx).ok
    audit = conn.execute(
        "SELECT details FROM migrator.transitions WHERE to_state = 'finalized' ORDER BY id DESC LIMIT 1"
    ).fetchone()[0]  # type: ignore[index]
    assert "table public.core_project_archived" in audit["dropped"]
    assert audit["retention_shortened"] is True
    again = Finalize(NOW)
    again.apply(ctx)
    assert again.noop
    assert conn.execute("SELECT count(*) FROM migrator.transitions WHERE to_state = 'finalized'").fetchone()[0] == 1  # type: ignore[index]


def test_no_rollback_from_finalized(contracted: Database, projects_spec: Spec) -> None:
    """`rollback` from finalized refuses plainly (exit 1) and status says there is no rollback."""
    ctx = Context(projects_spec, contracted)
    Finalize(NOW).apply(ctx)
    with pytest.raises(WrongState, match="no rollback from finalized: the archive is gone"):
        operations.rollback(ctx)
    st = status.collect(contracted, projects_spec)
    assert st.no_rollback == "no rollback from finalized: the archive is gone"
    assert st.next_command is None
    assert st.tables[0].role == "legacy (dropped)"


def test_refused_before_the_retention_period(
    contracted: Database, projects_spec: Spec, database_url: str, run_cli: Any
) -> None:
    """Right after contract the default 7-day retention refuses: exit 1, the fix named, nothing dropped."""
    r = run_cli("--dsn", database_url, "--json", "--yes", "finalize", "--quiet-period", "0")
    assert r.exit_code == 1, r.stderr
    result = _last(r)
    assert "kept for 7.0d (--min-age)" in result["error"]["message"]
    assert "--min-age 0" in result["error"]["hint"]
    assert result["state"] == "contracted"
    assert _state(contracted, projects_spec) == "contracted"


def test_the_retention_counts_from_contract_not_from_later_audit_rows(
    contracted: Database, projects_spec: Spec, database_url: str, run_cli: Any
) -> None:
    """A cleanup-drafts run in contracted (audited with from = to = contracted) does not restart the retention
    clock: contracted two hours ago, finalize --min-age 1h passes."""
    with contracted.connect() as c:
        c.execute("UPDATE migrator.transitions SET at = at - interval '2 hours' WHERE to_state = 'contracted'")
        c.commit()
    cleaned = run_cli("--dsn", database_url, "--json", "cleanup-drafts", "--older-than", "24h", "--dry-run")
    assert cleaned.exit_code == 0, cleaned.stderr
    with contracted.connect() as c:
        same = "SELECT count(*) FROM migrator.transitions WHERE from_state = 'contracted' AND to_state = 'contracted'"
        assert c.execute(same).fetchone() == (1,)
    r = run_cli("--dsn", database_url, "--json", "--yes", "finalize", "--min-age", "1h", "--quiet-period", "0")
    assert r.exit_code == 0, r.stderr
    assert _state(contracted, projects_spec) == "finalized"


def test_refused_while_the_compat_view_is_written(
    contracted: Database, projects_spec: Spec, database_url: str, run_cli: Any, conn: psycopg.Connection[Any]
) -> None:
    """A write through the compatibility view restarts the quiet period: finalize exits 1 with the fix."""
    conn.execute(
        "INSERT INTO public.core_project (name, project_type, owner_id, goal_description, study_frequency) "
        "VALUES ('old code', 'self_study', (SELECT min(id) FROM public.auth_user), 'g', 'daily')"
    )
    r = run_cli("--dsn", database_url, "--json", "--yes", "finalize", "--min-age", "0", "--quiet-period", "30")
    assert r.exit_code == 1, r.stderr
    error = _last(r)["error"]
    assert error["code"] == "not_quiet"
    assert "free of direct writes for 0 s of the required 30 s" in error["message"]
    assert "retry in 30 s" in error["hint"]
    assert _state(contracted, projects_spec) == "contracted"


def test_cli_json_with_dump(
    contracted: Database, projects_spec: Spec, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    """`finalize --json --dump FILE` ends with one result object; the file holds the archive, its row count and
    sha256 are in the audit log; a second run exits 0 saying it did nothing, `rollback` exits 1 saying there is none;
    without --yes and a terminal, exit 2."""
    with contracted.connect(autocommit=True) as c:
        rows = c.execute("SELECT count(*) FROM public.core_project_archived").fetchone()[0]  # type: ignore[index]
    r = run_cli("--dsn", database_url, "--json", "finalize", "--min-age", "0")
    assert r.exit_code == 2
    assert _last(r)["error"]["code"] == "confirmation_required"
    dump = tmp_path / "archive.dump"
    args = ("--dsn", database_url, "--json", "--yes", "finalize", "--min-age", "0", "--quiet-period", "0")
    r = run_cli(*args, "--dump", str(dump))
    assert r.exit_code == 0, r.stderr
    result = _last(r)
    assert (result["from_state"], result["state"], result["changed"]) == ("contracted", "finalized", True)
    assert result["details"]["noop"] is False
    with contracted.connect(autocommit=True) as c:
        audit = c.execute("SELECT details FROM migrator.transitions WHERE to_state = 'finalized'").fetchone()[0]  # type: ignore[index]
    assert audit["dump"]["rows"] == rows
    assert audit["dump"]["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()
    assert b"core_project_archived" in dump.read_bytes()
    r = run_cli(*args)
    assert r.exit_code == 0, r.stderr
    assert (_last(r)["details"]["noop"], _last(r)["changed"]) == (True, False)
    r = run_cli("--dsn", database_url, "--json", "rollback")
    assert r.exit_code == 1
    assert check(r, "rollback", 1)["error"]["message"] == "no rollback from finalized: the archive is gone"


def test_refused_while_a_view_reads_the_compat_view(
    contracted: Database, projects_spec: Spec, conn: psycopg.Connection[Any]
) -> None:
    """A user's view over the compatibility view stops finalize (it would have to drop it) unless the view is
    kept; with --keep-compat-view the view and an insert through it without an id keep working."""
    conn.execute("CREATE VIEW public.school_names AS SELECT id, name FROM public.core_project")
    ctx = Context(projects_spec, contracted)
    with pytest.raises(GuardFailed, match=r"view public\.school_names \(on the compatibility view\)"):
        Finalize(NOW).apply(ctx)
    Finalize(finalize.Options(min_age=0, quiet_period=0, keep_compat_view=True)).apply(ctx)
    new = conn.execute(
        "INSERT INTO public.core_project (name, project_type, owner_id, goal_description, study_frequency) "
        "VALUES ('via kept view', 'self_study', (SELECT min(id) FROM public.auth_user), 'g', 'daily') RETURNING id"
    ).fetchone()[0]  # type: ignore[index]
    assert conn.execute("SELECT name FROM public.school_names WHERE id = %s", [new]).fetchone() == ("via kept view",)
    assert _insert_without_id(conn) > new


def test_lifecycle_under_a_live_writer_ends_in_finalized(
    db: Database, projects_spec: Spec, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """Every phase from legacy to finalized under a live writer: 0 failed transactions, and the writer's inserts
    on the split tables continue after the archive is gone."""
    with db.connect() as c:
        seed(c, 1500, dirty_ratio=0.0, random_seed=21)
    writer = Writer(database_url, projects_spec, rate=150)
    writer.start()
    try:
        _advance(db, projects_spec, lifecycle.LAST_REVERSIBLE)
        # The writer sees a flag change up to 0.2 s late: until then it may still write the legacy name, through
        # the compatibility view, and finalize waits until those writes have stopped for a second.
        Finalize(finalize.Options(min_age=0, quiet_period=1, wait=30)).apply(Context(projects_spec, db))
        split_before = writer.stats.split_writes
        time.sleep(0.5)
    finally:
        stats = writer.stop()
    assert stats.failures == 0, stats.errors
    assert stats.split_writes > split_before
    assert _state(db, projects_spec) == "finalized"
    assert conn.execute("SELECT to_regclass('public.core_project_archived')").fetchone()[0] is None  # type: ignore[index]

"""expand, the forward triggers, quarantine, and the expand rollback — against a real PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import threading
from typing import Any

import psycopg
import pytest

from migrator import operations, state
from migrator.db import Database, advisory_lock
from migrator.engine.context import Context
from migrator.phases.backfill import Backfill
from migrator.phases.base import RollbackOptions
from migrator.phases.expand import Expand
from migrator.seed import seed
from migrator.spec import Spec
from migrator.sqlgen.ddl import index_actions
from tests.helpers import count, diff, quarantined, split_rows_for

pytestmark = pytest.mark.db

INSERT_SCHOOL = """
INSERT INTO core_project (name, project_type, owner_id, course_name, course_code, teacher_name, syllabus,
                          is_draft, created_at, updated_at)
VALUES (%s, 'school', (SELECT min(id) FROM auth_user), 'Algebra', 'MA-101', 'Ms Noether', %s, false, now(), now())
RETURNING id
"""
INSERT_SELF = """
INSERT INTO core_project (name, project_type, owner_id, goal_description, study_frequency, is_draft,
                          created_at, updated_at)
VALUES (%s, 'self_study', (SELECT min(id) FROM auth_user), 'learn Rust', 'weekly', true, now(), now())
RETURNING id
"""


@pytest.fixture
def seeded(db: Database, conn: psycopg.Connection[Any]) -> Database:
    """A database with 300 seeded legacy rows (a few dirty)."""
    with db.connect() as c:
        seed(c, 300, dirty_ratio=0.05, random_seed=7)
    return db


@pytest.fixture
def expanded(seeded: Database, projects_spec: Spec) -> Database:
    """The seeded database after `expand` (state dual_write)."""
    Expand().apply(Context(projects_spec, seeded))
    return seeded


@pytest.fixture
def expanded_empty(db: Database, projects_spec: Spec, conn: Any) -> Database:
    """An expanded database whose legacy table starts empty (every row will come through the triggers)."""
    with db.connect() as c:
        seed(c, 0)
    conn.execute("INSERT INTO auth_user (username) VALUES ('owner')")
    Expand().apply(Context(projects_spec, db))
    return db


def _one(conn: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def test_expand_creates_schema_and_moves_state(expanded: Database, projects_spec: Spec, conn: Any) -> None:
    """expand creates every split table, validates FKs, builds valid indexes, enables triggers, audits."""
    report = Expand().verify(Context(projects_spec, expanded))
    assert report.ok, report.failures
    assert state.read(conn, projects_spec).state == "dual_write"
    audit = conn.execute("SELECT from_state, to_state, command FROM migrator.transitions").fetchall()
    assert audit == [("legacy", "dual_write", "expand")]
    assert _one(conn, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0
    assert _one(conn, "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND NOT convalidated") == 0


def test_expand_is_idempotent_after_a_partial_run(seeded: Database, projects_spec: Spec, conn: Any) -> None:
    """A crash part-way (some tables, an INVALID index left behind) is finished by re-running expand."""
    ctx = Context(projects_spec, seeded)
    with seeded.connect(autocommit=True) as c:
        actions = Expand().plan(ctx, c)
        from migrator.engine.actions import run_actions

        run_actions(c, actions[:4])  # state schema + some tables, then "crash"
    conn.execute("CREATE INDEX projects_owner_id_idx ON projects (owner_id)")
    conn.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'projects_owner_id_idx'::regclass")
    Expand().apply(ctx)
    assert Expand().verify(ctx).ok
    assert _one(conn, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'projects_owner_id_idx'::regclass")


def test_plan_is_what_expand_runs(seeded: Database, projects_spec: Spec, run_cli: Any, database_url: str) -> None:
    """The offline `plan expand` output lists exactly the steps expand executes, in order."""
    offline = run_cli("--json", "plan", "expand")
    planned = [s["sql"] for s in json.loads(offline.stdout)["details"]["phases"][0]["steps"]]
    ran: list[str] = []
    ctx = Context(projects_spec, seeded)
    with seeded.connect(autocommit=True) as c:
        from migrator.engine.actions import run_actions

        run_actions(c, Expand().plan(ctx, c), on_step=lambda a, did: ran.append(a.text()))
    assert ran == planned


def test_every_dml_path_keeps_split_equal(expanded_empty: Database, projects_spec: Spec, conn: Any) -> None:
    """Inserts of each variant, updates of base/child/meta columns, type changes both ways, deletes,
    multi-row statements and COPY all leave the split rows equal to the legacy rows."""
    conn.execute("""
        INSERT INTO core_project (name, project_type, owner_id, course_name, course_code, teacher_name,
                                  goal_description, study_frequency, syllabus)
        SELECT 'bulk ' || i, CASE WHEN i % 2 = 0 THEN 'school' ELSE 'self_study' END,
               (SELECT min(id) FROM auth_user), 'c', 'c-' || i, 't', 'g', 'weekly',
               CASE WHEN i % 3 = 0 THEN jsonb_build_object('i', i) END
          FROM generate_series(1, 60) AS i""")  # multi-row insert, both variants, stray other-variant values
    assert diff(conn, projects_spec) == []
    s = _one(conn, INSERT_SCHOOL, "school one", json.dumps({"weeks": 3}))
    t = _one(conn, INSERT_SELF, "self one")
    assert diff(conn, projects_spec) == []
    conn.execute("UPDATE core_project SET name = 'renamed', end_date = '2030-01-01' WHERE id = %s", [s])
    conn.execute("UPDATE core_project SET course_code = 'MA-102' WHERE id = %s", [s])
    conn.execute("UPDATE core_project SET syllabus = NULL WHERE id = %s", [s])
    assert split_rows_for(conn, projects_spec, s) == 2  # base + school, no meta
    conn.execute("UPDATE core_project SET syllabus = '{\"weeks\": 9}' WHERE id = %s", [s])
    conn.execute(
        "UPDATE core_project SET project_type = 'self_study', goal_description = 'g', "
        "study_frequency = 'daily' WHERE id = %s",
        [s],
    )
    assert _one(conn, "SELECT count(*) FROM school_projects WHERE project_id = %s", s) == 0
    assert _one(conn, "SELECT count(*) FROM self_study_projects WHERE project_id = %s", s) == 1
    conn.execute(
        "UPDATE core_project SET project_type = 'school', course_name = 'c', course_code = 'c', "
        "teacher_name = 't' WHERE id = %s",
        [t],
    )
    assert _one(conn, "SELECT count(*) FROM self_study_projects WHERE project_id = %s", t) == 0
    conn.execute("UPDATE core_project SET is_draft = NOT is_draft WHERE id % 7 = 0")  # multi-row
    conn.execute("DELETE FROM core_project WHERE id % 11 = 0")  # multi-row delete
    conn.execute("DELETE FROM core_project WHERE id = %s", [t])
    assert split_rows_for(conn, projects_spec, t) == 0
    owner = _one(conn, "SELECT min(id) FROM auth_user")
    with (
        conn.cursor() as cur,
        cur.copy(
            "COPY core_project (name, project_type, owner_id, course_name, course_code, teacher_name, "
            "is_draft, created_at, updated_at) FROM STDIN"
        ) as copy,
    ):
        for i in range(50):
            copy.write_row((f"copied {i}", "school", owner, "C", f"C-{i}", "T", False, "2024-01-01", "2024-01-02"))
    assert diff(conn, projects_spec) == []
    legacy = count(conn, "core_project")
    assert count(conn, "projects") + len(quarantined(conn, projects_spec)) >= legacy


def test_dirty_insert_is_quarantined_then_fixed(expanded: Database, projects_spec: Spec, conn: Any) -> None:
    """A school row without course_name succeeds for the app, lands in quarantine with 23502, and moves
    into school_projects (quarantine resolved) once the legacy row is fixed."""
    pid = _one(
        conn,
        "INSERT INTO core_project (name, project_type, owner_id, course_code, teacher_name) "
        "VALUES ('dirty', 'school', (SELECT min(id) FROM auth_user), 'X-1', 'T') RETURNING id",
    )
    assert quarantined(conn, projects_spec)[str(pid)] == "23502"
    assert split_rows_for(conn, projects_spec, pid) == 0
    message = _one(conn, "SELECT message FROM migrator.quarantine WHERE key = %s", str(pid))
    assert "course_name" in message
    conn.execute("UPDATE core_project SET course_name = 'Fixed' WHERE id = %s", [pid])
    assert str(pid) not in quarantined(conn, projects_spec)
    assert _one(conn, "SELECT course_name FROM school_projects WHERE project_id = %s", pid) == "Fixed"
    assert _one(conn, "SELECT resolved_at IS NOT NULL FROM migrator.quarantine WHERE key = %s", str(pid))
    assert (("legacy_only", pid)) not in diff(conn, projects_spec)


def test_update_that_breaks_a_row_removes_its_stale_split_rows(
    expanded: Database, projects_spec: Spec, conn: Any
) -> None:
    """Clearing a required field of a synced row quarantines it and deletes its now-stale split rows."""
    pid = _one(conn, INSERT_SCHOOL, "ok", None)
    assert split_rows_for(conn, projects_spec, pid) == 2
    conn.execute("UPDATE core_project SET teacher_name = NULL WHERE id = %s", [pid])
    assert quarantined(conn, projects_spec)[str(pid)] == "23502"
    assert split_rows_for(conn, projects_spec, pid) == 0


def test_unknown_discriminator_is_quarantined_not_failed(expanded: Database, projects_spec: Spec, conn: Any) -> None:
    """A legacy row with a type no variant knows succeeds for the app and is quarantined (CHECK, 23514)."""
    pid = _one(
        conn,
        "INSERT INTO core_project (name, project_type, owner_id) "
        "VALUES ('odd', 'bootcamp', (SELECT min(id) FROM auth_user)) RETURNING id",
    )
    assert quarantined(conn, projects_spec)[str(pid)] == "23514"


def test_truncate_empties_split_tables(expanded: Database, projects_spec: Spec, conn: Any) -> None:
    """TRUNCATE of the legacy table empties the split tables too (no zombie rows)."""
    conn.execute("TRUNCATE core_project CASCADE")
    assert count(conn, "projects") == 0
    assert count(conn, "project_meta") == 0


def test_expand_rollback_expand(expanded: Database, projects_spec: Spec, conn: Any) -> None:
    """pgroll-style: expand -> rollback -> writes -> expand again leaves a correct, synced schema."""
    ctx = Context(projects_spec, expanded)
    steps = operations.rollback(ctx)
    assert steps == [("dual_write", "legacy")]
    assert state.read(conn, projects_spec).state == "legacy"
    assert _one(conn, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'migrator%%'") == 0
    assert _one(conn, "SELECT to_regclass('projects') IS NOT NULL")  # kept without --drop-tables
    pid = _one(conn, INSERT_SELF, "while rolled back")
    ctx2 = Context(projects_spec, expanded)
    Expand().apply(ctx2)
    operations.rollback(ctx2, opts=RollbackOptions(drop_tables=True))
    assert _one(conn, "SELECT to_regclass('projects') IS NULL")
    Expand().apply(ctx)
    assert Expand().verify(ctx).ok
    conn.execute("UPDATE core_project SET name = 'after re-expand' WHERE id = %s", [pid])
    assert _one(conn, "SELECT name FROM projects WHERE id = %s", pid) == "after re-expand"
    transitions = conn.execute("SELECT from_state || '>' || to_state FROM migrator.transitions ORDER BY id")
    assert [r[0] for r in transitions] == [
        "legacy>dual_write",
        "dual_write>legacy",
        "legacy>dual_write",
        "dual_write>legacy",
        "legacy>dual_write",
    ]


def test_wrong_state_names_next_command(expanded: Database, run_cli: Any, database_url: str) -> None:
    """expand in dual_write exits 1 and names the command that comes next."""
    r = run_cli("--dsn", database_url, "expand")
    assert r.exit_code == 1
    assert "run `migrator backfill` next" in r.stderr


def test_second_operator_is_refused_naming_holder(
    seeded: Database, projects_spec: Spec, run_cli: Any, database_url: str
) -> None:
    """While one operator holds the migration lock, `migrator expand` exits 1 naming the holder's pid."""
    with seeded.connect(autocommit=True) as holder, advisory_lock(holder, *state.lock_parts(projects_spec)):
        r = run_cli("--dsn", database_url, "expand")
        assert r.exit_code == 1
        assert f"pid {holder.info.backend_pid}" in r.stderr
    assert run_cli("--dsn", database_url, "expand").exit_code == 0


def test_two_concurrent_expands_one_wins(
    seeded: Database, projects_spec: Spec, migrator_exe: str, database_url: str, conn: Any
) -> None:
    """Two `migrator expand` processes started together: exactly one succeeds, the other exits 1."""
    results: list[subprocess.CompletedProcess[str]] = []

    def go() -> None:
        results.append(
            subprocess.run(
                [migrator_exe, "--dsn", database_url, "expand"],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        )

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 1], [r.stderr for r in results]
    loser = next(r for r in results if r.returncode == 1)
    assert "another operator" in loser.stderr or "needs state legacy" in loser.stderr
    assert state.read(conn, projects_spec).state == "dual_write"
    assert _one(conn, "SELECT count(*) FROM migrator.transitions") == 1


def test_cli_expand_and_rollback_drop_tables_needs_yes(
    seeded: Database, run_cli: Any, database_url: str, conn: Any
) -> None:
    """`rollback --drop-tables` without a terminal and without --yes exits 2 and drops nothing."""
    assert run_cli("--dsn", database_url, "expand").exit_code == 0
    r = run_cli("--dsn", database_url, "rollback", "--drop-tables")
    assert r.exit_code == 2
    assert "--yes" in r.stderr
    assert _one(conn, "SELECT to_regclass('projects') IS NOT NULL")
    r = run_cli("--dsn", database_url, "--yes", "--json", "rollback", "--drop-tables")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["state"] == "legacy"
    assert _one(conn, "SELECT to_regclass('projects') IS NULL")


def _indexes(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid IN ('projects'::regclass, 'project_meta'::regclass) AND i.indisvalid"
    ).fetchall()
    return {r[0] for r in rows}


def test_indexes_split_between_expand_and_backfill(
    expanded: Database, projects_spec: Spec, conn: psycopg.Connection[Any]
) -> None:
    """expand builds only the FK-covering index; the backfill builds the others after its copy, all valid."""
    after_expand = _indexes(conn)
    assert "projects_owner_id_idx" in after_expand
    deferred = {"projects_project_type_idx", "projects_created_at_idx", "project_meta_value_idx"}
    assert not deferred & after_expand
    assert [a.description for a in Backfill().plan(Context(projects_spec, expanded))][-4:-1] == [
        f"build index {n} CONCURRENTLY"
        for n in ("projects_project_type_idx", "projects_created_at_idx", "project_meta_value_idx")
    ]
    Backfill().apply(Context(projects_spec, expanded))
    assert deferred <= _indexes(conn)
    assert Backfill().verify(Context(projects_spec, expanded)).ok


def test_index_build_override_and_unique(projects_spec: Spec) -> None:
    """`build = "expand"` and unique indexes are built by expand; others default to the backfill."""
    data = projects_spec.model_dump(by_alias=True)
    data["indexes"][1]["build"] = "expand"
    data["indexes"][2]["unique"] = True
    spec = Spec.model_validate(data)
    assert [spec.index_phase(i) for i in range(4)] == ["expand", "expand", "expand", "backfill"]
    assert [projects_spec.index_phase(i) for i in range(4)] == ["expand", "backfill", "backfill", "backfill"]
    assert len(index_actions(spec, "expand")) == 3


@pytest.mark.db
def test_expand_runs_doctors_blocking_checks_first(seeded: Database, projects_spec: Spec, run_cli: Any) -> None:
    """A table already holding the archive's name fails doctor's name check: expand exits 1 naming it and the fix,
    and creates nothing."""
    with seeded.connect(autocommit=True) as c:
        c.execute("CREATE TABLE public.core_project_archived (id int)")
    r = run_cli("--dsn", seeded.dsn, "expand")
    assert r.exit_code == 1, r.stderr
    assert "core_project_archived already exists" in r.stderr
    assert "rename or drop" in r.stderr
    with seeded.connect() as c:
        assert c.execute("SELECT to_regclass('public.projects')").fetchone() == (None,)
        assert state.read(c, projects_spec).state == "legacy"

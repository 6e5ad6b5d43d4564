"""`migrator doctor` (issue 16): the read-only preflight on a good setup and on each bad one, against a real
PostgreSQL — every bad condition is named with its fix, and a failing one exits 1."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from migrator import doctor
from migrator.db import Database
from migrator.engine.context import Context
from migrator.phases.expand import Expand
from migrator.seed import seed
from migrator.spec import Spec

pytestmark = pytest.mark.db

SEEDED_TABLES = ("auth_user", "core_project", "core_importantdate", "core_file", "core_project_attachments")


@pytest.fixture
def seeded(db: Database, conn: psycopg.Connection[Any]) -> Database:
    """A database with 500 clean seeded legacy rows."""
    with db.connect() as c:
        seed(c, 500, dirty_ratio=0.0, random_seed=1)
    return db


@pytest.fixture
def plain_role(database_url: str) -> Iterator[str]:
    """A fresh LOGIN role (no superuser, no grants) with a unique name; everything it owns is dropped after."""
    role = f"doctor_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        yield role
    finally:
        with psycopg.connect(database_url, autocommit=True) as c:
            c.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(role)))
            c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _as(database_url: str, role: str) -> Database:
    return Database(make_conninfo(database_url, user=role))


def _findings(report: doctor.DoctorReport, check: str, status: str | None = None) -> list[doctor.Finding]:
    return [f for f in report.findings if f.check == check and (status is None or f.status == status)]


def _one(report: doctor.DoctorReport, check: str, status: str) -> doctor.Finding:
    found = _findings(report, check, status)
    assert len(found) == 1, f"{check}/{status}: {[(f.status, f.message) for f in report.findings]}"
    return found[0]


def test_good_setup_is_ok(seeded: Database, projects_spec: Spec) -> None:
    """A seeded legacy table, superuser, direct DSN: no check fails and every check reports."""
    report = doctor.run(seeded, projects_spec)
    assert report.ok, [(f.check, f.message) for f in report.failures]
    assert report.state == "legacy"
    assert {f.check for f in report.findings} == set(doctor.CHECK_NAMES)
    for f in report.findings:
        assert f.message
        assert "\n" not in f.message
        assert (f.fix is None) == (f.status == "ok"), f
    assert not _findings(report, "pooler", "fail")  # a port-forwarding proxy (testcontainers) may warn
    assert "free" in _one(report, "disk_headroom", "ok").message


def test_doctor_writes_nothing(db: Database, projects_spec: Spec, conn: Any) -> None:
    """doctor is read-only: on an empty database it creates no state schema (or anything else)."""
    before = conn.execute("SELECT count(*) FROM pg_class").fetchone()[0]
    doctor.run(db, projects_spec)
    assert conn.execute("SELECT to_regnamespace('migrator')").fetchone()[0] is None
    assert conn.execute("SELECT count(*) FROM pg_class").fetchone()[0] == before


def test_missing_legacy_table_fails(db: Database, projects_spec: Spec) -> None:
    """No legacy table: legacy_table fails with the fix (the spec's [source], or `migrator seed`); the checks that
    need the table are skipped instead of crashing."""
    report = doctor.run(db, projects_spec)
    assert not report.ok
    f = _one(report, "legacy_table", "fail")
    assert "public.core_project does not exist" in f.message
    assert "[source]" in (f.fix or "")
    assert "migrator seed" in (f.fix or "")
    assert not _findings(report, "primary_key")


def test_no_primary_key_fails(seeded: Database, projects_spec: Spec, conn: Any) -> None:
    """A legacy table without a primary key fails primary_key, and the fix is the ALTER TABLE that adds one."""
    conn.execute("ALTER TABLE core_project DROP CONSTRAINT core_project_pkey CASCADE")
    report = doctor.run(seeded, projects_spec)
    f = _one(report, "primary_key", "fail")
    assert "has no primary key" in f.message
    assert 'ADD PRIMARY KEY ("id")' in (f.fix or "")
    assert not report.ok


def test_other_primary_key_fails(seeded: Database, projects_spec: Spec, conn: Any) -> None:
    """A two-column primary key is not the spec's single-column key: fail, naming both."""
    conn.execute("ALTER TABLE core_project DROP CONSTRAINT core_project_pkey CASCADE")
    conn.execute("ALTER TABLE core_project ADD PRIMARY KEY (id, owner_id)")
    f = _one(doctor.run(seeded, projects_spec), "primary_key", "fail")
    assert "(id, owner_id)" in f.message
    assert "source.primary_key" in (f.fix or "")


def test_public_create_on_public_fails(seeded: Database, projects_spec: Spec, conn: Any) -> None:
    """PUBLIC may CREATE in schema public (a cluster upgraded from PG <= 14): fail with the REVOKE."""
    conn.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    report = doctor.run(seeded, projects_spec)
    f = _one(report, "public_create", "fail")
    assert "every role may CREATE in schema public" in f.message
    assert f.fix == 'REVOKE CREATE ON SCHEMA "public" FROM PUBLIC'
    assert not report.ok


def test_another_role_with_create_warns(seeded: Database, projects_spec: Spec, conn: Any, plain_role: str) -> None:
    """A named role (not PUBLIC) holding CREATE on a schema in use is a warning naming it."""
    conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(plain_role)))
    report = doctor.run(seeded, projects_spec)
    assert plain_role in _one(report, "public_create", "warn").message
    assert report.ok


def test_nonempty_projects_table_fails(seeded: Database, projects_spec: Spec, conn: Any) -> None:
    """A pre-existing, non-empty `projects` table migrator did not create fails name_collisions."""
    conn.execute("CREATE TABLE public.projects (id bigint PRIMARY KEY, name text)")
    conn.execute("INSERT INTO public.projects VALUES (1, 'someone else''s')")
    report = doctor.run(seeded, projects_spec)
    f = _one(report, "name_collisions", "fail")
    assert "public.projects already exists, holds rows" in f.message
    assert "rename or drop it" in (f.fix or "")
    assert not report.ok


def test_empty_projects_table_and_archive_name(seeded: Database, projects_spec: Spec, conn: Any) -> None:
    """An empty pre-existing `projects` only warns; a table holding the archive name fails (contract renames to
    it); an object with one of migrator's trigger names warns."""
    conn.execute("CREATE TABLE public.projects (id bigint PRIMARY KEY)")
    conn.execute("CREATE TABLE public.core_project_archived (id bigint)")
    report = doctor.run(seeded, projects_spec)
    assert "public.projects already exists (empty)" in _one(report, "name_collisions", "warn").message
    fails = _findings(report, "name_collisions", "fail")
    assert [f.fix for f in fails] == ['rename or drop "public"."core_project_archived"']


def test_dependent_view_warns(seeded: Database, projects_spec: Spec, conn: Any) -> None:
    """A view, a materialized view and a function over the legacy table are each listed; contract must handle
    them. The spec's own [[references]] foreign keys are not."""
    conn.execute("CREATE VIEW public.active_projects AS SELECT id, name FROM core_project WHERE NOT is_draft")
    conn.execute("CREATE MATERIALIZED VIEW public.project_counts AS SELECT count(*) FROM core_project")
    conn.execute(
        "CREATE FUNCTION public.touch_project(bigint) RETURNS void LANGUAGE plpgsql AS "
        "$$ BEGIN UPDATE core_project SET updated_at = now() WHERE id = $1; END $$"
    )
    report = doctor.run(seeded, projects_spec)
    f = _one(report, "dependents", "warn")
    details = "\n".join(f.details)
    assert "view public.active_projects: selects from it" in details
    assert "materialized view public.project_counts" in details
    assert "function public.touch_project(bigint)" in details
    assert "core_importantdate" not in details
    assert "compat-view" in (f.fix or "")
    assert report.ok  # a warning, not a failure


def test_idle_in_transaction_session_warns(seeded: Database, projects_spec: Spec, database_url: str) -> None:
    """A second session left idle in a transaction is named by pid (its query cut to 80 characters), and so is an
    open transaction older than the limit."""
    long_query = "SELECT '" + "x" * 300 + "' AS padding"
    with psycopg.connect(database_url) as idle:
        idle.execute(long_query)  # psycopg opened a transaction; it now sits idle in it
        pid = idle.info.backend_pid
        report = doctor.run(seeded, projects_spec, idle_transaction_seconds=0, long_transaction_seconds=0)
    idle_f = _one(report, "idle_in_transaction", "warn")
    assert str(pid) in idle_f.message
    assert "pg_terminate_backend" in (idle_f.fix or "")
    line = next(d for d in idle_f.details if d.startswith(f"pid {pid} "))
    assert "idle in transaction" in line
    assert len(line.split("): ", 1)[1]) <= 80
    assert str(pid) in _one(report, "long_transactions", "warn").message
    assert report.ok


def test_non_superuser_without_ownership_fails(
    seeded: Database, projects_spec: Spec, database_url: str, plain_role: str
) -> None:
    """A plain role that does not own the legacy table: ownership and CREATE fail with GRANTs as fixes, the
    session_replication_role finding warns that the backfill will check foreign keys per row."""
    db = _as(database_url, plain_role)
    try:
        report = doctor.run(db, projects_spec)
    finally:
        db.dispose()
    assert not report.ok
    owner = _findings(report, "ownership", "fail")
    assert any("neither owns public.core_project" in f.message for f in owner)
    assert any(f'GRANT "root" TO "{plain_role}"' in (f.fix or "") or "OWNER TO" in (f.fix or "") for f in owner)
    create = _findings(report, "create", "fail")
    assert any('GRANT CREATE ON SCHEMA "public"' in (f.fix or "") for f in create)
    assert any("schema migrator" in f.message for f in create)
    srr = _one(report, "replication_role", "warn")
    assert srr.message.startswith("the backfill checks foreign keys per row")
    assert "GRANT SET ON PARAMETER session_replication_role" in (srr.fix or "")


def test_non_superuser_owner_passes(
    seeded: Database, projects_spec: Spec, database_url: str, plain_role: str, conn: Any
) -> None:
    """A non-superuser that owns the legacy tables and may create in the schemas passes; the only advice left is
    the backfill's faster path and the roles it could not see."""
    role = sql.Identifier(plain_role)
    for table in SEEDED_TABLES:
        conn.execute(sql.SQL("ALTER TABLE public.{} OWNER TO {}").format(sql.Identifier(table), role))
    conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(role))
    conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(conn.info.dbname), role))
    db = _as(database_url, plain_role)
    try:
        report = doctor.run(db, projects_spec)
    finally:
        db.dispose()
    assert report.ok, [(f.check, f.message) for f in report.failures]
    assert f"role {plain_role} owns public.core_project" in _one(report, "ownership", "ok").message
    assert _one(report, "replication_role", "warn")


def test_app_roles_are_listed_with_their_grants(
    seeded: Database, projects_spec: Spec, conn: Any, plain_role: str
) -> None:
    """The application roles come from the legacy table's grants, each with what it holds (columns included)."""
    role = sql.Identifier(plain_role)
    conn.execute(sql.SQL("GRANT SELECT, INSERT, DELETE ON core_project TO {}").format(role))
    conn.execute(sql.SQL("GRANT UPDATE (name) ON core_project TO {}").format(role))
    f = _one(doctor.run(seeded, projects_spec), "app_roles", "ok")
    assert plain_role in f.message
    assert f.details == [f"{plain_role}: DELETE, INSERT, SELECT, UPDATE(name)"]


def test_row_level_security_and_user_triggers_warn(seeded: Database, projects_spec: Spec, conn: Any) -> None:
    """Row-level security on the legacy table and a user trigger on it are warnings naming them."""
    conn.execute("ALTER TABLE core_project ENABLE ROW LEVEL SECURITY")
    conn.execute(
        "CREATE FUNCTION public.stamp() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$"
    )
    conn.execute("CREATE TRIGGER stamp_updated BEFORE UPDATE ON core_project FOR EACH ROW EXECUTE FUNCTION stamp()")
    report = doctor.run(seeded, projects_spec)
    assert "row-level security is on" in _one(report, "row_level_security", "warn").message
    triggers = _one(report, "user_triggers", "warn")
    assert "stamp_updated" in triggers.message
    assert "sync must account" in (triggers.fix or "")


def test_after_expand_names_are_migrators_own(seeded: Database, projects_spec: Spec) -> None:
    """After expand the split tables, triggers and functions exist: they are migrator's own, not collisions,
    and its triggers are not reported as user triggers."""
    Expand().apply(Context(projects_spec, seeded))
    report = doctor.run(seeded, projects_spec)
    assert report.ok, [(f.check, f.message) for f in report.failures]
    assert report.state == "dual_write"
    assert not _findings(report, "name_collisions", "warn")
    assert _one(report, "user_triggers", "ok")


def test_unreadable_state_degrades_to_a_warning(
    seeded: Database, projects_spec: Spec, database_url: str, plain_role: str
) -> None:
    """A role that may not read migrator's schema or the split tables gets warnings saying so, not a crash."""
    Expand().apply(Context(projects_spec, seeded))
    db = _as(database_url, plain_role)
    try:
        report = doctor.run(db, projects_spec)
    finally:
        db.dispose()
    state = _one(report, "state", "warn")
    assert "permission denied" in state.message
    collisions = _one(report, "name_collisions", "warn")
    assert collisions.message.startswith("could not check: permission denied")


def test_cli_json_shape_and_exit_codes(run_cli: Any, seeded: Database, database_url: str, conn: Any) -> None:
    """`doctor --json` ends with the one result object (findings in its details); exit 0 when ok, 1 (with the
    summary on stderr) once a check fails."""
    r = run_cli("--dsn", database_url, "--json", "doctor")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert (doc["command"], doc["ok"], doc["state"]) == ("doctor", True, "legacy")
    assert {f["check"] for f in doc["details"]["findings"]} == set(doctor.CHECK_NAMES)
    for f in doc["details"]["findings"]:
        assert set(f) == {"check", "status", "message", "fix", "details"}
        assert f["status"] in ("ok", "warn", "fail")

    conn.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    r = run_cli("--dsn", database_url, "--json", "doctor")
    assert r.exit_code == 1
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["ok"] is False
    assert [f["check"] for f in doc["details"]["findings"] if f["status"] == "fail"] == ["public_create"]
    assert "public_create" in r.stderr

    r = run_cli("--dsn", database_url, "doctor")
    assert r.exit_code == 1
    assert "public_create" in r.stdout
    assert "REVOKE" in r.stdout
    assert "1 finding(s) failed (public_create)" in r.stderr


def test_cli_bad_dsn_exits_3(run_cli: Any) -> None:
    """An unreachable server is an operational error (exit 3), not a failed check."""
    r = run_cli("--dsn", "postgresql://nobody@127.0.0.1:1/x", "doctor")
    assert r.exit_code == 3

"""Objects that depend on the legacy table (issue 18): contract re-points views, materialized views, rules and
SQL-standard functions at the compatibility view in its swap — so they read the live split data, not the frozen
archive — or refuses before any DDL naming each object and the fix; the rollback from contracted moves them back."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from migrator import doctor, operations, state
from migrator.db import Database
from migrator.engine.context import Context
from migrator.errors import GuardFailed
from migrator.phases import contract
from migrator.phases.base import RollbackOptions
from migrator.phases.contract import Contract
from migrator.seed import seed
from migrator.spec import Spec
from migrator.sqlgen import dependents
from tests.test_lifecycle import _advance

pytestmark = pytest.mark.db

USER_OBJECTS = """
CREATE VIEW public.report_school WITH (security_barrier = true) AS
    SELECT count(*) AS n FROM public.core_project WHERE project_type = 'school';
GRANT SELECT ON public.report_school TO PUBLIC;
CREATE VIEW public.school_names AS
    SELECT id, name, project_type FROM public.core_project WHERE project_type = 'school' WITH CASCADED CHECK OPTION;
CREATE VIEW public.school_report_total AS SELECT n FROM public.report_school;
CREATE MATERIALIZED VIEW public.project_counts AS
    SELECT project_type, count(*) AS n FROM public.core_project GROUP BY project_type;
CREATE UNIQUE INDEX project_counts_type ON public.project_counts (project_type);
GRANT SELECT ON public.project_counts TO PUBLIC;
CREATE TABLE public.report_requests (id int);
CREATE TABLE public.report_log (n bigint);
CREATE RULE log_count AS ON INSERT TO public.report_requests
    DO ALSO INSERT INTO public.report_log SELECT count(*) FROM public.core_project;
CREATE FUNCTION public.self_study_count() RETURNS bigint LANGUAGE sql STABLE
    BEGIN ATOMIC SELECT count(*) FROM public.core_project WHERE project_type = 'self_study'; END;
"""


@pytest.fixture
def write_new(db: Database, projects_spec: Spec, conn: psycopg.Connection[Any]) -> Database:
    """A seeded migration in write_new, with the user's view, matview, rule and SQL function on the legacy table."""
    with db.connect() as c:
        seed(c, 400, dirty_ratio=0.0, random_seed=5)
    _advance(db, projects_spec, "write_new")
    conn.execute(USER_OBJECTS)
    return db


def _live_counts(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """What each dependent reports and what the split tables hold, read in one REPEATABLE READ snapshot."""
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    try:
        conn.execute("REFRESH MATERIALIZED VIEW public.project_counts")
        conn.execute("INSERT INTO public.report_requests VALUES (1)")
        one = conn.execute
        return {
            "view": one("SELECT n FROM public.report_school").fetchone()[0],  # type: ignore[index]
            "view_on_view": one("SELECT n FROM public.school_report_total").fetchone()[0],  # type: ignore[index]
            "school_rows": one("SELECT count(*) FROM public.school_names").fetchone()[0],  # type: ignore[index]
            "matview": dict(one("SELECT project_type, n FROM public.project_counts").fetchall()),
            "rule": one("SELECT n FROM public.report_log ORDER BY n DESC LIMIT 1").fetchone()[0],  # type: ignore[index]
            "function": one("SELECT public.self_study_count()").fetchone()[0],  # type: ignore[index]
            "split_school": one("SELECT count(*) FROM public.school_projects").fetchone()[0],  # type: ignore[index]
            "split_self": one("SELECT count(*) FROM public.self_study_projects").fetchone()[0],  # type: ignore[index]
            "split_all": one("SELECT count(*) FROM public.projects").fetchone()[0],  # type: ignore[index]
        }
    finally:
        conn.execute("ROLLBACK")


def _depends_on(conn: psycopg.Connection[Any], view: str) -> str:
    """The relation a view's query reads (by identity, as PostgreSQL binds it)."""
    row = conn.execute(
        "SELECT DISTINCT d.refobjid::regclass::text FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid "
        "WHERE r.ev_class = %s::regclass AND d.refobjid <> %s::regclass AND d.refclassid = 'pg_class'::regclass",
        [view, view],
    ).fetchall()
    return ",".join(sorted(r[0] for r in row))


def test_contract_repoints_views_matviews_rules_and_functions(
    write_new: Database, projects_spec: Spec, conn: psycopg.Connection[Any]
) -> None:
    """After contract --compat-view and writes on the split tables, the view, a view on it, the matview (once
    refreshed), the rule and the SQL function each report what the split tables hold, in one snapshot; the view
    keeps its options and grants, the matview its index and grants."""
    Contract(contract.Options(quiet_period=0, compat_view=True)).apply(Context(projects_spec, write_new))
    conn.execute("DELETE FROM public.projects WHERE id IN (SELECT project_id FROM public.school_projects LIMIT 7)")
    conn.execute("DELETE FROM public.projects WHERE id IN (SELECT project_id FROM public.self_study_projects LIMIT 3)")
    got = _live_counts(conn)
    assert got["view"] == got["view_on_view"] == got["school_rows"] == got["split_school"]
    assert got["matview"] == {"school": got["split_school"], "self_study": got["split_self"]}
    assert got["rule"] == got["split_all"]
    assert got["function"] == got["split_self"]
    assert _depends_on(conn, "public.report_school") == "core_project"
    options, acl = conn.execute(
        "SELECT reloptions::text, relacl::text FROM pg_class WHERE oid = 'public.report_school'::regclass"
    ).fetchone()  # type: ignore[misc]
    assert "security_barrier=true" in options
    assert "=r/" in acl  # the PUBLIC grant
    assert (
        "check_option=cascaded"
        in conn.execute("SELECT reloptions::text FROM pg_class WHERE oid = 'public.school_names'::regclass").fetchone()[
            0
        ]
    )  # type: ignore[index]
    assert conn.execute("SELECT to_regclass('public.project_counts_type') IS NOT NULL").fetchone()[0]  # type: ignore[index]
    assert (
        "=r/"
        in conn.execute("SELECT relacl::text FROM pg_class WHERE oid = 'public.project_counts'::regclass").fetchone()[0]
    )  # type: ignore[index]


def test_contract_without_compat_view_refuses_before_any_ddl(
    write_new: Database, projects_spec: Spec, conn: psycopg.Connection[Any], database_url: str, run_cli: Any
) -> None:
    """Without --compat-view there is nothing to re-point them at: contract exits 1 naming each object and the
    fix, and changes nothing (still write_new, no FK moved)."""
    r = run_cli("--dsn", database_url, "--json", "--yes", "contract", "--quiet-period", "0")
    assert r.exit_code == 1, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    message = result["error"]["message"]
    for name in ("public.report_school", "public.project_counts", "log_count on public.report_requests"):
        assert name in message
    assert "--compat-view" in result["error"]["hint"]
    with write_new.connect(autocommit=True) as c:
        assert state.read(c, projects_spec).state == "write_new"
    assert _depends_on(conn, "public.report_school") == "core_project"
    fks = conn.execute(
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND confrelid = 'public.core_project'::regclass"
    ).fetchone()[0]  # type: ignore[index]
    assert fks == len(projects_spec.references)


def test_a_rule_on_the_legacy_table_is_refused(
    write_new: Database, projects_spec: Spec, conn: psycopg.Connection[Any]
) -> None:
    """A rule on the legacy table itself cannot follow: contract --compat-view refuses, naming it and the fix."""
    conn.execute(
        "CREATE RULE keep_log AS ON DELETE TO public.core_project DO ALSO INSERT INTO public.report_log VALUES (0)"
    )
    with pytest.raises(GuardFailed, match=r"rule keep_log on public\.core_project: it fires on writes") as exc:
        Contract(contract.Options(quiet_period=0, compat_view=True)).apply(Context(projects_spec, write_new))
    assert "drop it" in exc.value.message
    with write_new.connect(autocommit=True) as c:
        assert state.read(c, projects_spec).state == "write_new"


def test_rollback_from_contracted_restores_them(
    write_new: Database, projects_spec: Spec, conn: psycopg.Connection[Any]
) -> None:
    """The rollback from contracted re-points every dependent at the restored legacy table: each reads it, and
    the view keeps its options."""
    ctx = Context(projects_spec, write_new)
    Contract(contract.Options(quiet_period=0, compat_view=True)).apply(ctx)
    conn.execute("DELETE FROM public.projects WHERE id IN (SELECT project_id FROM public.school_projects LIMIT 4)")
    operations.rollback(ctx, None, RollbackOptions(quiet_period=0))
    with write_new.connect(autocommit=True) as c:
        assert state.read(c, projects_spec).state == "write_new"
    assert _depends_on(conn, "public.report_school") == "core_project"
    assert (
        conn.execute("SELECT relkind::text FROM pg_class WHERE oid = 'public.core_project'::regclass").fetchone()[0]
        == "r"
    )  # type: ignore[index]
    got = _live_counts(conn)
    legacy_school = conn.execute("SELECT count(*) FROM public.core_project WHERE project_type = 'school'").fetchone()[0]  # type: ignore[index]
    assert got["view"] == got["split_school"] == legacy_school
    assert got["matview"]["school"] == legacy_school
    assert got["function"] == got["split_self"]
    assert (
        "security_barrier=true"
        in conn.execute(
            "SELECT reloptions::text FROM pg_class WHERE oid = 'public.report_school'::regclass"
        ).fetchone()[0]
    )  # type: ignore[index]
    # Forward again: the same objects are re-pointed once more.
    Contract(contract.Options(quiet_period=0, compat_view=True)).apply(ctx)
    assert _live_counts(conn)["view"] == _live_counts(conn)["split_school"]


def test_plan_and_doctor_list_what_contract_does(
    write_new: Database, projects_spec: Spec, conn: psycopg.Connection[Any]
) -> None:
    """Contract's plan (from the catalog) names each dependent and what happens to it; doctor lists them too."""
    with write_new.connect(autocommit=True) as c:
        found = {d.name: d.handling for d in dependents.find(c, projects_spec)}
        plan = Contract(contract.Options(compat_view=True)).plan(Context(projects_spec, write_new), c)
    assert found["public.report_school"] == "re-point"
    assert found["public.project_counts"] == "re-point"
    assert found["log_count on public.report_requests"] == "re-point"
    assert found["public.self_study_count()"] == "re-point"
    swap = plan[-1]
    assert "view public.report_school: re-created over the compatibility view" in swap.description
    assert "CREATE MATERIALIZED VIEW" in swap.text()
    report = doctor.run(write_new, projects_spec, checks=["dependents"])
    lines = " ".join(line for f in report.findings for line in [f.message, *f.details])
    assert "public.project_counts" in lines
    assert "re-point" in lines or "re-created" in lines


def test_plan_live_lists_what_contract_does_with_each_dependent(
    write_new: Database, database_url: str, run_cli: Any
) -> None:
    """`migrator plan --live --compat-view contract` reads the catalog (changing nothing) and names each dependent
    with what contract does to it; without --live, --compat-view is bad input."""
    r = run_cli("--dsn", database_url, "--json", "plan", "--live", "--compat-view", "contract")
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout.splitlines()[-1])
    descriptions = " ".join(s["description"] for p in result["details"]["phases"] for s in p["steps"])
    assert "view public.report_school: re-created over the compatibility view" in descriptions
    assert "public.project_counts" in descriptions
    with write_new.connect() as c:
        assert c.execute("SELECT to_regclass('public.core_project_archived')").fetchone() == (None,)
    assert run_cli("--dsn", database_url, "plan", "--compat-view", "contract").exit_code == 2

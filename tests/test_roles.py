"""Production roles (issue 16): the lifecycle as a non-superuser migration role with a separate application role
writing under load, the application role's limits (no tampering, no skipping the sync), and the search_path
hijack that once made an unprivileged role superuser."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from migrator import guards, operations, state
from migrator.db import Database
from migrator.demo import Writer
from migrator.engine.context import Context
from migrator.phases import contract, validate
from migrator.phases.backfill import Backfill
from migrator.phases.base import RollbackOptions
from migrator.phases.contract import Contract
from migrator.phases.expand import Expand
from migrator.phases.switch_reads import SwitchReads
from migrator.phases.switch_writes import SwitchWrites
from migrator.phases.validate import Validate
from migrator.seed import seed
from migrator.spec import Spec

pytestmark = pytest.mark.db

SEEDED_TABLES = ("auth_user", "core_project", "core_importantdate", "core_file", "core_project_attachments")
PASSWORD = "role-test-pw"


@dataclass
class Roles:
    admin_url: str
    migration: str
    app: str

    def url(self, role: str) -> str:
        return make_conninfo(self.admin_url, user=role, password=PASSWORD)


@pytest.fixture
def roles(database_url: str) -> Iterator[Roles]:
    """A seeded database whose legacy tables belong to a non-superuser migration role, and an application role
    holding only DML grants on core_project (and what its writes need: the key sequence, reading auth_user)."""
    tag = uuid.uuid4().hex[:8]
    r = Roles(database_url, f"mig_{tag}", f"app_{tag}")
    with psycopg.connect(database_url, autocommit=True) as c:
        seed(c, 1500, dirty_ratio=0.0, random_seed=11)
        dbname = c.info.dbname
        for role in (r.migration, r.app):
            c.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(PASSWORD)))
        mig, app = sql.Identifier(r.migration), sql.Identifier(r.app)
        for table in SEEDED_TABLES:
            c.execute(sql.SQL("ALTER TABLE public.{} OWNER TO {}").format(sql.Identifier(table), mig))
        c.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(dbname), mig))
        c.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(mig))
        # The long jobs' health signals and pace read the application's sessions (README: the migration role).
        c.execute(sql.SQL("GRANT pg_read_all_stats TO {}").format(mig))
        c.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON public.core_project TO {}").format(app))
        c.execute(sql.SQL("GRANT SELECT ON public.auth_user TO {}").format(app))
    try:
        yield r
    finally:
        with psycopg.connect(database_url, autocommit=True) as c:
            for role in (r.migration, r.app):
                ident = sql.Identifier(role)
                c.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(ident))
                c.execute(sql.SQL("DROP OWNED BY {}").format(ident))
            for role in (r.migration, r.app):
                c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _lifecycle(ctx: Context) -> None:
    """Every phase, and every rollback one state at a time, pausing so an application that polls the flags
    (every 0.2 s) has followed each change before the next."""

    def settle() -> None:
        time.sleep(0.6)

    Expand().apply(ctx)
    Backfill().apply(ctx)
    Validate(validate.Options(accept_quarantine=True)).apply(ctx)
    SwitchReads().apply(ctx)
    settle()
    SwitchWrites().apply(ctx)
    settle()
    operations.rollback(ctx)  # write_new -> read_new
    settle()
    SwitchWrites().apply(ctx)
    settle()
    Contract(contract.Options(quiet_period=0.5, compat_view=True, wait=30)).apply(ctx)
    settle()
    operations.rollback(ctx)  # contracted -> write_new: the reverse backfill refills legacy
    settle()
    with ctx.require_db().connect(autocommit=True) as c:
        assert guards.diff(c, ctx.spec) == []
    while (current := operations.current_state(ctx)) != "legacy":
        opts = RollbackOptions(drop_tables=current == "dual_write", quiet_period=0.5, wait=30)
        operations.rollback(ctx, opts=opts)
        settle()


@pytest.mark.slow
@pytest.mark.parametrize("operator", ["superuser", "migration_role"])
def test_lifecycle_with_an_application_role_writing(roles: Roles, projects_spec: Spec, operator: str) -> None:
    """The whole lifecycle and every rollback, run as superuser and as a non-superuser migration role, while an
    application role with only DML grants on core_project writes and follows the flags: 0 failed writes."""
    db = Database(roles.admin_url if operator == "superuser" else roles.url(roles.migration))
    writer = Writer(roles.url(roles.app), projects_spec, rate=100)
    writer.start()
    try:
        _lifecycle(Context(projects_spec, db))
    finally:
        stats = writer.stop()
        db.dispose()
    assert stats.failures == 0, stats.errors
    assert stats.split_writes > 20
    assert stats.legacy_writes > 20


def test_application_role_cannot_tamper_or_skip_the_sync(roles: Roles, projects_spec: Spec) -> None:
    """An application role reads the flags, but cannot accept quarantine, move the state, call the sync function
    or skip the sync by setting migrator.origin itself."""
    db = Database(roles.url(roles.migration))
    Expand().apply(Context(projects_spec, db))
    db.dispose()
    with psycopg.connect(roles.url(roles.app), autocommit=True) as app:
        assert app.execute("SELECT migrator.flag_state('core_project_split')").fetchone() == ("dual_write",)
        for statement in (
            "UPDATE migrator.quarantine SET accepted_at = now()",
            "UPDATE migrator.state SET state = 'contracted'",
            "SELECT migrator.core_project_split_sync(c, 'SYNC', 'app') FROM core_project c LIMIT 1",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement)
        with app.transaction():
            app.execute("SELECT set_config('migrator.origin', 'split', true)")
            app.execute("UPDATE core_project SET name = 'spoofed' WHERE id = 7")
    with psycopg.connect(roles.admin_url, autocommit=True) as c:
        assert c.execute("SELECT name FROM projects WHERE id = 7").fetchone() == ("spoofed",)


def test_search_path_hijack_does_not_escalate(database_url: str, projects_spec: Spec) -> None:
    """An unprivileged role that may create in public shadows =(varchar, varchar) with a function that makes it
    superuser; the operator's backfill and a privileged role's write through the trigger never run it."""
    evil = f"evil_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as c:
        seed(c, 300, dirty_ratio=0.1, random_seed=3)
        c.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")  # as on a cluster upgraded from PG <= 14
        c.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(evil), sql.Literal(PASSWORD)))
    try:
        with psycopg.connect(make_conninfo(database_url, user=evil, password=PASSWORD), autocommit=True) as e:
            e.execute("CREATE TABLE public.evil_calls (who text)")
            e.execute("GRANT INSERT ON public.evil_calls TO PUBLIC")
            e.execute(
                sql.SQL(
                    "CREATE FUNCTION public.evil_eq(varchar, varchar) RETURNS boolean LANGUAGE plpgsql AS $$ "
                    "BEGIN INSERT INTO public.evil_calls VALUES (current_user); "
                    "BEGIN EXECUTE 'ALTER ROLE ' || {} || ' SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END; "
                    "RETURN $1::text = $2::text; END $$"
                ).format(sql.Literal(evil))
            )
            e.execute("CREATE OPERATOR public.= (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = public.evil_eq)")
        db = Database(database_url)
        ctx = Context(projects_spec, db)
        Expand().apply(ctx)
        Backfill().apply(ctx)
        Validate(validate.Options(accept_quarantine=True)).apply(ctx)
        db.dispose()
        with psycopg.connect(database_url, autocommit=True) as c:
            c.execute(
                "UPDATE core_project SET name = 'privileged write', project_type = 'school', "
                "course_name = 'c', course_code = 'c', teacher_name = 't' WHERE id = 3"
            )
            assert c.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [evil]).fetchone() == (False,)
            assert c.execute("SELECT count(*) FROM public.evil_calls").fetchone() == (0,)
            assert state.read(c, projects_spec).state == "validated"
    finally:
        with psycopg.connect(database_url, autocommit=True) as c:
            c.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(evil)))
            c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(evil)))


def test_the_archive_is_read_only_for_application_roles(roles: Roles, projects_spec: Spec) -> None:
    """After contract the application role may read the archive but not write it; the rollback from contracted
    gives it its writes on the legacy table back."""
    ctx = Context(projects_spec, Database(roles.url(roles.migration)))
    Expand().apply(ctx)
    Backfill().apply(ctx)
    Validate(validate.Options(accept_quarantine=True)).apply(ctx)
    SwitchReads().apply(ctx)
    SwitchWrites().apply(ctx)
    Contract(contract.Options(quiet_period=0)).apply(ctx)
    with psycopg.connect(roles.url(roles.app), autocommit=True) as app:
        assert app.execute("SELECT count(*) > 0 FROM public.core_project_archived").fetchone() == (True,)
        for statement in (
            "UPDATE public.core_project_archived SET name = 'late' WHERE id = 7",
            "DELETE FROM public.core_project_archived WHERE id = 7",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement)
    operations.rollback(ctx, opts=RollbackOptions(quiet_period=0))
    ctx.require_db().dispose()
    with psycopg.connect(roles.url(roles.app), autocommit=True) as app:
        app.execute("UPDATE public.core_project SET name = 'back' WHERE id = 7")
    with psycopg.connect(roles.admin_url, autocommit=True) as c:
        assert c.execute("SELECT name FROM public.projects WHERE id = 7").fetchone() == ("back",)

"""`migrator models` (migrator.modelgen): generated Django and SQLAlchemy models are valid Python, carry the split
schema's shape, and the SQLAlchemy ones read and write the real split tables after expand + backfill."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session, configure_mappers, selectinload

from migrator import modelgen
from migrator.db import Database
from migrator.seed import seed
from migrator.spec import Spec, load_spec
from tests.conftest import Server
from tests.test_json_contract import check
from tests.test_lifecycle import _advance as advance


def import_source(code: str, directory: Path, name: str) -> ModuleType:
    """Import generated code as a real module (SQLAlchemy resolves annotations through sys.modules)."""
    path = directory / f"{name}.py"
    path.write_text(code)
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None
    assert module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


def sa_url(database_url: str) -> str:
    return database_url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.mark.unit
@pytest.mark.parametrize("spec_name", ["projects", "payments"])
def test_generated_code_compiles(spec_name: str, projects_spec: Spec, payments_spec: Spec) -> None:
    """Both generators emit valid Python for differently shaped specs (integer and uuid keys, other schemas)."""
    spec = projects_spec if spec_name == "projects" else payments_spec
    compile(modelgen.django_models(spec, "split"), "django_models.py", "exec")
    compile(modelgen.sqlalchemy_models(spec), "sa_models.py", "exec")


@pytest.mark.unit
def test_django_models_carry_the_split_shape(projects_spec: Spec) -> None:
    """The Django models: unmanaged, db_table, one-to-one children with related names, JSONField meta with a
    unique (link, key), the type-specific queryset methods, and an auto id so create() passes none."""
    code = modelgen.django_models(projects_spec, "split")
    assert code.count("        managed = False") == 4
    for table in ("projects", "school_projects", "self_study_projects", "project_meta"):
        assert f"db_table = '{table}'" in code
    assert (
        "id = models.BigAutoField(primary_key=True, db_column='id')  # DEFAULT nextval('public.core_project_id_seq')"
        in code
    )
    assert "related_name='schoolproject'" in code
    assert "related_name='selfstudyproject'" in code
    assert "related_name='metadata'" in code
    assert "value = models.JSONField(db_column='value')" in code
    assert "UniqueConstraint(fields=['project', 'key'], name='project_meta_project_id_key_key')" in code
    assert "name = models.CharField(max_length=255)" in code
    assert "start_date = models.DateField(null=True, blank=True)" in code
    assert "settings.AUTH_USER_MODEL" in code
    assert "def school_projects(self):" in code
    assert "def abandoned_drafts(self, hours=24):" in code
    assert "app_label = 'split'" in code
    assert "app_label" not in modelgen.django_models(projects_spec)


@pytest.mark.unit
def test_uuid_key_and_other_schema(payments_spec: Spec) -> None:
    """A uuid key gets a Python default (there is no sequence); a non-public schema is spelled in db_table."""
    code = modelgen.django_models(payments_spec)
    assert "models.UUIDField(primary_key=True, default=uuid.uuid4" in code
    assert """db_table = 'billing_v2"."payments'""" in code
    assert "DecimalField(max_digits=12, decimal_places=2)" in code
    sa = modelgen.sqlalchemy_models(payments_spec)
    assert "{'schema': 'billing_v2'}" in sa
    assert "default=uuid.uuid4" in sa


@pytest.mark.unit
@pytest.mark.parametrize(
    ("pg_type", "django", "sa", "py"),
    [
        ("varchar(50)", "models.CharField(", "String(50)", "str"),
        ("character varying(9)", "models.CharField(", "String(9)", "str"),
        ("text", "models.TextField(", "Text", "str"),
        ("bigint", "models.BigIntegerField(", "BigInteger", "int"),
        ("timestamptz", "models.DateTimeField(", "DateTime(timezone=True)", "datetime.datetime"),
        ("timestamp(3) with time zone", "models.DateTimeField(", "DateTime(timezone=True)", "datetime.datetime"),
        ("timestamp", "models.DateTimeField(", "DateTime(timezone=False)", "datetime.datetime"),
        ("time without time zone", "models.TimeField(", "Time", "datetime.time"),
        ("numeric(10,2)", "models.DecimalField(", "Numeric(10, 2)", "decimal.Decimal"),
        ("double precision", "models.FloatField(", "Double", "float"),
        ("jsonb", "models.JSONField(", "JSONB", "Any"),
        ("uuid", "models.UUIDField(", "Uuid", "uuid.UUID"),
        ("int[]", "ArrayField(", "ARRAY(Integer)", "list[int]"),
        ("shop.order_kind", "models.TextField(", "Text", "str"),
    ],
)
def test_column_types(pg_type: str, django: str, sa: str, py: str) -> None:
    """Each PostgreSQL type maps to the Django field, SQLAlchemy type and Python type that read it."""
    t = modelgen.field_types(pg_type)
    assert (t.django, t.sa, t.py) == (django, sa, py)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("table", "cls"),
    [
        ("projects", "Project"),
        ("school_projects", "SchoolProject"),
        ("project_meta", "ProjectMeta"),
        ("categories", "Category"),
        ("addresses", "Address"),
        ("status", "Status"),
        ("2fa", "M2fa"),
    ],
)
def test_class_names(table: str, cls: str) -> None:
    """Table names become singular CamelCase class names, as the seed's models are named."""
    assert modelgen.class_name(table) == cls


@pytest.mark.unit
def test_sqlalchemy_mappers_configure(payments_spec: Spec, tmp_path: Path) -> None:
    """The generated SQLAlchemy classes import and their relationships configure (uuid key, renamed meta)."""
    module = import_source(modelgen.sqlalchemy_models(payments_spec), tmp_path, f"pay_{uuid.uuid4().hex[:8]}")
    configure_mappers()
    assert module.Payment.__table__.fullname == "billing_v2.payments"
    assert module.CardPayment.payment.property.mapper.class_ is module.Payment


@contextmanager
def scratch_database(server: Server) -> Iterator[str]:
    """A fresh database for a module-scoped fixture (the `database_url` fixture is per test)."""
    name = f"mt_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.admin_url, autocommit=True) as c:
        c.execute(psycopg.sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(psycopg.sql.Identifier(name)))
    try:
        yield server.url_for(name)
    finally:
        with psycopg.connect(server.admin_url, autocommit=True) as c:
            c.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(name)))


@pytest.fixture(scope="module")
def split_db(pg_server: Server) -> Iterator[tuple[str, Database]]:
    """A database seeded with 300 clean rows, expanded and backfilled (read-only tests share it)."""
    with scratch_database(pg_server) as url:
        db = Database(url)
        try:
            with db.connect() as c:
                seed(c, 300, dirty_ratio=0.0, random_seed=5)
            advance(db, load_spec(), "backfilled")
            yield url, db
        finally:
            db.dispose()


@pytest.mark.db
def test_sqlalchemy_models_read_the_split_tables(split_db: Any, projects_spec: Spec, tmp_path: Path) -> None:
    """After expand + backfill the generated SQLAlchemy models read what the legacy table holds: counts by type,
    the school listing with course fields, and an owner's projects with meta loaded."""
    url, _ = split_db
    m = import_source(modelgen.sqlalchemy_models(projects_spec), tmp_path, f"proj_{uuid.uuid4().hex[:8]}")
    with psycopg.connect(url) as c:
        legacy_school = c.execute(
            "SELECT id, course_name FROM public.core_project WHERE project_type = 'school' ORDER BY id"
        ).fetchall()
        legacy_syllabus = dict(
            c.execute("SELECT id, syllabus FROM public.core_project WHERE syllabus IS NOT NULL").fetchall()
        )
        owner = c.execute(
            "SELECT owner_id FROM public.core_project GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
        assert owner is not None
        owned = c.execute("SELECT count(*) FROM public.core_project WHERE owner_id = %s", owner).fetchone()
    engine = create_engine(sa_url(url))
    try:
        with Session(engine) as s:
            assert s.scalar(
                select(func.count()).select_from(m.Project).where(m.Project.project_type == "school")
            ) == len(legacy_school)
            rows = s.execute(
                select(m.Project.id, m.SchoolProject.course_name).join(m.Project.schoolproject).order_by(m.Project.id)
            ).all()
            assert [tuple(r) for r in rows] == legacy_school
            projects = s.scalars(
                select(m.Project).where(m.Project.owner_id == owner[0]).options(selectinload(m.Project.meta))
            ).all()
            assert owned is not None
            assert len(projects) == owned[0]
            seen = {p.id: {x.key: x.value for x in p.meta} for p in projects}
            for pid, meta in seen.items():
                assert meta.get("syllabus") == legacy_syllabus.get(pid)
            assert legacy_syllabus, "the seed gave no syllabus at all: the meta check would prove nothing"
    finally:
        engine.dispose()


@pytest.mark.db
def test_sqlalchemy_insert_in_write_new_reaches_legacy(
    db: Database, database_url: str, projects_spec: Spec, tmp_path: Path
) -> None:
    """In write_new a project created through the SQLAlchemy models gets its id from the legacy sequence and is
    seen in the legacy table (reverse sync), with its child and meta."""
    with db.connect() as c:
        seed(c, 50, dirty_ratio=0.0, random_seed=3)
    advance(db, projects_spec, "write_new")
    with psycopg.connect(database_url) as c:
        defaults = modelgen.legacy_defaults(c, projects_spec)
    m = import_source(modelgen.sqlalchemy_models(projects_spec, defaults), tmp_path, f"w_{uuid.uuid4().hex[:8]}")
    engine = create_engine(sa_url(database_url))
    try:
        with Session(engine) as s, s.begin():
            p = m.Project(name="Algebra", project_type="school", owner_id=1)
            p.schoolproject = m.SchoolProject(course_name="Maths", course_code="M-101", teacher_name="Ada")
            p.meta = [m.ProjectMeta(key="syllabus", value={"weeks": 12})]
            s.add(p)
            s.flush()
            new_id = p.id
    finally:
        engine.dispose()
    assert new_id > 50
    with psycopg.connect(database_url) as c:
        row = c.execute(
            "SELECT name, course_code, syllabus, is_draft, created_at IS NOT NULL FROM public.core_project"
            " WHERE id = %s",
            [new_id],
        ).fetchone()
    assert row == ("Algebra", "M-101", {"weeks": 12}, True, True)


@pytest.mark.unit
def test_models_command_json(run_cli: Any) -> None:
    """`migrator --json models --django` ends with one result carrying the code; without a framework: exit 2."""
    ok = check(run_cli("--json", "models", "--django", "--app", "split"), "models", 0)
    assert ok["details"]["framework"] == "django"
    assert ok["details"]["classes"] == ["Project", "SchoolProject", "SelfStudyProject", "ProjectMeta"]
    compile(ok["details"]["code"], "m.py", "exec")
    assert ok["changed"] is False
    bad = check(run_cli("--json", "models"), "models", 2)
    assert bad["error"]["code"] == "bad_input"
    assert check(run_cli("--json", "models", "--sqlalchemy", "--app", "x"), "models", 2)["error"]["code"] == "bad_input"


@pytest.mark.unit
def test_models_command_prints_source(run_cli: Any) -> None:
    """Without --json the command prints only the Python source on stdout (redirectable into models.py)."""
    r = run_cli("models", "--sqlalchemy")
    assert r.exit_code == 0
    assert r.stdout.startswith('"""SQLAlchemy models')
    compile(r.stdout, "m.py", "exec")


@pytest.mark.db
def test_legacy_defaults_from_the_database(run_cli: Any, db: Database, database_url: str) -> None:
    """--legacy-defaults reads the legacy columns' defaults: is_draft true, the timestamps now()."""
    with db.connect() as c:
        seed(c, 0)
    r = check(run_cli("--dsn", database_url, "--json", "models", "--django", "--legacy-defaults"), "models", 0)
    assert r["details"]["defaults"] == ["created_at", "is_draft", "updated_at"]
    code = r["details"]["code"]
    assert "is_draft = models.BooleanField(default=True)" in code
    assert "created_at = models.DateTimeField(default=timezone.now)" in code
    assert "from django.utils import timezone" in code

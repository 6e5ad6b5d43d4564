"""migrator.contrib.django with a real Django project (written to a temporary directory: settings, the seed's
"Before" model, the generated "After" models, manage.py) against a real PostgreSQL, through the states: the old
model writes and the new models read; read_new with the seed's prefetching; the seed's create_school_project()
in write_new; contracted with and without the compatibility view. No mocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from migrator.db import Database
from migrator.engine.context import Context
from migrator.flags import bucket
from migrator.phases import contract, switch_reads
from migrator.phases.contract import Contract
from migrator.phases.switch_reads import SwitchReads
from migrator.seed import seed
from migrator.spec import Spec
from tests.conftest import Server
from tests.helpers import move_state
from tests.test_modelgen import advance, scratch_database

django = pytest.importorskip("django")

pytestmark = pytest.mark.db

ROOT = Path(__file__).resolve().parent.parent
MIGRATOR_EXE = Path(sys.executable).parent / "migrator"

CORE_MODELS = '''
"""The seed's "Before" model and the seed schema's user table, unmanaged (migrator.seed creates them)."""

from django.db import models


class User(models.Model):
    username = models.CharField(max_length=150, unique=True)
    email = models.CharField(max_length=254, default="")
    date_joined = models.DateTimeField(auto_now_add=True)

    class Meta:
        managed = False
        db_table = "auth_user"


class Project(models.Model):
    name = models.CharField(max_length=255)
    project_type = models.CharField(max_length=20)
    owner = models.ForeignKey(User, on_delete=models.CASCADE)
    course_name = models.CharField(max_length=255, blank=True, null=True)
    course_code = models.CharField(max_length=50, blank=True, null=True)
    teacher_name = models.CharField(max_length=255, blank=True, null=True)
    syllabus = models.JSONField(blank=True, null=True)
    goal_description = models.TextField(blank=True, null=True)
    study_frequency = models.CharField(max_length=50, blank=True, null=True)
    start_date = models.DateField(null=True, blank=True)
    end_date = models.DateField(null=True, blank=True)
    is_draft = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        managed = False
        db_table = "core_project"
'''

SERVICES = '''
"""The seed's create_school_project(), as the seed writes it, on the generated models."""

from split.models import Project, SchoolProject


def create_school_project(name, owner, course_name, course_code, teacher_name, **kwargs):
    project = Project.objects.create(
        name=name,
        project_type='school',
        owner=owner,
        **kwargs
    )

    SchoolProject.objects.create(
        project=project,
        course_name=course_name,  # Required
        course_code=course_code,  # Required
        teacher_name=teacher_name, # Required
    )

    return project
'''

BROKEN_MODELS = '''
from django.db import models


class StaleProject(models.Model):
    """A split-table model from an older spec: a column the table does not have."""

    name = models.CharField(max_length=255)
    nickname = models.CharField(max_length=50)

    class Meta:
        managed = False
        db_table = "projects"
'''

SETTINGS = """
import os

from psycopg.conninfo import conninfo_to_dict


def _database(url):
    d = conninfo_to_dict(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": d.get("dbname", ""),
        "USER": d.get("user", ""),
        "PASSWORD": d.get("password", ""),
        "HOST": d.get("host", ""),
        "PORT": d.get("port", ""),
    }


DATABASES = {"default": _database(os.environ["DATABASE_URL"])}
if os.environ.get("OTHER_DATABASE_URL"):
    DATABASES["other"] = _database(os.environ["OTHER_DATABASE_URL"])
INSTALLED_APPS = ["core", "split", "migrator.contrib.django"]
AUTH_USER_MODEL = "core.User"
MIGRATOR = {"spec": "projects", "max_age": 0.5}
SECRET_KEY = "test-only"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
"""

MANAGE = """
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
"""


def _django_database(url: str) -> dict[str, Any]:
    # libpq's parser: the embedded server's URL names its socket directory in the query (?host=/tmp/…).
    d = conninfo_to_dict(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": d.get("dbname", ""),
        "USER": d.get("user", ""),
        "PASSWORD": d.get("password", ""),
        "HOST": d.get("host", ""),
        "PORT": str(d.get("port", "")),
    }


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory: pytest.TempPathFactory, pg_server: Server) -> Iterator[Path]:
    """A Django project on disk whose split app's models.py is `migrator models --django --app split
    --legacy-defaults` output, and Django set up in this process on it."""
    from django.conf import settings

    root = tmp_path_factory.mktemp("djproject")
    for package, files in {
        "core": {"models.py": CORE_MODELS},
        "split": {"services.py": SERVICES},
        "broken": {"models.py": BROKEN_MODELS},
        "testsite": {"settings.py": SETTINGS},
    }.items():
        (root / package).mkdir()
        (root / package / "__init__.py").write_text("")
        for name, text in files.items():
            (root / package / name).write_text(textwrap.dedent(text).lstrip())
    (root / "manage.py").write_text(textwrap.dedent(MANAGE).lstrip())
    with scratch_database(pg_server) as url:
        with psycopg.connect(url) as c:
            seed(c, 0)
        out = subprocess.run(
            [str(MIGRATOR_EXE), "--dsn", url, "models", "--django", "--app", "split", "--legacy-defaults"],
            capture_output=True,
            text=True,
            check=True,
        )
    (root / "split" / "models.py").write_text(out.stdout)
    sys.path.insert(0, str(root))
    if not settings.configured:
        settings.configure(
            DATABASES={"default": _django_database(pg_server.admin_url)},
            INSTALLED_APPS=["core", "split", "broken", "migrator.contrib.django"],
            AUTH_USER_MODEL="core.User",
            MIGRATOR={"spec": "projects", "max_age": 0.5},
            USE_TZ=True,
            DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        )
        django.setup()
    try:
        yield root
    finally:
        sys.path.remove(str(root))


@pytest.fixture
def dj(project_dir: Path, db: Database, database_url: str) -> Iterator[Database]:
    """Django pointed at this test's fresh database, seeded with 200 clean legacy rows."""
    from django.conf import settings
    from django.db import connections

    import migrator.contrib.django as mdj

    with db.connect() as c:
        seed(c, 200, dirty_ratio=0.0, random_seed=11)
    connections.close_all()
    target = _django_database(database_url)
    settings.DATABASES["default"].update(target)
    connections["default"].settings_dict.update(target)
    mdj.reset()
    try:
        yield db
    finally:
        mdj.reset()
        connections.close_all()


def move(db: Database, spec: Spec, to: str) -> None:
    """Advance with the library's phases, then make this process's reader see it now (not max_age later)."""
    import migrator.contrib.django as mdj

    advance(db, spec, to)
    mdj.get_reader().refresh()
    assert mdj.state() == to


def _child(project: Any, name: str) -> Any:
    from django.core.exceptions import ObjectDoesNotExist

    try:
        return getattr(project, name)
    except ObjectDoesNotExist:
        return None


def _split_view(p: Any) -> tuple[Any, ...]:
    """A split Project in the legacy row's shape, from what select_related/prefetch_related loaded."""
    school, study = _child(p, "schoolproject"), _child(p, "selfstudyproject")
    meta = {m.key: m.value for m in p.metadata.all()}
    return (
        p.name,
        p.project_type,
        p.owner_id,
        school.course_name if school else None,
        school.course_code if school else None,
        study.goal_description if study else None,
        meta.get("syllabus"),
        p.is_draft,
    )


def _legacy_view(p: Any) -> tuple[Any, ...]:
    school, study = p.project_type == "school", p.project_type == "self_study"
    return (
        p.name,
        p.project_type,
        p.owner_id,
        p.course_name if school else None,
        p.course_code if school else None,
        p.goal_description if study else None,
        p.syllabus,
        p.is_draft,
    )


def _busiest_owner() -> int:
    from core.models import Project as Legacy
    from django.db.models import Count

    row = Legacy.objects.values("owner_id").annotate(n=Count("id")).order_by("-n", "owner_id").first()
    assert row is not None
    return int(row["owner_id"])


def _state_checks(*labels: str) -> list[Any]:
    from django.apps import apps
    from django.core import checks

    configs = [apps.get_app_config(label) for label in labels]
    return [m for m in checks.run_checks(app_configs=configs, databases=["default"]) if m.id.startswith("migrator")]


def test_dual_write_old_model_writes_new_models_read(dj: Database, projects_spec: Spec) -> None:
    """dual_write: rows the old model creates and updates are read by the generated models; after the backfill
    every row reads the same through both; the flags keep the app on legacy."""
    from core.models import Project as Legacy
    from core.models import User
    from split.models import Project

    import migrator.contrib.django as mdj

    move(dj, projects_spec, "dual_write")
    assert (mdj.reads_split(1), mdj.writes_split()) == (False, False)
    owner = User.objects.get(pk=1)
    old = Legacy.objects.create(
        name="Physics",
        project_type="school",
        owner=owner,
        course_name="Mechanics",
        course_code="PHY-1",
        teacher_name="Noether",
        syllabus={"weeks": 10},
    )
    Legacy.objects.filter(pk=old.pk).update(course_name="Optics")
    new = Project.objects.select_related("schoolproject").prefetch_related("metadata").get(pk=old.pk)
    assert new.schoolproject.course_name == "Optics"
    assert {m.key: m.value for m in new.metadata.all()} == {"syllabus": {"weeks": 10}}
    assert Project.objects.school_projects().filter(pk=old.pk).exists()

    move(dj, projects_spec, "backfilled")
    legacy = {p.pk: _legacy_view(p) for p in Legacy.objects.all()}
    split = {
        p.pk: _split_view(p)
        for p in Project.objects.select_related("schoolproject", "selfstudyproject").prefetch_related("metadata")
    }
    assert len(legacy) == 201
    assert split == legacy
    assert _state_checks("core", "split") == []


def test_read_new_reads_through_the_new_models(dj: Database, projects_spec: Spec) -> None:
    """read_new: the seed's listing (select_related children and owner, prefetch_related('metadata')) takes two
    queries and equals the legacy rows; with 30% of reads on split the per-request switch follows the key's
    bucket, and one request keeps one decision."""
    from core.models import Project as Legacy
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from split.models import Project

    import migrator.contrib.django as mdj

    move(dj, projects_spec, "validated")
    SwitchReads(switch_reads.Options(percent=30)).apply(Context(projects_spec, dj))
    mdj.get_reader().refresh()
    for key in range(1, 60):
        expected = bucket(projects_spec.migration_name, key) < 30
        assert mdj.reads_split(key) is expected
        with mdj.split_path(key) as path:
            assert path.read_model(Legacy, Project) is (Project if expected else Legacy)
            assert mdj.current_path().reads_split is expected
    assert mdj.reads_split() is False  # no key: legacy until every request reads split

    @mdj.use_split(lambda user_id: user_id)
    def model_for(user_id: int) -> Any:
        return mdj.current_path().read_model(Legacy, Project)

    assert {model_for(k) for k in range(1, 60)} == {Legacy, Project}

    SwitchReads(switch_reads.Options(percent=100)).apply(Context(projects_spec, dj))
    mdj.get_reader().refresh()
    assert mdj.reads_split() is True
    owner = _busiest_owner()
    with CaptureQueriesContext(connection) as queries:
        projects = list(
            Project.objects.filter(owner_id=owner)
            .select_related("owner", "schoolproject", "selfstudyproject")
            .prefetch_related("metadata")
        )
        split = {p.pk: _split_view(p) for p in projects}
        names = {p.owner.username for p in projects}
    assert len(queries) == 2
    assert len(names) == 1
    assert split == {p.pk: _legacy_view(p) for p in Legacy.objects.filter(owner_id=owner)}
    assert len(split) > 1
    school = list(Project.objects.school_projects().values_list("pk", "schoolproject__course_name"))
    assert sorted(school) == sorted(Legacy.objects.filter(project_type="school").values_list("pk", "course_name"))


def test_write_new_create_school_project_seen_by_old_model(dj: Database, projects_spec: Spec) -> None:
    """write_new: the seed's create_school_project() through the generated models (no id passed; defaults from
    the legacy table) is read back by the old model, key from the legacy sequence."""
    from core.models import Project as Legacy
    from core.models import User
    from split.models import Project, ProjectMeta
    from split.services import create_school_project

    import migrator.contrib.django as mdj

    move(dj, projects_spec, "write_new")
    assert mdj.writes_split()
    with mdj.split_path(7) as path:
        assert path.write_model(Legacy, Project) is Project
    project = create_school_project(
        "Chemistry", User.objects.get(pk=1), "Organic", "CHE-2", "Franklin", start_date=date(2026, 9, 1)
    )
    ProjectMeta.objects.create(project=project, key="syllabus", value={"labs": 4})
    assert project.pk > 200
    old = Legacy.objects.get(pk=project.pk)
    assert (old.name, old.project_type, old.course_name, old.course_code, old.teacher_name) == (
        "Chemistry",
        "school",
        "Organic",
        "CHE-2",
        "Franklin",
    )
    assert (old.syllabus, old.start_date, old.is_draft) == ({"labs": 4}, date(2026, 9, 1), True)
    Project.objects.filter(pk=project.pk).update(name="Biochemistry")
    assert Legacy.objects.get(pk=project.pk).name == "Biochemistry"


def test_contracted_with_compat_view_old_model_still_works(
    dj: Database, projects_spec: Spec, database_url: str, tmp_path: Path
) -> None:
    """contracted with the compatibility view: the old model reads and writes through the view, the new models
    see its writes, the generated SQLAlchemy models run the same reads, and no migrator check warns."""
    from core.models import Project as Legacy
    from core.models import User
    from split.models import Project

    from migrator import modelgen
    from tests.test_modelgen import import_source, sa_url

    move(dj, projects_spec, "contracted")
    assert _state_checks("core", "split") == []
    made = Legacy.objects.create(
        name="History",
        project_type="self_study",
        owner=User.objects.get(pk=2),
        goal_description="Rome",
        study_frequency="weekly",
    )
    new = Project.objects.select_related("selfstudyproject").get(pk=made.pk)
    assert (new.selfstudyproject.goal_description, new.is_draft) == ("Rome", True)
    Legacy.objects.filter(pk=made.pk).update(study_frequency="daily")
    assert Project.objects.get(pk=made.pk).selfstudyproject.study_frequency == "daily"
    split = {
        p.pk: _split_view(p)
        for p in Project.objects.select_related("schoolproject", "selfstudyproject").prefetch_related("metadata")
    }
    assert split == {p.pk: _legacy_view(p) for p in Legacy.objects.all()}

    from sqlalchemy import create_engine, func, select
    from sqlalchemy.orm import Session, selectinload

    m = import_source(modelgen.sqlalchemy_models(projects_spec), tmp_path, "sa_contracted_models")
    engine = create_engine(sa_url(database_url))
    try:
        with Session(engine) as s:
            count = s.scalar(select(func.count()).select_from(m.Project).where(m.Project.project_type == "school"))
            assert count == Legacy.objects.filter(project_type="school").count()
            owner = _busiest_owner()
            rows = s.scalars(
                select(m.Project)
                .where(m.Project.owner_id == owner)
                .options(selectinload(m.Project.meta), selectinload(m.Project.schoolproject))
            ).all()
            got = {p.id: (p.name, p.schoolproject.course_name if p.schoolproject else None) for p in rows}
    finally:
        engine.dispose()
    want = {
        p.pk: (p.name, p.course_name if p.project_type == "school" else None)
        for p in Legacy.objects.filter(owner_id=owner)
    }
    assert got == want


def test_contracted_without_compat_view_warns(
    dj: Database, projects_spec: Spec, project_dir: Path, database_url: str
) -> None:
    """contracted without the view: the check framework warns that the old model's table is gone (W001), a
    model with a column the split table lacks is reported (W003), and manage.py check shows it too."""
    move(dj, projects_spec, "write_new")
    Contract(contract.Options(quiet_period=0)).apply(Context(projects_spec, dj))
    import migrator.contrib.django as mdj

    mdj.get_reader().refresh()
    found = _state_checks("core", "split", "broken")
    ids = sorted(m.id for m in found)
    assert ids == ["migrator.W001", "migrator.W003"], [str(m) for m in found]
    w001 = next(m for m in found if m.id == "migrator.W001")
    assert "core_project_archived" in w001.msg
    assert "nickname" in next(m for m in found if m.id == "migrator.W003").msg
    assert [m.id for m in _state_checks("core")] == ["migrator.W001", "migrator.W002"]

    r = _manage(project_dir, database_url, "check", "--database", "default")
    assert "migrator.W001" in r.stderr + r.stdout


def _manage(project_dir: Path, url: str, *args: str, other: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    if other:
        env["OTHER_DATABASE_URL"] = other
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_manage_py_migrator_runs_the_cli(
    dj: Database, projects_spec: Spec, project_dir: Path, database_url: str, pg_server: Server
) -> None:
    """`manage.py migrator …` runs migrator commands on DATABASES' database (`--database` picks the alias), with
    the command's JSON result and exit code."""
    move(dj, projects_spec, "dual_write")
    r = _manage(project_dir, database_url, "migrator", "--json", "status")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.splitlines()[-1])
    assert (result["command"], result["state"]) == ("status", "dual_write")
    refused = _manage(project_dir, database_url, "migrator", "--json", "switch-writes")
    assert refused.returncode == 1
    assert json.loads(refused.stdout.splitlines()[-1])["error"]["code"] == "wrong_state"
    with scratch_database(pg_server) as other:
        r = _manage(project_dir, database_url, "migrator", "--database", "other", "--json", "status", other=other)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.splitlines()[-1])["state"] == "legacy"
        r = _manage(project_dir, database_url, "migrator", "--database", "nope", "status", other=other)
        assert r.returncode != 0
        assert "nope" in r.stderr


def test_reader_is_lazy_process_wide_and_fork_safe(dj: Database, projects_spec: Spec) -> None:
    """One reader per process, built on first use from DATABASES; a forked child builds its own and leaves the
    parent's connections alone (the parent keeps reading after the child exits)."""
    import migrator.contrib.django as mdj

    move(dj, projects_spec, "dual_write")
    parent = mdj.get_reader()
    assert mdj.get_reader() is parent
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: the point of the test
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            child = mdj.get_reader()
            os.write(write_end, f"{child is not parent} {mdj.state()}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        report = f.read()
    os.waitpid(pid, 0)
    assert report == "True dual_write"
    with psycopg.connect(dj.dsn, autocommit=True) as c:
        move_state(c, projects_spec, "backfilled")
    parent.refresh()
    assert mdj.get_reader() is parent
    assert mdj.state() == "backfilled"

"""Test harness: every database test gets a fresh database on a real PostgreSQL server.

Where the server comes from, in order: DATABASE_URL; a testcontainers PostgreSQL when a Docker engine answers;
the embedded PostgreSQL wheel. No mocks, no SQLite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from migrator.db import Database
from migrator.spec import Spec, load_spec

ROOT = Path(__file__).resolve().parent.parent
SPECS = Path(__file__).resolve().parent / "specs"


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class Server:
    admin_url: str  # a libpq URL to a maintenance database on the server
    kind: str

    def url_for(self, dbname: str) -> str:
        return make_url(self.admin_url).set(database=dbname).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    """The PostgreSQL server the whole session uses."""
    env = os.environ.get("DATABASE_URL")
    if env:
        yield Server(env, "DATABASE_URL")
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as pg:
            yield Server(pg.get_connection_url(), "testcontainers")
        return
    from migrator import embedded

    server = embedded.start(keep=False)
    try:
        yield Server(str(server.get_uri("postgres")), "embedded")
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()


@pytest.fixture
def database_url(pg_server: Server) -> Iterator[str]:
    """A DSN of a fresh, empty database, dropped after the test."""
    name = f"mt_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.admin_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(psycopg.sql.Identifier(name)))
    try:
        yield pg_server.url_for(name)
    finally:
        with psycopg.connect(pg_server.admin_url, autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(name))
            )


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A migrator Database on the fresh database."""
    database = Database(database_url)
    yield database
    database.dispose()


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit psycopg connection to the fresh database, for arranging and asserting."""
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


@pytest.fixture
def projects_spec() -> Spec:
    """The built-in projects spec."""
    return load_spec()


@pytest.fixture
def payments_spec() -> Spec:
    """The differently shaped payments spec (uuid key, other schemas)."""
    return load_spec(SPECS / "payments.toml")


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Any:
    """Run `migrator ARGS` in-process and return exit code, stdout and stderr."""
    from migrator import cli

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            cli.main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def migrator_exe() -> str:
    """The installed console script, for tests that need a real process (signals, stdin)."""
    exe = Path(sys.executable).parent / "migrator"
    return str(exe) if exe.exists() else "migrator"

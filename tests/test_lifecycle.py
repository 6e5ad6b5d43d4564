"""pgroll-style lifecycle tests: advance -> reads/writes through legacy and split agree -> rollback -> agree ->
advance again, for every state, with a live writer the whole time; 0 lost rows, 0 zombies, 0 failed writes."""

from __future__ import annotations

import time
from typing import Any

import pytest
from psycopg import sql

from migrator import guards, lifecycle, operations, state
from migrator.copy import reverse
from migrator.db import Database
from migrator.demo import Writer
from migrator.engine.context import Context
from migrator.engine.session import set_local
from migrator.phases import contract, finalize, switch_reads, validate
from migrator.phases.backfill import Backfill
from migrator.phases.base import Phase
from migrator.phases.contract import Contract
from migrator.phases.expand import Expand
from migrator.phases.finalize import Finalize
from migrator.phases.switch_reads import SwitchReads
from migrator.phases.switch_writes import SwitchWrites
from migrator.phases.validate import Validate
from migrator.seed import seed
from migrator.spec import Spec

pytestmark = pytest.mark.db


# Each forward phase, by its command, as these tests run it.
PHASES: dict[str, Phase[Any]] = {
    p.name: p
    for p in (
        Expand(),
        Backfill(),
        Validate(validate.Options(accept_quarantine=True)),
        SwitchReads(switch_reads.Options(percent=100)),
        SwitchWrites(),
        Contract(contract.Options(quiet_period=0, compat_view=True)),
        Finalize(finalize.Options(min_age=0, quiet_period=0)),
    )
}


def _advance(db: Database, spec: Spec, to: str) -> None:
    """Run the forward phases until the migration is in `to`."""
    while (current := _state(db, spec)) != to:
        command = lifecycle.next_command(current)
        assert command is not None, f"{to} is not ahead of {current}"
        PHASES[command].apply(Context(spec, db))


def _split_complete(state_: str | None) -> bool:
    """Whether the split tables hold every legacy row in that state (legacy and split must then agree)."""
    return state_ is not None and lifecycle.stage(state_).split_complete


def _state(db: Database, spec: Spec) -> str:
    with db.connect(autocommit=True) as c:
        return state.read(c, spec).state


def _in_sync(db: Database, spec: Spec) -> list[tuple[str, str]]:
    with db.connect(autocommit=True) as c:
        return guards.diff(c, spec)


@pytest.fixture
def seeded(db: Database) -> Database:
    """3,000 clean legacy rows."""
    with db.connect() as c:
        seed(c, 3000, dirty_ratio=0.0, random_seed=9)
    return db


@pytest.mark.parametrize("target", lifecycle.REVERSIBLE[1:])
def test_advance_rollback_advance_under_a_writer(
    seeded: Database, projects_spec: Spec, database_url: str, target: str
) -> None:
    """For each state: advance to it, check legacy and split agree, roll back one state, agree again, advance
    again — with a live writer throughout, which must see 0 failed transactions."""
    writer = Writer(database_url, projects_spec, rate=150)
    writer.start()
    try:
        _advance(seeded, projects_spec, target)
        if _split_complete(target):
            assert _in_sync(seeded, projects_spec) == []
        operations.rollback(Context(projects_spec, seeded))
        if _split_complete(lifecycle.previous(target)):
            assert _in_sync(seeded, projects_spec) == []
        _advance(seeded, projects_spec, target)
        time.sleep(0.3)
    finally:
        stats = writer.stop()
    assert stats.failures == 0, stats.errors
    assert stats.transactions > 20
    assert _state(seeded, projects_spec) == target
    if _split_complete(target):
        assert _in_sync(seeded, projects_spec) == []


def test_contracted_rollback_then_readvance_validates_clean(
    seeded: Database, projects_spec: Spec, database_url: str, conn: Any
) -> None:
    """Rollback from contracted (reverse backfill) then re-advance ends with validation clean, and writes made
    through the split tables while contracted are in the restored legacy table."""
    _advance(seeded, projects_spec, "contracted")
    conn.execute("UPDATE projects SET name = 'written while contracted' WHERE id = 42")
    conn.execute("DELETE FROM projects WHERE id = 43")
    new_id = conn.execute(
        "INSERT INTO core_project (name, project_type, owner_id, goal_description, "
        "study_frequency) VALUES ('via compat view', 'self_study', 1, 'g', 'daily') "
        "RETURNING id"
    ).fetchone()[0]
    before = dict(conn.execute("SELECT id, xmax::text FROM core_project_archived").fetchall())
    operations.rollback(Context(projects_spec, seeded))
    assert _state(seeded, projects_spec) == "write_new"
    legacy = dict(conn.execute("SELECT id, name FROM core_project WHERE id IN (42, 43, %s)", [new_id]).fetchall())
    assert legacy == {42: "written while contracted", new_id: "via compat view"}
    assert _in_sync(seeded, projects_spec) == []
    # Only the rows that changed while contracted were locked and written: 42 refreshed, 43 removed.
    details = conn.execute(
        "SELECT details FROM migrator.transitions WHERE command = 'rollback' ORDER BY id DESC LIMIT 1"
    ).fetchone()[0]
    assert (details["updated"], details["deleted"]) == (1, 1)
    # ... and no other legacy row was even locked (a row lock writes the locker into the row's xmax).
    after = dict(conn.execute("SELECT id, xmax::text FROM core_project").fetchall())
    assert {k for k, v in before.items() if after.get(k) != v} == {42, 43}
    Validate().apply(Context(projects_spec, seeded))
    _advance(seeded, projects_spec, "contracted")
    assert _state(seeded, projects_spec) == "contracted"


def test_compat_view_keeps_legacy_shaped_sql_working(seeded: Database, projects_spec: Spec, conn: Any) -> None:
    """After contract --compat-view, the seed's legacy-shaped INSERT/UPDATE/SELECT on the old name still work."""
    _advance(seeded, projects_spec, "contracted")
    assert conn.execute("SELECT relkind FROM pg_class WHERE relname = 'core_project'").fetchone()[0] == "v"
    pid = conn.execute(
        "INSERT INTO core_project (name, project_type, owner_id, course_name, course_code, teacher_name, syllabus) "
        "VALUES ('legacy-shaped', 'school', 1, 'Algebra', 'MA-1', 'Noether', '{\"weeks\": 3}') RETURNING id"
    ).fetchone()[0]
    row = conn.execute("SELECT name, course_code, syllabus, is_draft FROM core_project WHERE id = %s", [pid]).fetchone()
    assert row == ("legacy-shaped", "MA-1", {"weeks": 3}, True)
    conn.execute(
        "UPDATE core_project SET project_type = 'self_study', goal_description = 'g', "
        "study_frequency = 'weekly', syllabus = NULL WHERE id = %s",
        [pid],
    )
    assert conn.execute("SELECT count(*) FROM school_projects WHERE project_id = %s", [pid]).fetchone()[0] == 0
    assert (
        conn.execute("SELECT study_frequency FROM self_study_projects WHERE project_id = %s", [pid]).fetchone()[0]
        == "weekly"
    )
    assert conn.execute("SELECT count(*) FROM project_meta WHERE project_id = %s", [pid]).fetchone()[0] == 0
    conn.execute("DELETE FROM core_project WHERE id = %s", [pid])
    assert conn.execute("SELECT count(*) FROM projects WHERE id = %s", [pid]).fetchone()[0] == 0
    fk = conn.execute(
        "SELECT confrelid::regclass::text FROM pg_constraint WHERE conname = 'core_importantdate_project_id_split_fkey'"
    ).fetchone()[0]
    assert fk == "projects"


def test_ids_come_from_one_sequence_on_both_sides(seeded: Database, projects_spec: Spec, conn: Any) -> None:
    """In write_new, inserts through legacy and through split draw from the one legacy sequence: no id reused."""
    _advance(seeded, projects_spec, "write_new")
    a = conn.execute(
        "INSERT INTO core_project (name, project_type, owner_id, goal_description, study_frequency) "
        "VALUES ('legacy side', 'self_study', 1, 'g', 'daily') RETURNING id"
    ).fetchone()[0]
    with conn.transaction():
        b = conn.execute(
            "INSERT INTO projects (name, project_type, owner_id, is_draft, created_at, updated_at) "
            "VALUES ('split side', 'self_study', 1, false, now(), now()) RETURNING id"
        ).fetchone()[0]
        conn.execute("INSERT INTO self_study_projects VALUES (%s, 'g', 'daily')", [b])
    assert b > a
    operations.rollback(Context(projects_spec, seeded))  # write_new -> read_new
    c = conn.execute(
        "INSERT INTO core_project (name, project_type, owner_id, goal_description, study_frequency) "
        "VALUES ('after rollback', 'self_study', 1, 'g', 'daily') RETURNING id"
    ).fetchone()[0]
    assert c > b
    assert _in_sync(seeded, projects_spec) == []


def test_contract_refuses_while_legacy_is_written(
    seeded: Database, projects_spec: Spec, conn: Any, run_cli: Any, database_url: str
) -> None:
    """contract exits 1 while statements still write the legacy table directly within the quiet period."""
    _advance(seeded, projects_spec, "write_new")
    conn.execute("UPDATE core_project SET name = 'old instance' WHERE id = 5")
    r = run_cli("--dsn", database_url, "--yes", "contract", "--quiet-period", "30")
    assert r.exit_code == 1
    assert "free of direct writes" in r.stderr
    assert _state(seeded, projects_spec) == "write_new"


def test_contract_refuses_when_a_reference_points_at_a_quarantined_row(
    seeded: Database, projects_spec: Spec, conn: Any, run_cli: Any, database_url: str
) -> None:
    """contract exits 1 naming the keys, before any DDL, when a referencing row points at a legacy row that has no
    split row (accepted quarantine); once that row is fixed, contract goes through."""
    conn.execute("UPDATE core_project SET course_name = NULL WHERE id = 7 AND project_type = 'school'")
    conn.execute("UPDATE core_project SET goal_description = NULL WHERE id = 7 AND project_type = 'self_study'")
    conn.execute("INSERT INTO core_importantdate (project_id, title, date) VALUES (7, 'exam', current_date)")
    _advance(seeded, projects_spec, "write_new")
    r = run_cli("--dsn", database_url, "--yes", "contract", "--quiet-period", "0")
    assert r.exit_code == 1
    assert "core_importantdate.project_id references core_project rows" in r.stderr
    assert "keys 7" in r.stderr
    assert _state(seeded, projects_spec) == "write_new"
    conn.execute("UPDATE core_project SET course_name = 'c', goal_description = 'g' WHERE id = 7")
    r = run_cli("--dsn", database_url, "--yes", "contract", "--quiet-period", "0")
    assert r.exit_code == 0, r.stderr
    assert _state(seeded, projects_spec) == "contracted"


def test_multi_statement_split_transaction_reaches_legacy(seeded: Database, projects_spec: Spec, conn: Any) -> None:
    """A transaction that inserts the base row, then the child, then meta, leaves one complete legacy row."""
    _advance(seeded, projects_spec, "write_new")
    with conn.transaction():
        pid = conn.execute(
            "INSERT INTO projects (name, project_type, owner_id, is_draft, created_at, updated_at) "
            "VALUES ('multi', 'school', 1, true, now(), now()) RETURNING id"
        ).fetchone()[0]
        conn.execute("INSERT INTO school_projects VALUES (%s, 'c', 'c', 't')", [pid])
        conn.execute("INSERT INTO project_meta (project_id, key, value) VALUES (%s, 'syllabus', '[1, 2]')", [pid])
    row = conn.execute(
        "SELECT name, course_name, teacher_name, syllabus FROM core_project WHERE id = %s", [pid]
    ).fetchone()
    assert row == ("multi", "c", "t", [1, 2])
    conn.execute("UPDATE project_meta SET value = '[3]' WHERE project_id = %s", [pid])
    conn.execute("DELETE FROM school_projects WHERE project_id = %s", [pid])
    row = conn.execute("SELECT course_name, syllabus FROM core_project WHERE id = %s", [pid]).fetchone()
    assert row == (None, [3])


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes += _plan_nodes(child)
    return nodes


def test_reverse_backfill_chunks_probe_indexes(db: Database, projects_spec: Spec, conn: Any) -> None:
    """The reverse backfill's chunk statements, mid-table, join the split tables by index probes only (no merge
    or hash join, no materialized or sequential scan of a split or the legacy table, no parallel worker), so a
    chunk costs the same wherever it sits."""
    with db.connect() as c:
        seed(c, 20_000, dirty_ratio=0.0, random_seed=5)
    # write_new: the legacy and split tables as the rollback from contracted leaves them, not analyzed.
    _advance(db, projects_spec, "write_new")
    split_tables = set(projects_spec.split_tables())
    # 900 rows: from about there the planner gave the candidates statement a parallel scan of the legacy table.
    params = {"lo": "10000", "hi": "10900", "limit": 900}
    statements = [
        *(
            (f"insert pass {k}", s)
            for k, s in zip(("bound", "insert"), reverse.insert_pass_statements(projects_spec)[False], strict=True)
        ),
        *(
            (f"refresh pass {k}", s)
            for k, s in zip(("bound", "candidates"), reverse.refresh_pass_statements(projects_spec)[False], strict=True)
        ),
    ]
    with conn.transaction():
        # A server that parallelizes eagerly (as one with a larger legacy table would at these sizes).
        set_local(conn, parallel_setup_cost=0, parallel_tuple_cost=0, min_parallel_table_scan_size=0)
        reverse.chunk_settings(conn)
        for what, stmt in statements:
            plan = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(stmt), params).fetchone()[0]
            nodes = _plan_nodes(plan[0]["Plan"])
            avoided = ("Merge Join", "Hash Join", "Materialize", "Gather", "Gather Merge")
            joins = [n["Node Type"] for n in nodes if n["Node Type"] in avoided]
            scans = [n["Relation Name"] for n in nodes if n["Node Type"] in ("Seq Scan", "Parallel Seq Scan")]
            assert joins == [], f"{what}: {joins}"
            assert not (split_tables | {projects_spec.source.table}) & set(scans), f"{what} scans {scans} whole"


def _legacy_updates_of_one_write(db: Database) -> int:
    """Update one legacy row in a transaction; how many row updates the legacy table saw in it (2: bounced back)."""
    with db.connect() as c:
        c.execute("UPDATE public.core_project SET name = 'once' WHERE id = 42")
        row = c.execute(
            "SELECT n_tup_upd FROM pg_catalog.pg_stat_xact_user_tables WHERE relid = 'public.core_project'::regclass"
        ).fetchone()
        c.rollback()
    assert row is not None
    return int(row[0])


def test_the_forward_sync_marks_its_writes_only_while_reverse_triggers_exist(
    seeded: Database, projects_spec: Spec
) -> None:
    """Before switch-writes the forward function does not mark the transaction's origin (a cost with nothing to
    tell apart); switch-writes makes it mark first, so a legacy write in write_new is not copied back to legacy by
    the reverse sync; the rollback from contracted restores the marking version."""

    def marks() -> bool:
        with seeded.connect() as c:
            src = c.execute("SELECT prosrc FROM pg_catalog.pg_proc WHERE proname = 'core_project_split_forward'")
            return "set_config('migrator.origin', 'legacy'" in src.fetchone()[0]  # type: ignore[index]

    _advance(seeded, projects_spec, "read_new")
    assert not marks()
    assert _legacy_updates_of_one_write(seeded) == 1
    _advance(seeded, projects_spec, "write_new")
    assert marks()
    assert _legacy_updates_of_one_write(seeded) == 1
    Contract(contract.Options(quiet_period=0)).apply(Context(projects_spec, seeded))
    operations.rollback(Context(projects_spec, seeded))
    assert marks()
    assert _legacy_updates_of_one_write(seeded) == 1

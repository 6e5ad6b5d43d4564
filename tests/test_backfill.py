"""backfill: ids kept, quarantine, resume, pause, parallel workers — and the race rules, each with a test that
also runs the naive variant and shows it breaking."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from migrator import state
from migrator.copy import forward, forward_sql
from migrator.db import Database
from migrator.engine.context import Context
from migrator.phases import backfill
from migrator.phases.backfill import Backfill
from migrator.phases.expand import Expand
from migrator.seed import seed
from migrator.spec import Spec
from tests.helpers import RandomWriters, count, diff, quarantined

pytestmark = pytest.mark.db


@pytest.fixture
def expanded(db: Database, projects_spec: Spec) -> Database:
    """2,000 seeded legacy rows (5% dirty), expanded to dual_write."""
    with db.connect() as c:
        seed(c, 2000, dirty_ratio=0.05, random_seed=3)
    Expand().apply(Context(projects_spec, db))
    return db


def _backfill(db: Database, spec: Spec, **opts: Any) -> None:
    """Run the backfill phase to the end with these options."""
    Backfill(backfill.Options(**opts)).apply(Context(spec, db))


def _unsynced(conn: psycopg.Connection[Any], spec: Spec) -> int:
    """Legacy rows neither in the base table nor in open quarantine."""
    row = conn.execute(
        "SELECT count(*) FROM core_project l WHERE NOT EXISTS (SELECT 1 FROM projects p WHERE p.id = l.id) "
        "AND NOT EXISTS (SELECT 1 FROM migrator.quarantine q WHERE q.key = l.id::text AND q.resolved_at IS NULL)"
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_backfill_copies_every_row_keeping_ids(expanded: Database, projects_spec: Spec, conn: Any) -> None:
    """Every legacy row ends up in the split tables under its own id, or in quarantine; state backfilled."""
    _backfill(expanded, projects_spec)
    assert state.read(conn, projects_spec).state == "backfilled"
    assert diff(conn, projects_spec) == []
    q = quarantined(conn, projects_spec)
    assert count(conn, "projects") + len(q) == count(conn, "core_project")
    assert set(q.values()) == {"23502"}
    msg = conn.execute("SELECT message FROM migrator.quarantine LIMIT 1").fetchone()[0]
    assert msg.startswith("null value in column")
    assert _unsynced(conn, projects_spec) == 0


def test_backfill_uuid_spec_and_defaults(db: Database, payments_spec: Spec, conn: Any) -> None:
    """The payments spec (uuid key, other schemas, a default for a missing value) backfills correctly."""
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
               CASE WHEN i % 2 = 0 THEN jsonb_build_object('ok', true) END, NULL, i % 4
          FROM generate_series(1, 1500) i""")
    Expand().apply(Context(payments_spec, db))
    _backfill(db, payments_spec, workers=2, batch_size=100)
    assert diff(conn, payments_spec) == []
    # card_brand missing -> filled with the spec's default, not quarantined
    assert conn.execute("SELECT count(*) FROM billing_v2.card_payments WHERE card_brand = 'unknown'").fetchone()[0] > 0
    assert set(quarantined(conn, payments_spec).values()) == {"23502"}  # the transfers without an iban


def test_parallel_workers_share_ranges(expanded: Database, projects_spec: Spec, conn: Any) -> None:
    """--workers 3 splits the keys into ranges, every range is done once, and the result is complete."""
    _backfill(expanded, projects_spec, workers=3, batch_size=50)
    ranges = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE status = 'done'), count(DISTINCT worker), "
        "sum(rows_done) FROM migrator.backfill_ranges"
    ).fetchone()
    assert ranges[0] == ranges[1] == 12
    assert ranges[2] >= 2
    assert ranges[3] == 2000
    assert diff(conn, projects_spec) == []


def test_crashed_workers_range_is_reclaimed(expanded: Database, projects_spec: Spec, conn: Any) -> None:
    """A range left 'running' by a worker whose connection is gone is taken over and finished."""
    with expanded.connect(autocommit=True) as c:
        forward.ensure_ranges(c, projects_spec, 2)
    conn.execute(
        "UPDATE migrator.backfill_ranges SET status = 'running', worker = 'dead:1:0', worker_pid = 0, "
        "heartbeat = now(), cursor_key = NULL WHERE range_no = 0"
    )
    _backfill(expanded, projects_spec, workers=2)
    assert conn.execute("SELECT count(*) FROM migrator.backfill_ranges WHERE status <> 'done'").fetchone()[0] == 0
    assert diff(conn, projects_spec) == []
    assert _unsynced(conn, projects_spec) == 0


def test_resume_from_checkpoint_copies_the_rest(expanded: Database, projects_spec: Spec, conn: Any) -> None:
    """A backfill stopped part-way resumes from its committed cursor and ends complete."""
    with expanded.connect(autocommit=True) as c:
        forward.ensure_ranges(c, projects_spec, 1)
    shared = forward.Shared(
        on_chunk=lambda f: shared.stop.set() if f["rows_total"] >= 600 else None, on_step=lambda m: None
    )
    forward.run_workers(expanded, projects_spec, backfill.Options(batch_size=200), shared)
    cursor, done = conn.execute("SELECT cursor_key, rows_done FROM migrator.backfill_ranges").fetchone()
    assert done == 600
    assert int(cursor) > 0
    _backfill(expanded, projects_spec, batch_size=200)
    assert conn.execute("SELECT rows_done FROM migrator.backfill_ranges").fetchone()[0] == 2000
    assert diff(conn, projects_spec) == []


def test_pause_stops_workers_within_a_chunk(
    expanded: Database, projects_spec: Spec, conn: Any, run_cli: Any, database_url: str
) -> None:
    """`migrator pause` makes the workers stop after their current chunk; `resume` lets them finish."""
    assert run_cli("--dsn", database_url, "pause").exit_code == 0
    steps: list[str] = []
    reporter = type("R", (), {"step": lambda self, m: steps.append(m), "progress": lambda self, *a, **k: None})()
    ctx = Context(projects_spec, expanded, reporter=reporter)
    t = threading.Thread(target=Backfill(backfill.Options(batch_size=100)).apply, args=(ctx,))
    t.start()
    time.sleep(1.5)
    done_while_paused = conn.execute("SELECT sum(rows_done) FROM migrator.backfill_ranges").fetchone()[0]
    assert done_while_paused == 100  # one chunk, then it waits
    assert any("paused" in s for s in steps)
    assert run_cli("--dsn", database_url, "resume").exit_code == 0
    t.join(60)
    assert not t.is_alive()
    assert state.read(conn, projects_spec).state == "backfilled"


def test_throttle_query_holds_the_backfill(expanded: Database, projects_spec: Spec, conn: Any) -> None:
    """While the throttle query returns > 0 no chunk runs; when it returns 0 the backfill finishes."""
    conn.execute("CREATE TABLE throttle (v int)")
    conn.execute("INSERT INTO throttle VALUES (1)")
    phase = Backfill(backfill.Options(throttle_query="SELECT v FROM public.throttle"))
    t = threading.Thread(target=phase.apply, args=(Context(projects_spec, expanded),))
    t.start()
    time.sleep(1.2)
    assert conn.execute("SELECT coalesce(sum(rows_done), 0) FROM migrator.backfill_ranges").fetchone()[0] == 0
    conn.execute("UPDATE throttle SET v = 0")
    t.join(60)
    assert state.read(conn, projects_spec).state == "backfilled"


def test_backfill_rollback_and_rerun(
    expanded: Database, projects_spec: Spec, run_cli: Any, database_url: str, conn: Any
) -> None:
    """backfilled -> rollback -> dual_write (rows kept, still synced) -> backfill again -> backfilled."""
    assert run_cli("--dsn", database_url, "--json", "backfill").exit_code == 0
    r = run_cli("--dsn", database_url, "rollback")
    assert r.exit_code == 0, r.stderr
    assert state.read(conn, projects_spec).state == "dual_write"
    conn.execute("UPDATE core_project SET name = 'while rolled back' WHERE id = 10")
    assert run_cli("--dsn", database_url, "backfill").exit_code == 0
    assert diff(conn, projects_spec) == []


# -- the race rules ---------------------------------------------------------------------------------------------

K0, K1 = 5, 6  # consecutive clean-or-dirty ids in the first chunk; the blocker holds K0's base row


def _make_clean(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "UPDATE core_project SET project_type = 'school', course_name = 'c', course_code = 'c', "
        "teacher_name = 't' WHERE id IN (%s, %s)",
        [K0, K1],
    )
    conn.execute("TRUNCATE projects, school_projects, self_study_projects, project_meta")


def _waiting_on_lock(conn: psycopg.Connection[Any], app: str = "migrator") -> bool:
    return bool(
        conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'", [app]
        ).fetchone()[0]
    )  # type: ignore[index]


def _race(
    db: Database,
    spec: Spec,
    conn: psycopg.Connection[Any],
    database_url: str,
    app_write: Callable[[psycopg.Connection[Any]], None],
) -> bool:
    """Run one chunk that has read K0 and K1 and is held at K0's insert; meanwhile run app_write in another
    session. Returns whether app_write finished while the chunk was held (i.e. the chunk did not block it)."""
    _make_clean(conn)
    blocker = psycopg.connect(database_url)
    blocker.execute(
        "INSERT INTO projects SELECT id, name, project_type, owner_id, start_date, end_date, is_draft, "
        "created_at, updated_at FROM core_project WHERE id = %s",
        [K0],
    )
    with db.connect(autocommit=True) as c:
        forward.ensure_ranges(c, spec, 1)
    shared = forward.Shared(on_chunk=lambda f: None, on_step=lambda m: None)
    opts = backfill.Options(batch_size=100_000, lock_timeout=30)
    worker = threading.Thread(target=forward.run_workers, args=(db, spec, opts, shared))
    worker.start()
    deadline = time.monotonic() + 20
    while not _waiting_on_lock(conn) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _waiting_on_lock(conn), "the chunk never reached the blocked insert"
    finished = threading.Event()

    def app() -> None:
        with psycopg.connect(database_url, autocommit=True, application_name="app") as a:
            app_write(a)
        finished.set()

    t = threading.Thread(target=app)
    t.start()
    finished.wait(1.0)
    while_held = finished.is_set()
    blocker.rollback()
    blocker.close()
    worker.join(60)
    t.join(60)
    assert not shared.errors, shared.errors
    return while_held


def _naive(monkeypatch: pytest.MonkeyPatch, *edits: tuple[str, str], careful: bool = False) -> set[str]:
    """Patch the chunk's SQL (every form; with careful=True every form is the careful one) with the edits; returns
    the set of the edits' old texts it found."""
    real = forward_sql.chunk_sql
    found: set[str] = set()

    def patched(spec: Spec, has_cursor: bool, careful_form: bool = False) -> Any:
        text = real(spec, has_cursor, careful or careful_form).as_string(None)
        for old, new in edits:
            if old in text:
                found.add(old)
                text = text.replace(old, new)
        return psycopg.sql.SQL(text)  # type: ignore[arg-type]

    monkeypatch.setattr(forward_sql, "chunk_sql", patched)
    return found


@pytest.mark.parametrize("naive", [False, True], ids=["for-key-share", "naive-no-lock"])
def test_race_delete_during_chunk_leaves_no_zombie(
    expanded: Database, projects_spec: Spec, conn: Any, database_url: str, naive: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule 2: a DELETE committed between the chunk's read and its insert waits for the chunk (FOR KEY SHARE)
    and its trigger removes the copy; without the lock the copy survives as a zombie."""
    found = _naive(monkeypatch, ("FOR KEY SHARE\n", "\n")) if naive else {"not patched"}
    did_not_wait = _race(
        expanded, projects_spec, conn, database_url, lambda a: a.execute("DELETE FROM core_project WHERE id = %s", [K1])
    )
    zombie = conn.execute("SELECT count(*) FROM projects WHERE id = %s", [K1]).fetchone()[0]
    assert found
    assert did_not_wait == naive
    assert zombie == (1 if naive else 0)


def _orphans(conn: psycopg.Connection[Any]) -> int:
    """Base rows whose owner is not in auth_user."""
    return int(
        conn.execute(
            "SELECT count(*) FROM projects p WHERE NOT EXISTS (SELECT 1 FROM auth_user u WHERE u.id = p.owner_id)"
        ).fetchone()[0]  # type: ignore[index]
    )


@pytest.mark.parametrize("triggers_off", [True, False], ids=["fk-triggers-off", "no-privilege"])
def test_rows_whose_fk_target_is_missing_are_quarantined(
    expanded: Database, projects_spec: Spec, conn: Any, triggers_off: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A legacy row whose owner does not exist (legacy without the FK) is quarantined as 23503, never copied —
    whether the chunks may turn the FK triggers off or not."""
    if not triggers_off:
        monkeypatch.setattr(forward, "may_skip_fk_triggers", lambda conn: False)
    conn.execute("ALTER TABLE core_project DROP CONSTRAINT core_project_owner_id_fkey")
    conn.execute("UPDATE core_project SET owner_id = -1 WHERE id = %s", [K1])
    _backfill(expanded, projects_spec, batch_size=500)
    assert quarantined(conn, projects_spec).get(str(K1)) == "23503"
    assert _orphans(conn) == 0
    assert _unsynced(conn, projects_spec) == 0


def test_verify_finds_a_base_row_pointing_at_a_missing_row(expanded: Database, projects_spec: Spec, conn: Any) -> None:
    """backfill's verify checks every foreign key as VALIDATE would: an orphan slipped in with triggers off fails."""
    _backfill(expanded, projects_spec)
    assert Backfill().verify(Context(projects_spec, expanded)).ok
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("UPDATE projects SET owner_id = -5 WHERE id = (SELECT min(id) FROM projects)")
    report = Backfill().verify(Context(projects_spec, expanded))
    assert not report.ok
    assert any("missing auth_user" in f for f in report.failures)


@pytest.mark.parametrize("naive", [False, True], ids=["fk-target-locked", "naive-unlocked"])
def test_race_fk_target_deleted_during_chunk_leaves_no_orphan(
    expanded: Database, projects_spec: Spec, conn: Any, database_url: str, naive: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunk checks foreign keys itself: it locks the referenced rows FOR KEY SHARE, so a user deleted while the
    chunk runs waits and then cascades to the copy; without that lock the copy points at a deleted user."""
    found = _naive(monkeypatch, ("\n       FOR KEY SHARE OF r", "")) if naive else {"not patched"}
    conn.execute("ALTER TABLE core_project DROP CONSTRAINT core_project_owner_id_fkey")
    user = conn.execute(
        "INSERT INTO auth_user (username, email) VALUES ('racer', 'racer@example.com') RETURNING id"
    ).fetchone()[0]
    conn.execute("UPDATE core_project SET owner_id = %s WHERE id = %s", [user, K1])
    did_not_wait = _race(
        expanded, projects_spec, conn, database_url, lambda a: a.execute("DELETE FROM auth_user WHERE id = %s", [user])
    )
    assert found
    assert did_not_wait == naive
    assert _orphans(conn) == (1 if naive else 0)


@pytest.mark.parametrize("naive", [False, True], ids=["do-nothing", "naive-overwrite"])
def test_race_update_during_chunk_is_not_lost(
    expanded: Database, projects_spec: Spec, conn: Any, database_url: str, naive: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule 1: an UPDATE committed while a chunk holds a stale copy wins; a backfill that overwrote would lose
    it."""
    found: set[str] = set()
    if naive:
        # The careful form (ON CONFLICT everywhere), its base insert overwriting instead of doing nothing.
        old = "\n    ON CONFLICT DO NOTHING\n    RETURNING"
        new = '\n    ON CONFLICT ("id") DO UPDATE SET "name" = EXCLUDED."name"\n    RETURNING'
        found = _naive(monkeypatch, (old, new), careful=True)
    _race(
        expanded,
        projects_spec,
        conn,
        database_url,
        lambda a: a.execute("UPDATE core_project SET name = 'app wins' WHERE id = %s", [K1]),
    )
    name = conn.execute("SELECT name FROM projects WHERE id = %s", [K1]).fetchone()[0]
    assert len(found) == (1 if naive else 0)
    assert (name == "app wins") != naive


@pytest.mark.parametrize("naive", [False, True], ids=["children-follow-base", "naive-children"])
def test_race_type_change_during_chunk_leaves_one_child(
    expanded: Database, projects_spec: Spec, conn: Any, database_url: str, naive: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rules 1+3: a type change committed while a chunk holds the old type leaves exactly the new child; a
    backfill that wrote children regardless of its base insert would add the stale one."""
    found = {"not patched"}
    if naive:
        found = _naive(
            monkeypatch,
            (
                'JOIN base_ins AS b ON b."id" = s."id"\n     WHERE s."project_type" = \'school\'',
                'JOIN src AS b ON b."id" = s."id" AND NOT b.invalid\n     WHERE s."project_type" = \'school\'',
            ),
            careful=True,
        )
    _race(
        expanded,
        projects_spec,
        conn,
        database_url,
        lambda a: a.execute(
            "UPDATE core_project SET project_type = 'self_study', goal_description = 'g', "
            "study_frequency = 'daily' WHERE id = %s",
            [K1],
        ),
    )
    children = conn.execute(
        "SELECT (SELECT count(*) FROM school_projects WHERE project_id = %s) + "
        "(SELECT count(*) FROM self_study_projects WHERE project_id = %s)",
        [K1, K1],
    ).fetchone()
    assert found
    assert children[0] == (2 if naive else 1)


# -- chaos ------------------------------------------------------------------------------------------------------


def test_kill_9_at_random_points_then_resume(
    db: Database, projects_spec: Spec, conn: Any, database_url: str, migrator_exe: str
) -> None:
    """The backfill process killed with SIGKILL at random moments, then run again, ends complete and equal."""
    with db.connect() as c:
        seed(c, 20_000, dirty_ratio=0.05, random_seed=11)
    Expand().apply(Context(projects_spec, db))
    rng = random.Random(5)
    kills = 0
    for _ in range(5):
        proc = subprocess.Popen(
            [
                migrator_exe,
                "--dsn",
                database_url,
                "--json",
                "backfill",
                "--batch-size",
                "100",
                "--max-rows-per-second",
                "8000",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.6, 1.6))  # past start-up, inside the copy (20k rows take ~2.5 s here)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    if state.read(conn, projects_spec).state != "backfilled":
        final = subprocess.run(
            [migrator_exe, "--dsn", database_url, "backfill"], capture_output=True, text=True, timeout=300, check=False
        )
        assert final.returncode == 0, final.stderr
    assert kills >= 1
    assert state.read(conn, projects_spec).state == "backfilled"
    assert diff(conn, projects_spec) == []
    assert _unsynced(conn, projects_spec) == 0
    assert conn.execute("SELECT sum(rows_done) FROM migrator.backfill_ranges").fetchone()[0] == 20_000


def test_stress_writers_during_parallel_backfill(
    expanded: Database, projects_spec: Spec, conn: Any, database_url: str
) -> None:
    """Random inserts/updates/deletes/type changes by two writers while `backfill --workers 2` runs: afterwards
    every legacy row equals its split rows or is quarantined, and no split row lacks a legacy row."""
    with RandomWriters(database_url, max_id=2100) as writers:
        time.sleep(0.3)
        _backfill(expanded, projects_spec, workers=2, batch_size=40, max_rows_per_second=1500)
        time.sleep(0.3)
    failures, ops = writers.failures, [writers.ops]
    assert not failures, failures
    assert ops[0] > 50
    assert diff(conn, projects_spec) == []
    assert _unsynced(conn, projects_spec) == 0
    orphans = conn.execute(
        "SELECT count(*) FROM projects p WHERE NOT EXISTS (SELECT 1 FROM core_project l WHERE l.id = p.id)"
    ).fetchone()[0]
    assert orphans == 0
    two_children = conn.execute(
        "SELECT count(*) FROM school_projects s JOIN self_study_projects t USING (project_id)"
    ).fetchone()[0]
    assert two_children == 0


def test_application_sessions_replan_as_the_backfill_fills_the_split_tables(
    db: Database, projects_spec: Spec, conn: Any, database_url: str
) -> None:
    """A long-lived application session whose trigger plans were cached while the split tables were analyzed
    nearly empty scans no split table per write once the backfill is under way (the copy analyzes as it grows)."""
    with db.connect() as c:
        seed(c, 20000, dirty_ratio=0.0, random_seed=5)
    Expand().apply(Context(projects_spec, db))
    split = "('projects', 'school_projects', 'self_study_projects', 'project_meta')"
    with psycopg.connect(database_url, autocommit=True) as app:
        ids = [r[0] for r in app.execute("SELECT id FROM core_project ORDER BY id LIMIT 10")]
        update = "UPDATE core_project SET name = name || '.' WHERE id = %s"
        for i in ids:
            app.execute(update, [i])  # the triggers write these rows' split rows
        conn.execute(f"ANALYZE {split[1:-1].replace(chr(39), '')}")  # as autovacuum does after the first writes
        for _ in range(3):
            for i in ids:
                app.execute(update, [i])  # past the plan cache's five custom plans: generic plans, cached

        shared = forward.Shared(on_chunk=lambda f: None, on_step=lambda m: None)
        shared.on_chunk = lambda f: shared.stop.set() if f["rows_total"] >= 15000 else None
        with db.connect(autocommit=True) as c:
            forward.ensure_ranges(c, projects_spec, 1)
        forward.run_workers(db, projects_spec, backfill.Options(full_speed=True, batch_size=1000), shared)
        assert 15000 <= count(conn, "projects") < 20000  # stopped mid-copy: before the deferred index builds
        assert shared.stats is not None
        assert shared.stats.analyzed >= 1

        some = [r[0] for r in app.execute("SELECT id FROM core_project ORDER BY id DESC LIMIT 30")]
        scans = (
            "SELECT sum(seq_tup_read), sum(idx_scan), string_agg(relname || ':' || seq_tup_read, ' ')"
            f"  FROM pg_stat_xact_user_tables WHERE relname IN {split}"
        )
        with app.transaction():
            # The session's counters not flushed yet are in the view too: count the difference.
            before = app.execute(scans).fetchone()
            for i in ids + some:
                app.execute(update, [i])
            after = app.execute(scans).fetchone()
    assert before is not None
    assert after is not None
    assert after[1] > before[1]
    seq = after[0] - before[0]
    assert seq == 0, f"{seq} split rows scanned sequentially by 40 application writes (was {before[2]}, now {after[2]})"

"""`migrator cleanup-drafts` (migrator.cleanup): in every state under a live writer it deletes exactly the old drafts
on the side the application writes, and nothing else; dry run, EXPLAIN, one cleaner at a time, resume, JSON."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import psycopg
import pytest

from migrator import cleanup, guards, lifecycle, state
from migrator.db import Database
from migrator.engine.context import Context, NullReporter
from migrator.engine.session import set_local
from migrator.errors import BadInputError, LockHeld
from migrator.phases.backfill import Backfill
from migrator.phases.expand import Expand
from migrator.seed import seed
from migrator.spec import Spec
from tests.test_json_contract import check
from tests.test_lifecycle import PHASES

pytestmark = pytest.mark.db

DAY = 86400.0
OLD_DRAFTS = "SELECT id FROM public.{} WHERE is_draft AND created_at < now() - interval '24 hours'"


class DraftWriter:
    """The application: follows the flags and writes fresh drafts, old non-drafts and updates of its own rows on
    the side the state says, the whole time; never an old draft, so the drafts to delete are known in advance."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ids: set[int] = set()
        self.failures: list[str] = []
        self.transactions = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DraftWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True, application_name="app") as c:
            i = 0
            while not self.stop.is_set():
                try:
                    flag = c.execute("SELECT migrator.flag_state('core_project_split')").fetchone()
                    split = lifecycle.writes_split(str(flag[0]) if flag and flag[0] else lifecycle.START)
                except (psycopg.errors.UndefinedFunction, psycopg.errors.InvalidSchemaName):
                    split = False
                try:
                    with c.transaction():
                        self._one(c, split, i)
                    self.transactions += 1
                except psycopg.Error as exc:
                    self.failures.append(str(exc).strip().splitlines()[0])
                i += 1
                time.sleep(0.003)

    def _one(self, c: psycopg.Connection[Any], split: bool, i: int) -> None:
        if i % 3 == 2 and self.ids:
            table = "projects" if split else "core_project"
            c.execute(f"UPDATE public.{table} SET name = 'edited' WHERE id = %s", [max(self.ids)])
            return
        draft, age = (True, "0 seconds") if i % 3 == 0 else (False, "48 hours")
        if split:
            row = c.execute(
                "INSERT INTO public.projects (name, project_type, owner_id, is_draft, created_at, updated_at) "
                "VALUES ('w', 'self_study', 1, %s, now() - %s::interval, now()) RETURNING id",
                [draft, age],
            ).fetchone()
            c.execute(
                "INSERT INTO public.self_study_projects (project_id, goal_description, study_frequency) "
                "VALUES (%s, 'g', 'weekly')",
                [row[0]],  # type: ignore[index]
            )
        else:
            row = c.execute(
                "INSERT INTO public.core_project (name, project_type, owner_id, goal_description, study_frequency, "
                "is_draft, created_at) VALUES ('w', 'self_study', 1, 'g', 'weekly', %s, now() - %s::interval) "
                "RETURNING id",
                [draft, age],
            ).fetchone()
        self.ids.add(int(row[0]))  # type: ignore[index]


def _plant_old_drafts(c: psycopg.Connection[Any], split: bool, n: int = 25) -> None:
    """Old school drafts with a syllabus: on the split side with their child and meta rows."""
    for _ in range(n):
        if split:
            pid = c.execute(
                "INSERT INTO public.projects (name, project_type, owner_id, is_draft, created_at, updated_at) "
                "VALUES ('old', 'school', 1, true, now() - interval '30 days', now()) RETURNING id"
            ).fetchone()[0]  # type: ignore[index]
            c.execute(
                "INSERT INTO public.school_projects (project_id, course_name, course_code, teacher_name) "
                "VALUES (%s, 'c', 'c', 't')",
                [pid],
            )
            c.execute(
                "INSERT INTO public.project_meta (project_id, key, value) VALUES (%s, 'syllabus', '{\"w\": 1}')", [pid]
            )
        else:
            c.execute(
                "INSERT INTO public.core_project (name, project_type, owner_id, course_name, course_code, "
                "teacher_name, syllabus, is_draft, created_at) VALUES ('old', 'school', 1, 'c', 'c', 't', "
                "'{\"w\": 1}', true, now() - interval '30 days')"
            )


def _ids(c: psycopg.Connection[Any], query: str) -> set[int]:
    return {int(r[0]) for r in c.execute(query).fetchall()}


def _split_leftovers(c: psycopg.Connection[Any], ids: set[int]) -> int:
    """Rows of any split table that still belong to one of `ids`."""
    row = c.execute(
        "SELECT (SELECT count(*) FROM public.projects WHERE id = ANY(%(k)s)) "
        "+ (SELECT count(*) FROM public.school_projects WHERE project_id = ANY(%(k)s)) "
        "+ (SELECT count(*) FROM public.self_study_projects WHERE project_id = ANY(%(k)s)) "
        "+ (SELECT count(*) FROM public.project_meta WHERE project_id = ANY(%(k)s))",
        {"k": list(ids)},
    ).fetchone()
    return int(row[0])  # type: ignore[index]


@pytest.fixture
def seeded(db: Database) -> Database:
    """1,500 clean legacy rows, all created long ago (about 30% of them drafts)."""
    with db.connect() as c:
        seed(c, 1500, dirty_ratio=0.0, random_seed=3)
    return db


def _state(db: Database, spec: Spec) -> str:
    with db.connect(autocommit=True) as c:
        return state.read(c, spec).state


def test_every_state_under_a_live_writer(seeded: Database, projects_spec: Spec, database_url: str, conn: Any) -> None:
    """In legacy … contracted (compat view), with a writer on the whole time: exactly the old drafts of the write
    side are deleted (their split rows, children and meta with them), fresh drafts and non-drafts stay, legacy
    equals split where both are live, and the writer never fails."""
    ctx = Context(projects_spec, seeded)
    walked = []
    for target in lifecycle.between(lifecycle.START, "contracted"):
        while (current := _state(seeded, projects_spec)) != target:
            PHASES[str(lifecycle.next_command(current))].apply(ctx)
        split = lifecycle.writes_split(target)
        table = "projects" if split else "core_project"
        _plant_old_drafts(conn, split)
        expected = _ids(conn, OLD_DRAFTS.format(table))
        before = _ids(conn, f"SELECT id FROM public.{table}")
        with DraftWriter(database_url) as writer:
            time.sleep(0.15)
            # At full speed: the batches meet the writer's drafts mid-run, not a few percent of the time (the pace).
            result = cleanup.run(ctx, cleanup.Options(older_than=DAY, batch_size=40, full_speed=True))
            time.sleep(0.15)
        after = _ids(conn, f"SELECT id FROM public.{table}")
        assert writer.failures == [], (target, writer.failures[:3])
        assert writer.transactions > 10, target
        assert (result.side, result.state) == ("split" if split else "legacy", target)
        assert result.deleted == len(expected), target
        assert before - after == expected, target
        assert writer.ids <= after, target
        assert _ids(conn, OLD_DRAFTS.format(table)) == set(), target
        if target != lifecycle.START:
            assert _split_leftovers(conn, expected) == 0, target
        if lifecycle.stage(target).split_complete:
            assert guards.diff(conn, projects_spec) == [], target
        if split:
            legacy = "core_project_archived" if lifecycle.past_legacy(target) else "core_project"
            assert _ids(conn, f"SELECT id FROM public.{legacy}") & expected == set(), target
        walked.append(target)
    assert walked == list(lifecycle.between(lifecycle.START, "contracted"))
    runs = conn.execute(
        "SELECT from_state, to_state, (details->>'deleted')::int FROM migrator.transitions "
        "WHERE command = 'cleanup-drafts' ORDER BY id"
    ).fetchall()
    assert [r[0] for r in runs] == walked
    assert all(r[0] == r[1] and r[2] > 0 for r in runs)


def test_a_transition_during_a_run_moves_it_to_the_new_side(seeded: Database, projects_spec: Spec, conn: Any) -> None:
    """switch-writes while a cleaner runs in read_new: the next batches delete from the split tables, every old
    draft is gone on both sides and legacy equals split."""
    ctx = Context(projects_spec, seeded)
    for command in ("expand", "backfill", "validate", "switch-reads"):
        PHASES[command].apply(ctx)
    expected = _ids(conn, OLD_DRAFTS.format("core_project"))
    outcome: list[Any] = []

    class Slow(NullReporter):
        def progress(self, done: int, total: int | None, **fields: Any) -> None:
            time.sleep(0.01)

    def clean() -> None:
        slow = Context(projects_spec, seeded, reporter=Slow())
        outcome.append(cleanup.run(slow, cleanup.Options(older_than=DAY, batch_size=10, full_speed=True)))

    thread = threading.Thread(target=clean)
    thread.start()
    time.sleep(0.3)
    deleted_on_legacy = len(expected - _ids(conn, OLD_DRAFTS.format("core_project")))
    PHASES["switch-writes"].apply(ctx)
    assert thread.is_alive()
    thread.join(60)
    assert 0 < deleted_on_legacy < len(expected)
    result = outcome[0]
    assert (result.state, result.side) == ("write_new", "split")
    assert result.deleted == len(expected)
    assert _ids(conn, OLD_DRAFTS.format("core_project")) == set()
    assert _ids(conn, OLD_DRAFTS.format("projects")) == set()
    assert guards.diff(conn, projects_spec) == []


def test_dry_run_counts_and_deletes_nothing(seeded: Database, projects_spec: Spec, conn: Any) -> None:
    """--dry-run reports how many drafts it would delete, deletes none, and is in the audit log."""
    expected = _ids(conn, OLD_DRAFTS.format("core_project"))
    before = _ids(conn, "SELECT id FROM public.core_project")
    result = cleanup.run(Context(projects_spec, seeded), cleanup.Options(older_than=DAY, dry_run=True, batch_size=50))
    assert (result.would_delete, result.deleted) == (len(expected), 0)
    assert len(expected) > 300
    assert _ids(conn, "SELECT id FROM public.core_project") == before
    row = conn.execute("SELECT details FROM migrator.transitions WHERE command = 'cleanup-drafts'").fetchone()
    assert row[0]["dry_run"] is True
    assert row[0]["would_delete"] == len(expected)


def test_killed_run_resumes(seeded: Database, projects_spec: Spec, conn: Any) -> None:
    """A run killed after two batches has committed them; the next run deletes exactly the rest."""
    expected = _ids(conn, OLD_DRAFTS.format("core_project"))

    class Kill(NullReporter):
        def progress(self, done: int, total: int | None, **fields: Any) -> None:
            if fields.get("phase") == cleanup.COMMAND and done >= 20:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cleanup.run(Context(projects_spec, seeded, reporter=Kill()), cleanup.Options(older_than=DAY, batch_size=10))
    left = _ids(conn, OLD_DRAFTS.format("core_project"))
    assert 0 < len(expected) - len(left) < len(expected)
    result = cleanup.run(Context(projects_spec, seeded), cleanup.Options(older_than=DAY, batch_size=10))
    assert result.deleted == len(left)
    assert _ids(conn, OLD_DRAFTS.format("core_project")) == set()


def _plan(
    conn: psycopg.Connection[Any], target: cleanup.Target, first: bool, params: dict[str, Any], as_batch: bool = True
) -> str:
    """EXPLAIN of one batch; `as_batch`: under the settings the batch runs with."""
    with conn.transaction():
        if as_batch:
            set_local(conn, **cleanup.BATCH_SETTINGS)
        rows = conn.execute(b"EXPLAIN " + target.statement(first, False).as_bytes(conn), params).fetchall()
    return "\n".join(r[0] for r in rows)


def test_each_batch_is_an_index_range_scan(db: Database, projects_spec: Spec, conn: Any) -> None:
    """On 20,000 analyzed rows a batch on the base table reads a range of the partial index (created_at WHERE
    is_draft), at the start and in the middle of the old drafts, never the whole table; on the legacy table, which
    has no such index, the same batch would be a sequential scan, so there the run walks primary key ranges."""
    with db.connect() as c:
        seed(c, 20_000, dirty_ratio=0.0, random_seed=5)
    ctx = Context(projects_spec, db)
    Expand().apply(ctx)
    Backfill().apply(ctx)
    conn.execute("ANALYZE public.projects")
    conn.execute("ANALYZE public.core_project")
    cutoff = conn.execute("SELECT now() - interval '1 day'").fetchone()[0]
    drafts = conn.execute(
        "SELECT created_at, id FROM public.projects WHERE is_draft ORDER BY created_at, id"
    ).fetchall()
    assert len(drafts) > 5000
    opts = cleanup.Options(older_than=DAY)
    with db.connect(autocommit=True) as c:
        split = cleanup.resolve(c, projects_spec, "write_new", opts)
        legacy = cleanup.resolve(c, projects_spec, "legacy", opts)
        assert split.index == "projects_created_at_idx"
        assert legacy.index is None
        # The planner's own choice for a first batch, without the batch's settings.
        first = {"cutoff": cutoff, "n": 500, "c": None, "k": None}
        assert f"Index Scan using {split.index} on projects" in _plan(c, split, True, first, as_batch=False)
        for created, key in (drafts[0], drafts[len(drafts) // 2], drafts[-600]):
            params = {"cutoff": cutoff, "n": 500, "c": created, "k": key}
            for target in (split, legacy):
                for is_first in (True, False):
                    plan = _plan(c, target, is_first, params)
                    index = split.index if target is split else "core_project_pkey"
                    assert f"Index Scan using {index} on {target.name}" in plan, plan
                    assert "Seq Scan" not in plan, plan
                    assert "Bitmap" not in plan, plan
        naive = dataclasses.replace(legacy, index="(none: the partial-index statement on legacy)")
        assert "Seq Scan on core_project" in _plan(c, naive, True, first, as_batch=False)


def test_second_cleaner_is_refused(seeded: Database, projects_spec: Spec, database_url: str, run_cli: Any) -> None:
    """While a cleaner runs (held after its first batch), a second one is refused with exit 1 naming the first's
    backend, and deletes nothing; the first then finishes the job."""
    seeded_conn = psycopg.connect(database_url, autocommit=True)
    expected = _ids(seeded_conn, OLD_DRAFTS.format("core_project"))
    started, release = threading.Event(), threading.Event()
    outcome: list[Any] = []

    class Held(NullReporter):
        def progress(self, done: int, total: int | None, **fields: Any) -> None:
            started.set()
            release.wait(20)

    def first() -> None:
        ctx = Context(projects_spec, seeded, reporter=Held())
        outcome.append(cleanup.run(ctx, cleanup.Options(older_than=DAY, batch_size=50)))

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert started.wait(20)
        holder = seeded_conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()[0]  # type: ignore[index]
        with pytest.raises(LockHeld, match=f"another `cleanup-drafts` is running on this migration: pid {holder} "):
            cleanup.run(Context(projects_spec, seeded), cleanup.Options(older_than=DAY))
        result = check(
            run_cli("--dsn", database_url, "--json", "cleanup-drafts", "--older-than", "24h"), "cleanup-drafts", 1
        )
        assert result["error"]["code"] == "lock_held"
        assert f"pid {holder} (migrator" in result["error"]["message"]
        left = _ids(seeded_conn, OLD_DRAFTS.format("core_project"))
        assert len(expected) - len(left) <= 50
    finally:
        release.set()
        thread.join(30)
        seeded_conn.close()
    assert outcome[0].deleted == len(expected)


def test_cleanup_command_json(seeded: Database, database_url: str, run_cli: Any) -> None:
    """`--json cleanup-drafts --dry-run` ends with one result holding the count; a draft column that does not
    exist, or an age that is not one, exits 2 naming the fix."""
    result = check(
        run_cli("--dsn", database_url, "--json", "cleanup-drafts", "--older-than", "1d", "--dry-run", "--full-speed"),
        "cleanup-drafts",
        0,
    )
    details = result["details"]
    assert details["would_delete"] > 300
    assert details["deleted"] == 0
    assert result["changed"] is False
    assert (details["side"], details["index"]) == ("legacy", None)
    bad = check(
        run_cli("--dsn", database_url, "--json", "cleanup-drafts", "--older-than", "24h", "--draft-column", "nope"),
        "cleanup-drafts",
        2,
    )
    assert "--draft-column" in bad["error"]["hint"]
    bad = check(run_cli("--dsn", database_url, "--json", "cleanup-drafts", "--older-than", "soon"), "cleanup-drafts", 2)
    assert bad["error"]["code"] == "bad_input"
    human = run_cli("--dsn", database_url, "cleanup-drafts", "--older-than", "24h")
    assert human.exit_code == 0, human.stderr
    assert "CREATE INDEX CONCURRENTLY" in human.stderr
    assert "draft(s) deleted" in human.stderr + human.stdout
    with pytest.raises(BadInputError):
        cleanup.parse_age("24")
    assert cleanup.parse_age("90m") == 5400

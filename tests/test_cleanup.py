"""`migrator cleanup-drafts` (migrator.cleanup): in every state under a live writer it deletes exactly the old drafts
on the side the application writes, and nothing else; dry run, EXPLAIN, one cleaner at a time, resume, JSON."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from typing import Any

import psycopg
import pytest

from migrator import cleanup, guards, lifecycle, state
from migrator.db import Database, advisory_lock
from migrator.engine.context import Context, NullReporter
from migrator.errors import BadInputError, LockHeld
from migrator.phases import contract, switch_reads, validate
from migrator.phases.backfill import Backfill
from migrator.phases.base import Phase
from migrator.phases.contract import Contract
from migrator.phases.expand import Expand
from migrator.phases.switch_reads import SwitchReads
from migrator.phases.switch_writes import SwitchWrites
from migrator.phases.validate import Validate
from migrator.seed import seed
from migrator.spec import Spec
from tests.test_json_contract import check

pytestmark = pytest.mark.db

DAY = 86400.0
PHASES: dict[str, Phase[Any]] = {
    p.name: p
    for p in (
        Expand(),
        Backfill(),
        Validate(validate.Options(accept_quarantine=True)),
        SwitchReads(switch_reads.Options(percent=100)),
        SwitchWrites(),
        Contract(contract.Options(quiet_period=0, compat_view=True)),
    )
}
OLD_DRAFTS = (
    "SELECT id FROM public.{} WHERE is_draft AND created_at < now() - interval '24 hours'"  # noqa: S608 — fixed names
)


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
            c.execute(f"UPDATE public.{table} SET name = 'edited' WHERE id = %s", [max(self.ids)])  # noqa: S608
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
        before = _ids(conn, f"SELECT id FROM public.{table}")  # noqa: S608
        with DraftWriter(database_url) as writer:
            time.sleep(0.1)
            result = cleanup.run(ctx, cleanup.Options(older_than=DAY, batch_size=40))
            time.sleep(0.1)
        after = _ids(conn, f"SELECT id FROM public.{table}")  # noqa: S608
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
            assert _ids(conn, f"SELECT id FROM public.{legacy}") & expected == set(), target  # noqa: S608
        walked.append(target)
    assert walked == list(lifecycle.between(lifecycle.START, "contracted"))
    runs = conn.execute(
        "SELECT from_state, to_state, (details->>'deleted')::int FROM migrator.transitions "
        "WHERE command = 'cleanup-drafts' ORDER BY id"
    ).fetchall()
    assert [r[0] for r in runs] == walked
    assert all(r[0] == r[1] and r[2] > 0 for r in runs)


def test_dry_run_counts_and_deletes_nothing(seeded: Database, projects_spec: Spec, conn: Any) -> None:
    """--dry-run reports how many drafts it would delete, deletes none, and is in the audit log."""
    expected = _ids(conn, OLD_DRAFTS.format("core_project"))
    before = _ids(conn, "SELECT id FROM public.core_project")
    result = cleanup.run(Context(projects_spec, seeded), cleanup.Options(older_than=DAY, dry_run=True, batch_size=50))
    assert (result.would_delete, result.deleted) == (len(expected), 0)
    assert len(expected) > 300
    assert _ids(conn, "SELECT id FROM public.core_project") == before
    row = conn.execute("SELECT details FROM migrator.transitions WHERE command = 'cleanup-drafts'").fetchone()
    assert row[0]["dry_run"] is True and row[0]["would_delete"] == len(expected)


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


def _plan(conn: psycopg.Connection[Any], target: cleanup.Target, first: bool, cursor: tuple[Any, Any]) -> str:
    params = {"cutoff": cursor[0], "n": 500, "c": cursor[0], "k": cursor[1]}
    rows = conn.execute(b"EXPLAIN " + target.statement(first, False).as_bytes(conn), params).fetchall()
    return "\n".join(r[0] for r in rows)


def test_each_batch_is_an_index_range_scan(db: Database, projects_spec: Spec, conn: Any) -> None:
    """On 20,000 analyzed rows a batch on the base table reads the partial index (created_at WHERE is_draft), never
    the whole table; the same batch on the legacy table, which has no such index, would be a sequential scan —
    there the run walks the primary key instead."""
    with db.connect() as c:
        seed(c, 20_000, dirty_ratio=0.0, random_seed=5)
    ctx = Context(projects_spec, db)
    Expand().apply(ctx)
    Backfill().apply(ctx)
    conn.execute("ANALYZE public.projects")
    conn.execute("ANALYZE public.core_project")
    opts = cleanup.Options(older_than=DAY)
    cursor = conn.execute("SELECT now() - interval '1 day', 10").fetchone()
    with db.connect(autocommit=True) as c:
        split = cleanup.resolve(c, projects_spec, "write_new", opts)
        legacy = cleanup.resolve(c, projects_spec, "legacy", opts)
        assert split.index is not None and legacy.index is None
        for first in (True, False):
            plan = _plan(c, split, first, cursor)
            assert f"Index Scan using {split.index} on projects" in plan, plan
            assert "Seq Scan" not in plan, plan
            plan = _plan(c, legacy, first, cursor)
            assert "Index Scan using core_project_pkey on core_project" in plan, plan
            assert "Seq Scan" not in plan, plan
        naive = dataclasses.replace(legacy, index="(none: the partial-index statement on legacy)")
        assert "Seq Scan on core_project" in _plan(c, naive, True, cursor)


def test_second_cleaner_is_refused(seeded: Database, projects_spec: Spec, database_url: str, run_cli: Any) -> None:
    """While one cleaner holds the lock, a second run exits 1 naming the holder, and deletes nothing."""
    with psycopg.connect(database_url, autocommit=True, application_name="first-cleaner") as holder:
        pid = holder.info.backend_pid
        with advisory_lock(holder, *state.lock_parts(projects_spec), cleanup.COMMAND):
            with pytest.raises(LockHeld, match=f"pid {pid} \\(first-cleaner"):
                cleanup.run(Context(projects_spec, seeded), cleanup.Options(older_than=DAY))
            result = check(
                run_cli("--dsn", database_url, "--json", "cleanup-drafts", "--older-than", "24h"), "cleanup-drafts", 1
            )
            assert result["error"]["code"] == "lock_held"
            assert f"pid {pid}" in result["error"]["message"]
    with psycopg.connect(database_url) as c:
        assert _ids(c, OLD_DRAFTS.format("core_project"))


def test_cleanup_command_json(seeded: Database, database_url: str, run_cli: Any) -> None:
    """`--json cleanup-drafts --dry-run` ends with one result holding the count; a draft column that does not
    exist, or an age that is not one, exits 2 naming the fix."""
    result = check(
        run_cli("--dsn", database_url, "--json", "cleanup-drafts", "--older-than", "1d", "--dry-run", "--full-speed"),
        "cleanup-drafts",
        0,
    )
    details = result["details"]
    assert details["would_delete"] > 300 and details["deleted"] == 0 and result["changed"] is False
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
    assert "CREATE INDEX CONCURRENTLY" in human.stderr and "draft(s) deleted" in human.stderr + human.stdout
    with pytest.raises(BadInputError):
        cleanup.parse_age("24")
    assert json.loads(json.dumps(cleanup.parse_age("90m"))) == 5400

"""Transitions on a database with history (issue 17): expand never takes over a user's table with rows, a new
attempt after a rollback is a new generation, a kept table that no longer matches the spec is refused, and
quarantine that arrives after validate blocks the forward transitions."""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import psycopg
import pytest

from migrator import lifecycle, operations
from migrator.db import Database
from migrator.engine.context import Context
from migrator.errors import GuardFailed
from migrator.phases import validate
from migrator.phases.backfill import Backfill
from migrator.phases.base import RollbackOptions
from migrator.phases.expand import Expand
from migrator.phases.switch_reads import SwitchReads
from migrator.phases.switch_writes import SwitchWrites
from migrator.phases.validate import Validate
from migrator.seed import seed
from migrator.spec import Spec

pytestmark = pytest.mark.db


@pytest.fixture
def seeded(db: Database) -> Database:
    """2,000 legacy rows, 10% of them dirty (they go to quarantine)."""
    with db.connect() as c:
        seed(c, 2000, dirty_ratio=0.1, random_seed=17)
    return db


def _scalar(db: Database, query: str) -> object:
    with db.connect(autocommit=True) as c:
        row = c.execute(query).fetchone()  # type: ignore[arg-type]
    return row[0] if row else None


def test_expand_refuses_a_table_it_did_not_create_that_holds_rows(seeded: Database, projects_spec: Spec) -> None:
    """A user's own `projects` with the spec's columns and 1,000 rows is refused by name, and keeps every row."""
    columns = ", ".join(f"{c} {cs.type}" for c, cs in projects_spec.base.columns.items())
    with seeded.connect(autocommit=True) as c:
        c.execute(f"CREATE TABLE public.projects (id bigint PRIMARY KEY, {columns})")  # type: ignore[arg-type]
        c.execute("INSERT INTO public.projects (id, name) SELECT g, 'mine' FROM generate_series(1, 1000) g")
    with pytest.raises(GuardFailed, match=r"public\.projects already exists, holds rows,? and was not created"):
        Expand().apply(Context(projects_spec, seeded))
    assert _scalar(seeded, "SELECT count(*) FROM public.projects") == 1000
    assert _scalar(seeded, "SELECT count(*) FROM public.projects WHERE name = 'mine'") == 1000


@pytest.mark.parametrize("drop_tables", [False, True])
def test_a_new_attempt_after_rollback_is_a_new_generation(
    seeded: Database, projects_spec: Spec, drop_tables: bool
) -> None:
    """After rollback --to legacy and a new expand, the backfill copies everything again (no stale ranges), only
    this attempt's quarantine is open, and the audit log says what was cleared."""
    ctx = Context(projects_spec, seeded)
    Expand().apply(ctx)
    Backfill().apply(ctx)
    first_quarantine = _scalar(seeded, "SELECT count(*) FROM migrator.quarantine WHERE resolved_at IS NULL")
    assert first_quarantine
    operations.rollback(ctx, "legacy", RollbackOptions(drop_tables=drop_tables))
    with seeded.connect(autocommit=True) as c:
        # Meanwhile the application fixes every dirty row: the new attempt must quarantine nothing.
        c.execute(
            "UPDATE public.core_project SET course_name = coalesce(course_name, 'c'), "
            "course_code = coalesce(course_code, 'c'), teacher_name = coalesce(teacher_name, 't') "
            "WHERE project_type = 'school'"
        )
        c.execute(
            "UPDATE public.core_project SET goal_description = coalesce(goal_description, 'g'), "
            "study_frequency = coalesce(study_frequency, 'weekly') WHERE project_type = 'self_study'"
        )
    Expand().apply(ctx)
    Backfill().apply(ctx)
    assert _scalar(seeded, "SELECT count(*) FROM migrator.quarantine") == 0
    assert _scalar(seeded, "SELECT count(*) FROM public.projects") == _scalar(
        seeded, "SELECT count(*) FROM public.core_project"
    )
    cleared = _scalar(
        seeded,
        "SELECT details->'cleared_from_earlier_attempt' FROM migrator.transitions WHERE command = 'expand' "
        "ORDER BY id DESC LIMIT 1",
    )
    assert cleared == {"backfill_ranges": 1, "quarantine": first_quarantine}
    Validate().apply(ctx)


def test_a_kept_table_that_differs_from_the_spec_is_refused(seeded: Database, projects_spec: Spec) -> None:
    """A split table kept from an earlier attempt whose column type differs from the spec stops expand, naming the
    column, both types and the fix."""
    ctx = Context(projects_spec, seeded)
    Expand().apply(ctx)
    operations.rollback(ctx)
    with seeded.connect(autocommit=True) as c:
        c.execute(
            "ALTER TABLE public.school_projects ALTER COLUMN course_code TYPE varchar(10) USING left(course_code, 10)"
        )
    with pytest.raises(
        GuardFailed, match=r"course_code is character varying\(10\), the spec says character varying\(50\)"
    ):
        Expand().apply(ctx)


def test_quarantine_after_validate_blocks_switch_reads(seeded: Database, projects_spec: Spec) -> None:
    """A row quarantined after validate (an unknown discriminator) stops switch-reads by id; fixed, it passes."""
    ctx = Context(projects_spec, seeded)
    Expand().apply(ctx)
    Backfill().apply(ctx)
    Validate(validate.Options(accept_quarantine=True)).apply(ctx)
    with seeded.connect(autocommit=True) as c:
        owner = c.execute("SELECT min(id) FROM public.auth_user").fetchone()
        assert owner is not None
        row = c.execute(
            "INSERT INTO public.core_project (name, project_type, owner_id) "
            "VALUES ('odd', 'exchange', %s) RETURNING id",
            [owner[0]],
        ).fetchone()
        assert row is not None
    with pytest.raises(GuardFailed, match=rf"in quarantine, not in the split tables: {row[0]} \(23514\)"):
        SwitchReads().apply(ctx)
    with seeded.connect(autocommit=True) as c:
        c.execute(
            "UPDATE public.core_project SET project_type = 'self_study', goal_description = 'g', study_frequency = 'w' "
            "WHERE id = %s",
            [row[0]],
        )
    SwitchReads().apply(ctx)


class LaggingInstance:
    """An application instance that acts on the flags as they were `lag` seconds ago (a cache, a slow deploy):
    it inserts one row a tick into the side it believes it should write, and remembers every id and side."""

    def __init__(self, url: str, lag: float) -> None:
        self.url, self.lag = url, lag
        self.written: list[tuple[int, str]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LaggingInstance:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def _run(self) -> None:
        seen: collections.deque[tuple[float, str]] = collections.deque()
        with psycopg.connect(self.url, autocommit=True) as c:
            owner = c.execute("SELECT min(id) FROM public.auth_user").fetchone()[0]  # type: ignore[index]
            while not self.stop.is_set():
                now = time.monotonic()
                flag = c.execute("SELECT migrator.flag_state('core_project_split')").fetchone()[0]  # type: ignore[index]
                seen.append((now, flag))
                while len(seen) > 1 and seen[1][0] <= now - self.lag:
                    seen.popleft()
                side = "split" if lifecycle.writes_split(seen[0][1]) else "legacy"
                try:
                    with c.transaction():
                        self.written.append((self._insert(c, side, owner), side))
                except psycopg.Error as exc:
                    self.errors.append(str(exc).splitlines()[0])
                time.sleep(0.05)

    @staticmethod
    def _insert(c: psycopg.Connection[Any], side: str, owner: int) -> int:
        if side == "split":
            row = c.execute(
                "INSERT INTO public.projects (name, project_type, owner_id, is_draft, created_at, updated_at) "
                "VALUES ('lagging', 'self_study', %s, false, now(), now()) RETURNING id",
                [owner],
            ).fetchone()
            assert row is not None
            c.execute(
                "INSERT INTO public.self_study_projects (project_id, goal_description, study_frequency) "
                "VALUES (%s, 'lagging goal', 'daily')",
                [row[0]],
            )
            return int(row[0])
        row = c.execute(
            "INSERT INTO public.core_project (name, project_type, owner_id, goal_description, study_frequency) "
            "VALUES ('lagging', 'self_study', %s, 'lagging goal', 'daily') RETURNING id",
            [owner],
        ).fetchone()
        assert row is not None
        return int(row[0])


def test_rollback_waits_for_a_lagging_instance_and_loses_none_of_its_writes(
    seeded: Database, projects_spec: Spec, database_url: str
) -> None:
    """An instance that sees the flags 2 s late keeps writing the split tables after the rollback from write_new:
    `rollback --to legacy --wait` keeps the reverse sync until the split side is quiet, and every row it wrote,
    on either side, is in the legacy table at the end."""
    with seeded.connect(autocommit=True) as c:
        c.execute("UPDATE public.core_project SET course_name = 'c', course_code = 'c', teacher_name = 't'")
        c.execute("UPDATE public.core_project SET goal_description = 'g', study_frequency = 'w'")
    ctx = Context(projects_spec, seeded)
    for phase in (Expand(), Backfill(), Validate(), SwitchReads(), SwitchWrites()):
        phase.apply(ctx)
    with LaggingInstance(database_url, lag=2.0) as app:
        time.sleep(2.5)  # it has seen write_new by now, and writes the split tables
        operations.rollback(ctx, "legacy", RollbackOptions(quiet_period=1.0, wait=60))
        time.sleep(0.5)
    assert app.errors == []
    ids = [i for i, _ in app.written]
    with seeded.connect(autocommit=True) as c:
        found = c.execute(
            "SELECT count(*) FROM public.core_project WHERE id = ANY(%s) AND name = 'lagging' "
            "AND goal_description = 'lagging goal' AND study_frequency = 'daily'",
            [ids],
        ).fetchone()
    assert found == (len(ids),)
    assert {side for _, side in app.written} == {"split", "legacy"}

"""`migrator demo`: the whole lifecycle on a seeded database while a live writer keeps writing.

The writer behaves like an application that follows the flags: it writes the legacy table until `write_new`,
then the split tables. Every phase runs through the same library calls the CLI uses; the summary counts the
writer's transactions and failures (which must be 0).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from migrator import guards, lifecycle, operations, state
from migrator.db import Database
from migrator.engine.context import Context, Reporter
from migrator.phases import contract, switch_reads
from migrator.phases.backfill import Backfill
from migrator.phases.contract import Contract
from migrator.phases.expand import Expand
from migrator.phases.switch_reads import SwitchReads
from migrator.phases.switch_writes import SwitchWrites
from migrator.phases.validate import Validate
from migrator.seed import seed
from migrator.spec import Spec, load_spec
from migrator.sqlgen.compose import ident

DEMO_DATABASE = "migrator_demo"


@dataclass
class WriterStats:
    transactions: int = 0
    failures: int = 0
    legacy_writes: int = 0
    split_writes: int = 0
    errors: list[str] = field(default_factory=list)


class Writer:
    """A steady application writer (inserts, updates, type changes, deletes) that follows the flags."""

    def __init__(self, dsn: str, spec: Spec, rate: float = 100.0, seed_: int = 7) -> None:
        self.dsn, self.spec, self.rate = dsn, spec, rate
        self.rng = random.Random(seed_)  # noqa: S311 — a reproducible workload, not a secret
        self.stats = WriterStats()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="demo-writer", daemon=True)
        self._state = lifecycle.START
        self._state_at = 0.0
        self._flag_query = sql.SQL("SELECT {}(%s)").format(ident(spec.state_schema, "flag_state"))

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> WriterStats:
        self.stop_event.set()
        self.thread.join(30)
        return self.stats

    def _current_state(self, conn: psycopg.Connection[Any]) -> str:
        # An application would use migrator.flags (cached, refreshed on NOTIFY); re-reading every 0.2 s through
        # the flag function an application role may call is the same thing, simpler.
        now = time.monotonic()
        if now - self._state_at > 0.2:
            try:
                row = conn.execute(self._flag_query, [self.spec.migration_name]).fetchone()
                self._state = str(row[0]) if row else lifecycle.START
            except (psycopg.errors.InvalidSchemaName, psycopg.errors.UndefinedFunction):
                self._state = lifecycle.START  # expand has not created the flag functions yet
            self._state_at = now
        return self._state

    def _run(self) -> None:
        interval = 1.0 / self.rate
        with psycopg.connect(self.dsn, autocommit=True, application_name="demo-app") as conn:
            max_id = int(conn.execute("SELECT coalesce(max(id), 1) FROM core_project").fetchone()[0])  # type: ignore[index]
            owner = int(conn.execute("SELECT min(id) FROM auth_user").fetchone()[0])  # type: ignore[index]
            next_at = time.monotonic()
            while not self.stop_event.is_set():
                split = lifecycle.writes_split(self._current_state(conn))
                try:
                    with conn.transaction():
                        self._one(conn, split, max_id, owner)
                    self.stats.transactions += 1
                    if split:
                        self.stats.split_writes += 1
                    else:
                        self.stats.legacy_writes += 1
                except psycopg.Error as exc:
                    self.stats.failures += 1
                    if len(self.stats.errors) < 5:
                        where = exc.diag.context.splitlines()[0] if exc.diag.context else ""
                        self.stats.errors.append(f"{str(exc).splitlines()[0]} ({where})" if where else str(exc))
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))

    def _one(self, conn: psycopg.Connection[Any], split: bool, max_id: int, owner: int) -> None:
        r = self.rng.random()
        pid = self.rng.randint(1, max_id)
        if split:
            if r < 0.3:
                row = conn.execute(
                    "INSERT INTO projects (name, project_type, owner_id, is_draft, created_at, updated_at) "
                    "VALUES ('demo (split)', 'school', %s, true, now(), now()) RETURNING id",
                    [owner],
                ).fetchone()
                assert row is not None
                conn.execute(
                    "INSERT INTO school_projects (project_id, course_name, course_code, teacher_name) "
                    "VALUES (%s, 'Demo course', 'DEMO-1', 'Demo teacher')",
                    [row[0]],
                )
                conn.execute(
                    "INSERT INTO project_meta (project_id, key, value) VALUES (%s, 'syllabus', %s)",
                    [row[0], '{"weeks": 4}'],
                )
            elif r < 0.8:
                conn.execute(
                    "UPDATE projects SET name = 'demo update (split)', updated_at = now() WHERE id = %s", [pid]
                )
            else:
                conn.execute("DELETE FROM projects WHERE id = %s", [pid])
            return
        if r < 0.3:
            conn.execute(
                "INSERT INTO core_project (name, project_type, owner_id, goal_description, study_frequency) "
                "VALUES ('demo (legacy)', 'self_study', %s, 'Learn', 'weekly')",
                [owner],
            )
        elif r < 0.7:
            conn.execute(
                "UPDATE core_project SET name = 'demo update (legacy)', updated_at = now() WHERE id = %s", [pid]
            )
        elif r < 0.85:
            conn.execute(
                "UPDATE core_project SET project_type = 'school', course_name = coalesce(course_name, 'C'), "
                "course_code = coalesce(course_code, 'C-1'), teacher_name = coalesce(teacher_name, 'T') "
                "WHERE id = %s AND project_type = 'self_study'",
                [pid],
            )
        else:
            conn.execute("DELETE FROM core_project WHERE id = %s", [pid])


@dataclass
class DemoResult:
    database: str
    rows: int
    phases: list[tuple[str, float, str]]
    writer: WriterStats
    quarantined_before_fix: int
    final_state: str


def _recreate(server_dsn: str, name: str) -> str:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident(name)))
    return psycopg.conninfo.make_conninfo(server_dsn, dbname=name)


def run(
    server_dsn: str,
    rows: int,
    reporter: Reporter,
    *,
    rate: float = 100.0,
    database: str = DEMO_DATABASE,
    quiet_period: float = 2.0,
    on_phase: Callable[[str], None] | None = None,
) -> DemoResult:
    """Seed, then run every phase (with one rollback and re-advance) under a live writer, ending contracted."""
    spec = load_spec()
    dsn = _recreate(server_dsn, database)
    db = Database(dsn)
    phases: list[tuple[str, float, str]] = []

    def phase(title: str, fn: Callable[[], object]) -> None:
        if on_phase:
            on_phase(title)
        t0 = time.monotonic()
        fn()
        with db.connect(autocommit=True) as c:
            now = state.read(c, spec).state
        phases.append((title, time.monotonic() - t0, now))

    ctx = Context(spec, db, reporter=reporter, reason="demo")

    with db.connect() as conn:
        seed(conn, rows, dirty_ratio=0.02, random_seed=42)
    writer = Writer(dsn, spec, rate=rate)
    writer.start()
    try:
        phase("expand", lambda: Expand().apply(ctx))
        phase("backfill", lambda: Backfill().apply(ctx))
        with db.connect(autocommit=True) as c:
            quarantined = guards.open_quarantine(c, spec)
            # As the application team would: complete the rows the split schema rejected. The forward
            # triggers move them out of quarantine.
            phase("fix quarantined rows", lambda: _fix_dirty(c))
        phase("validate", lambda: Validate().apply(ctx))
        phase("switch-reads 50%", lambda: SwitchReads(switch_reads.Options(percent=50)).apply(ctx))
        phase("switch-reads 100%", lambda: SwitchReads().apply(ctx))
        phase("switch-writes", lambda: SwitchWrites().apply(ctx))
        phase("rollback (write_new -> read_new)", lambda: operations.rollback(ctx))
        phase("switch-writes again", lambda: SwitchWrites().apply(ctx))
        contract_options = contract.Options(quiet_period=quiet_period, compat_view=True, wait=60)
        phase("contract --compat-view", lambda: Contract(contract_options).apply(ctx))
    finally:
        stats = writer.stop()
    with db.connect(autocommit=True) as c:
        final = state.read(c, spec).state
    db.dispose()
    return DemoResult(database, rows, phases, stats, quarantined, final)


def _fix_dirty(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "UPDATE core_project SET course_name = coalesce(course_name, 'Unnamed course'), "
        "course_code = coalesce(course_code, 'N/A'), teacher_name = coalesce(teacher_name, 'Unknown') "
        "WHERE project_type = 'school' AND (course_name IS NULL OR course_code IS NULL "
        "OR teacher_name IS NULL)"
    )
    conn.execute(
        "UPDATE core_project SET goal_description = coalesce(goal_description, 'Unspecified'), "
        "study_frequency = coalesce(study_frequency, 'weekly') WHERE project_type = 'self_study' "
        "AND (goal_description IS NULL OR study_frequency IS NULL)"
    )

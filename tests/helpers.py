"""Assertions shared by tests: does the split side equal the legacy side, row for row?"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from migrator import guards, state
from migrator.spec import Spec
from migrator.sqlgen import names
from migrator.sqlgen.compose import ident


def diff(conn: psycopg.Connection[Any], spec: Spec) -> list[tuple[str, Any]]:
    """('legacy_only' | 'split_only', key) for every row that differs, leaving out open quarantine keys."""
    return guards.diff(conn, spec, limit=1_000_000)


def quarantined(conn: psycopg.Connection[Any], spec: Spec) -> dict[str, str]:
    """Open quarantine rows: key -> SQLSTATE."""
    rows = conn.execute(
        sql.SQL("SELECT key, sqlstate FROM {} WHERE migration = %s AND resolved_at IS NULL").format(
            names.state(spec, "quarantine")
        ),
        [spec.migration_name],
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def split_rows_for(conn: psycopg.Connection[Any], spec: Spec, key: Any) -> int:
    """How many rows, across every split table, belong to `key`."""
    total = 0
    base = names.split(spec, spec.base.table)
    total += conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(base, ident(spec.pk)), [key]
    ).fetchone()[0]  # type: ignore[index]
    for table in spec.split_tables()[1:]:
        total += conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
                names.split(spec, table), ident(spec.base.link_column)
            ),
            [key],
        ).fetchone()[0]  # type: ignore[index]
    return total


def count(conn: psycopg.Connection[Any], table: str) -> int:
    return int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ident(*table.split(".")))).fetchone()[0])  # type: ignore[index]


class RandomWriters:
    """Application-like writers on the legacy table (inserts, updates, type changes, two-row transactions,
    deletes) in threads, until the block ends; failures are collected, not raised."""

    def __init__(self, url: str, max_id: int, count: int = 2) -> None:
        self.url, self.max_id = url, max_id
        self.stop = threading.Event()
        self.failures: list[BaseException] = []
        self.ops = 0
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(count)]

    def __enter__(self) -> RandomWriters:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _run(self, seed: int) -> None:
        rnd = random.Random(seed)
        try:
            with psycopg.connect(self.url, autocommit=True, application_name="app") as a:
                while not self.stop.is_set():
                    self._one(a, rnd, rnd.randint(1, self.max_id), rnd.random())
                    self.ops += 1
        except BaseException as exc:  # collected for the test's assertion
            self.failures.append(exc)

    @staticmethod
    def _one(a: psycopg.Connection[Any], rnd: random.Random, pid: int, kind: float) -> None:
        if kind < 0.2:
            a.execute(
                "INSERT INTO core_project (name, project_type, owner_id, course_name, course_code,"
                " teacher_name, syllabus) VALUES ('new', 'school', (SELECT min(id) FROM auth_user),"
                " 'c', 'c', %s, %s)",
                [None if rnd.random() < 0.1 else "t", '{"w": 1}' if rnd.random() < 0.5 else None],
            )
        elif kind < 0.5:
            a.execute(
                "UPDATE core_project SET name = md5(random()::text), syllabus = CASE WHEN "
                "random() < 0.5 THEN NULL ELSE '{\"x\": 2}'::jsonb END WHERE id = %s",
                [pid],
            )
        elif kind < 0.7:
            a.execute(
                "UPDATE core_project SET project_type = CASE project_type WHEN 'school' THEN "
                "'self_study' ELSE 'school' END, goal_description = coalesce(goal_description, 'g'),"
                " study_frequency = coalesce(study_frequency, 'weekly'), course_name = "
                "coalesce(course_name, 'c'), course_code = coalesce(course_code, 'c'), "
                "teacher_name = coalesce(teacher_name, 't') WHERE id = %s",
                [pid],
            )
        elif kind < 0.85:
            with a.transaction():
                a.execute("UPDATE core_project SET is_draft = NOT is_draft WHERE id = %s", [pid])
                a.execute("UPDATE core_project SET end_date = current_date WHERE id = %s", [pid + 1])
        else:
            a.execute("DELETE FROM core_project WHERE id = %s", [pid])


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> float | None:
    """Seconds until `predicate()` held, polling every 20 ms; None if it never did within `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.02)
    return None


def move_state(conn: psycopg.Connection[Any], spec: Spec, *states: str) -> None:
    """Record transitions through `states`, each in its own transaction, as the phases do."""
    current = state.read(conn, spec).state
    for to_state in states:
        with conn.transaction():
            state.record(conn, spec, from_state=current, to_state=to_state, command="test")
        current = to_state

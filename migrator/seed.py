"""Seed the legacy "Before" schema with deterministic synthetic data.

All data is generated server-side by set-based ``INSERT ... SELECT`` statements
(see ``sql/seed_*.sql``); Python only validates arguments, slices the work for
progress reporting and manages the transaction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from migrator.sqlgen.compose import load

__all__ = ["SeedResult", "seed"]

# Timestamps are spread backwards from a fixed instant rather than now(), so
# the same arguments produce byte-identical rows no matter when seeding runs.
ANCHOR = datetime(2026, 1, 1, tzinfo=UTC)

# Big enough that per-statement overhead is negligible, small enough that
# progress moves every couple of seconds and RETURNING buffers stay small.
SLICE_ROWS = 100_000

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

_SEEDED_TABLES = (
    "auth_user",
    "core_file",
    "core_project",
    "core_importantdate",
    "core_project_attachments",
)


@dataclass(frozen=True)
class SeedResult:
    """What one :func:`seed` call inserted."""

    rows: int  # core_project rows inserted by this call
    dirty: int  # how many of them are dirty
    users: int  # auth_user rows inserted by this call
    seconds: float  # wall-clock duration of the call


def _validate(rows: int, dirty_ratio: float, random_seed: int) -> None:
    # bool is an int subclass; seed(conn, True) is certainly a mistake.
    if isinstance(rows, bool) or not isinstance(rows, int):
        raise ValueError(f"rows must be an integer, got {rows!r}")
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    if isinstance(dirty_ratio, bool) or not isinstance(dirty_ratio, int | float):
        raise ValueError(f"dirty_ratio must be a number, got {dirty_ratio!r}")
    if math.isnan(dirty_ratio) or not 0.0 <= dirty_ratio <= 1.0:
        raise ValueError(f"dirty_ratio must be between 0 and 1, got {dirty_ratio}")
    if isinstance(random_seed, bool) or not isinstance(random_seed, int):
        raise ValueError(f"random_seed must be an integer, got {random_seed!r}")
    if not _INT64_MIN <= random_seed <= _INT64_MAX:
        # It is passed to hashint8extended() as a bigint.
        raise ValueError(f"random_seed must fit in a signed 64-bit integer, got {random_seed}")


def _next_number(cur: psycopg.Cursor[Any], table: str) -> int:
    # Continuing after max(id) makes generated names like "Project 42" usually
    # match the id they receive, and keeps appended batches distinct from
    # earlier ones drawn with the same seed.
    cur.execute(sql.SQL("SELECT coalesce(max(id), 0) + 1 FROM {}").format(sql.Identifier("public", table)))
    row = cur.fetchone()
    assert row is not None
    return int(row[0])


def seed(
    conn: psycopg.Connection[Any],
    rows: int,
    dirty_ratio: float = 0.05,
    random_seed: int = 42,
    on_progress: Callable[[int, int], None] | None = None,
) -> SeedResult:
    """Create the legacy 'Before' schema when absent and insert `rows` synthetic projects.

    Alongside the projects it inserts about rows/20 users (at least one when
    rows > 0), rows/4 files, one important date per two projects and one
    attachment per three projects.  About ``dirty_ratio`` of the projects lack
    fields their ``project_type`` requires.

    The same (rows, dirty_ratio, random_seed) on an empty database yields
    identical data.  On a database that already holds rows, ``rows`` more
    projects are appended; new rows may reference existing users and files.

    Everything happens in one transaction that is committed before returning
    (any transaction already open on ``conn`` is committed with it); on error
    it is rolled back.  ``on_progress(done, total)`` is called after each slice
    of projects, ``total`` being ``rows``.
    """
    _validate(rows, dirty_ratio, random_seed)
    started = time.perf_counter()
    n_users = max(1, rows // 20) if rows else 0
    n_files = rows // 4
    inserted = dirty = users = 0

    try:
        # transaction() also gives atomicity on an autocommit connection.
        with conn.transaction(), conn.cursor() as cur:
            # Durability of a bulk seed is not worth waiting for the WAL flush.
            cur.execute("SET LOCAL synchronous_commit = off")
            cur.execute(load("seed_schema"))

            params: dict[str, Any] = {
                "seed": random_seed,
                "anchor": ANCHOR,
                "dirty_ratio": float(dirty_ratio),
            }
            if n_users:
                first = _next_number(cur, "auth_user")
                cur.execute(
                    load("seed_data_users"),
                    {**params, "first": first, "last": first + n_users - 1},
                )
                users = cur.rowcount
            if n_files:
                first = _next_number(cur, "core_file")
                cur.execute(
                    load("seed_data_files"),
                    {**params, "first": first, "last": first + n_files - 1},
                )

            projects_sql = load("seed_data_projects")
            first = _next_number(cur, "core_project")
            # Loop on the numbers requested, not on rows reported back, so a
            # surprise from the server can never turn this into an endless loop.
            for start in range(0, rows, SLICE_ROWS):
                n = min(SLICE_ROWS, rows - start)
                cur.execute(
                    projects_sql,
                    {**params, "first": first + start, "last": first + start + n - 1},
                )
                counts = cur.fetchone()
                assert counts is not None
                inserted += int(counts[0])
                dirty += int(counts[1])
                if on_progress is not None:
                    on_progress(start + n, rows)
        conn.commit()  # no-op unless the caller had a transaction open

        # Fresh statistics let the migrations that follow get sane plans
        # right away instead of waiting for autovacuum.
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(sql.Identifier("public", t) for t in _SEEDED_TABLES))
            )
        conn.commit()
    except BaseException:
        # Leave the connection usable for the caller; a dead one has nothing
        # to roll back and must not mask the original error.
        if not conn.closed:
            conn.rollback()
        raise

    return SeedResult(
        rows=inserted,
        dirty=dirty,
        users=users,
        seconds=time.perf_counter() - started,
    )

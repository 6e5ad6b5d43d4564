"""`migrator seed`: the legacy schema and its deterministic synthetic data, against a real PostgreSQL."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from migrator import seed as seed_mod
from migrator.seed import SeedResult, seed

LEGACY_TABLES = ("auth_user", "core_project", "core_importantdate", "core_file", "core_project_attachments")

SCHOOL_FIELDS = ("course_name", "course_code", "teacher_name")
SELF_STUDY_FIELDS = ("goal_description", "study_frequency")

# A row is dirty when it lacks a field its project_type requires.
DIRTY = """
    (project_type = 'school' AND (course_name IS NULL OR course_code IS NULL OR teacher_name IS NULL))
    OR (project_type = 'self_study' AND (goal_description IS NULL OR study_frequency IS NULL))
"""


def _seed(url: str, rows: int, **kwargs: Any) -> SeedResult:
    with psycopg.connect(url) as conn:
        return seed(conn, rows, **kwargs)


def _scalar(url: str, query: str) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def _fingerprint(url: str) -> str:
    """md5 over every seeded table, rendered in UTC so the session TimeZone cannot matter."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        parts = []
        for table in LEGACY_TABLES:
            query = sql.SQL("SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY id), '')) FROM {} AS t").format(
                sql.Identifier("public", table)
            )
            row = conn.execute(query).fetchone()
            assert row is not None
            parts.append(f"{table}:{row[0]}")
    return " ".join(parts)


@pytest.fixture
def twin_database_url(database_url: str) -> Iterator[str]:
    """A second fresh, empty database on the same server, for comparing two seeds."""
    params = conninfo_to_dict(database_url)
    name = f"{params.get('dbname', 'db')}_twin_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    try:
        yield make_conninfo(database_url, dbname=name)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.db
def test_creates_legacy_schema_with_zero_rows(database_url: str) -> None:
    """rows=0 creates all five legacy tables with their FKs and indexes and inserts nothing."""
    result = _seed(database_url, 0)

    assert (result.rows, result.dirty, result.users) == (0, 0, 0)
    with psycopg.connect(database_url, autocommit=True) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert set(LEGACY_TABLES) <= tables
        for table in LEGACY_TABLES:
            count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))).fetchone()
            assert count == (0,), table
        fks = {
            r[0]
            for r in conn.execute(
                "SELECT conrelid::regclass::text || '.' || a.attname || '->' || confrelid::regclass::text"
                " FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
                " WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace"
            )
        }
        assert fks == {
            "core_project.owner_id->auth_user",
            "core_importantdate.project_id->core_project",
            "core_file.owner_id->auth_user",
            "core_project_attachments.project_id->core_project",
            "core_project_attachments.file_id->core_file",
        }
        indexed = {
            r[0]
            for r in conn.execute(
                "SELECT indrelid::regclass::text || '.' || a.attname FROM pg_index i"
                " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
                " WHERE i.indrelid::regclass::text IN ('core_project', 'core_importantdate')"
            )
        }
        assert {"core_project.owner_id", "core_importantdate.project_id"} <= indexed


@pytest.mark.db
def test_schema_creation_is_idempotent(database_url: str) -> None:
    """Seeding twice does not fail on the existing schema."""
    _seed(database_url, 0)
    _seed(database_url, 0)
    assert _scalar(database_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == len(LEGACY_TABLES)


@pytest.mark.db
def test_inserts_exact_row_counts(database_url: str) -> None:
    """Exactly `rows` projects, rows/20 users, rows/4 files, and about rows/2 dates and rows/3 attachments."""
    rows = 3000
    result = _seed(database_url, rows)

    assert result.rows == rows
    assert result.users == rows // 20
    assert result.seconds > 0
    assert _scalar(database_url, "SELECT count(*) FROM core_project") == rows
    assert _scalar(database_url, "SELECT count(*) FROM auth_user") == rows // 20
    assert _scalar(database_url, "SELECT count(*) FROM core_file") == rows // 4
    assert abs(_scalar(database_url, "SELECT count(*) FROM core_importantdate") - rows / 2) < rows * 0.05
    assert abs(_scalar(database_url, "SELECT count(*) FROM core_project_attachments") - rows / 3) < rows * 0.05


@pytest.mark.db
def test_tiny_seed_has_an_owner(database_url: str) -> None:
    """rows=1 still creates one user to own the project, and no files or attachments."""
    result = _seed(database_url, 1)

    assert (result.rows, result.users) == (1, 1)
    assert _scalar(database_url, "SELECT count(*) FROM core_file") == 0
    assert _scalar(database_url, "SELECT count(*) FROM core_project_attachments") == 0


@pytest.mark.db
def test_data_has_realistic_shape(database_url: str) -> None:
    """Type split, syllabus, drafts, soft deletes and date/timestamp ordering match the legacy app's patterns."""
    rows = 4000
    _seed(database_url, rows, dirty_ratio=0.0)

    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            """
            SELECT avg((project_type = 'school')::int)::float8,
                   avg((syllabus IS NOT NULL)::int) FILTER (WHERE project_type = 'school')::float8,
                   count(*) FILTER (WHERE syllabus IS NOT NULL AND project_type <> 'school'),
                   avg(is_draft::int)::float8,
                   count(*) FILTER (WHERE end_date < start_date),
                   count(*) FILTER (WHERE start_date IS NULL),
                   count(*) FILTER (WHERE end_date IS NULL),
                   count(*) FILTER (WHERE updated_at < created_at),
                   max(created_at) - min(created_at) > interval '2 years 11 months',
                   count(*) FILTER (WHERE study_frequency NOT IN ('daily', 'weekly', 'monthly')),
                   count(*) FILTER (WHERE course_code !~ '^[A-Z]+-[0-9]{3}$'),
                   count(*) FILTER (WHERE name NOT LIKE 'Project ' || id || ': _%'),
                   count(*) FILTER (WHERE syllabus IS NOT NULL AND jsonb_typeof(syllabus -> 'topics') <> 'array')
            FROM core_project
            """
        ).fetchone()
        assert row is not None
        school, syllabus, syllabus_elsewhere, draft, backwards, no_start, no_end, stale, spread, *bad = row
        assert 0.50 < school < 0.60
        assert 0.55 < syllabus < 0.65
        assert syllabus_elsewhere == 0
        assert 0.25 < draft < 0.35
        assert backwards == 0
        assert 0 < no_start < no_end < rows
        assert stale == 0
        assert spread
        assert bad == [0, 0, 0, 0]

        deleted = conn.execute("SELECT avg((deleted_at IS NOT NULL)::int)::float8 FROM core_file").fetchone()
        assert deleted is not None
        assert 0.05 < deleted[0] < 0.15
        assert conn.execute("SELECT count(*) FROM core_file WHERE deleted_at < uploaded_at").fetchone() == (0,)


@pytest.mark.db
def test_dirty_ratio_within_tolerance(database_url: str) -> None:
    """About dirty_ratio of the rows are dirty, and SeedResult.dirty counts exactly those."""
    rows, ratio = 4000, 0.1
    result = _seed(database_url, rows, dirty_ratio=ratio)

    actual = _scalar(database_url, f"SELECT count(*) FROM core_project WHERE {DIRTY}")
    assert result.dirty == actual
    assert abs(actual / rows - ratio) < 0.03
    # Both kinds of project get dirty rows, as the legacy app allowed for both.
    assert _scalar(database_url, f"SELECT count(DISTINCT project_type) FROM core_project WHERE {DIRTY}") == 2


@pytest.mark.db
def test_dirty_rows_lack_fields_and_clean_rows_are_complete(database_url: str) -> None:
    """Clean rows have every field of their variant and none of the other's; dirty rows miss at least one."""
    _seed(database_url, 4000, dirty_ratio=0.2)

    def count(where: str) -> int:
        return int(_scalar(database_url, f"SELECT count(*) FROM core_project WHERE {where}"))

    school_complete = " AND ".join(f"{c} IS NOT NULL" for c in SCHOOL_FIELDS)
    self_study_complete = " AND ".join(f"{c} IS NOT NULL" for c in SELF_STUDY_FIELDS)
    school_absent = " AND ".join(f"{c} IS NULL" for c in SCHOOL_FIELDS)
    self_study_absent = " AND ".join(f"{c} IS NULL" for c in SELF_STUDY_FIELDS)

    # A dirty row only ever loses fields; it never borrows the other variant's.
    assert count(f"project_type = 'school' AND NOT ({self_study_absent})") == 0
    assert count(f"project_type = 'self_study' AND NOT ({school_absent})") == 0
    assert count("project_type NOT IN ('school', 'self_study')") == 0

    clean = count(f"NOT ({DIRTY})")
    assert clean == count(
        f"(project_type = 'school' AND {school_complete}) OR (project_type = 'self_study' AND {self_study_complete})"
    )
    # Every missing-field pattern the legacy app produced shows up.
    for column in (*SCHOOL_FIELDS, *SELF_STUDY_FIELDS):
        assert count(f"{column} IS NULL AND ({DIRTY})") > 0, column


@pytest.mark.db
@pytest.mark.parametrize(("ratio", "expected_dirty"), [(0.0, 0), (1.0, 600)])
def test_dirty_ratio_extremes(database_url: str, ratio: float, expected_dirty: int) -> None:
    """dirty_ratio 0 yields no dirty rows and 1 yields only dirty rows."""
    result = _seed(database_url, 600, dirty_ratio=ratio)

    assert result.dirty == expected_dirty
    assert _scalar(database_url, f"SELECT count(*) FROM core_project WHERE {DIRTY}") == expected_dirty


@pytest.mark.db
def test_same_seed_gives_identical_data(database_url: str, twin_database_url: str) -> None:
    """The same arguments on two fresh databases give byte-identical tables, whatever the session TimeZone."""
    _seed(database_url, 2500, dirty_ratio=0.1, random_seed=7)
    with psycopg.connect(twin_database_url) as conn:
        # A DST zone would shift day-based timestamp arithmetic; the seed must not depend on it.
        conn.execute("SET TimeZone = 'America/New_York'")
        conn.commit()
        seed(conn, 2500, dirty_ratio=0.1, random_seed=7)

    assert _fingerprint(database_url) == _fingerprint(twin_database_url)


@pytest.mark.db
def test_slice_size_does_not_change_data(
    database_url: str, twin_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Progress slicing is invisible in the data: many small slices equal one big one."""
    _seed(database_url, 2500)
    monkeypatch.setattr(seed_mod, "SLICE_ROWS", 300)
    _seed(twin_database_url, 2500)

    assert _fingerprint(database_url) == _fingerprint(twin_database_url)


@pytest.mark.db
def test_different_seed_gives_different_data(database_url: str, twin_database_url: str) -> None:
    """Another random_seed on an identical fresh database gives different rows."""
    _seed(database_url, 2000, random_seed=1)
    _seed(twin_database_url, 2000, random_seed=2)

    ours = _fingerprint(database_url).split()
    theirs = _fingerprint(twin_database_url).split()
    assert all(a != b for a, b in zip(ours, theirs, strict=True))


@pytest.mark.db
def test_second_seed_appends(database_url: str) -> None:
    """Seeding again appends `rows` new projects with fresh ids and new content, all FKs valid."""
    first = _seed(database_url, 1500)
    first_max = _scalar(database_url, "SELECT max(id) FROM core_project")
    second = _seed(database_url, 1000)

    assert (first.rows, second.rows) == (1500, 1000)
    assert second.users == 1000 // 20
    assert _scalar(database_url, "SELECT count(*) FROM core_project") == 2500
    assert _scalar(database_url, "SELECT count(DISTINCT id) FROM core_project") == 2500
    assert _scalar(database_url, f"SELECT min(id) FROM core_project WHERE id > {first_max}") == first_max + 1
    assert _scalar(database_url, "SELECT count(*) FROM auth_user") == 1500 // 20 + 1000 // 20
    # The same default seed must not replay the first batch's content.
    assert _scalar(database_url, "SELECT count(DISTINCT name) FROM core_project") == 2500
    assert (
        _scalar(
            database_url,
            f"SELECT count(*) FROM core_project WHERE id > {first_max} AND owner_id <= {1500 // 20}",
        )
        > 0
    ), "appended projects should also belong to pre-existing users"
    orphans = """
        SELECT (SELECT count(*) FROM core_project p WHERE NOT EXISTS (SELECT FROM auth_user u WHERE u.id = p.owner_id))
             + (SELECT count(*) FROM core_importantdate d
                WHERE NOT EXISTS (SELECT FROM core_project p WHERE p.id = d.project_id))
             + (SELECT count(*) FROM core_project_attachments a
                WHERE NOT EXISTS (SELECT FROM core_file f WHERE f.id = a.file_id))
    """
    assert _scalar(database_url, orphans) == 0


@pytest.mark.db
def test_progress_is_reported_per_slice(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """on_progress receives (done, total) after every slice, ending at (rows, rows)."""
    monkeypatch.setattr(seed_mod, "SLICE_ROWS", 1000)
    calls: list[tuple[int, int]] = []
    with psycopg.connect(database_url) as conn:
        seed(conn, 2500, on_progress=lambda done, total: calls.append((done, total)))

    assert calls == [(1000, 2500), (2000, 2500), (2500, 2500)]


@pytest.mark.db
def test_works_on_autocommit_connection(database_url: str) -> None:
    """An autocommit connection is seeded too, and the rows are committed."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        result = seed(conn, 200)
    assert result.rows == 200
    assert _scalar(database_url, "SELECT count(*) FROM core_project") == 200


@pytest.mark.db
def test_commits_and_leaves_connection_idle(database_url: str) -> None:
    """After seed() the work is visible to other sessions and the connection is ready for more."""
    with psycopg.connect(database_url) as conn:
        seed(conn, 100)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert _scalar(database_url, "SELECT count(*) FROM core_project") == 100
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.db
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rows": -1}, "rows must be >= 0"),
        ({"rows": 1.5}, "rows must be an integer"),
        ({"rows": True}, "rows must be an integer"),
        ({"rows": 10, "dirty_ratio": -0.01}, "dirty_ratio must be between 0 and 1"),
        ({"rows": 10, "dirty_ratio": 1.01}, "dirty_ratio must be between 0 and 1"),
        ({"rows": 10, "dirty_ratio": math.nan}, "dirty_ratio must be between 0 and 1"),
        ({"rows": 10, "dirty_ratio": "0.1"}, "dirty_ratio must be a number"),
        ({"rows": 10, "random_seed": 2**63}, "random_seed must fit in a signed 64-bit integer"),
    ],
)
def test_bad_arguments_raise_before_touching_the_database(
    database_url: str, kwargs: dict[str, Any], message: str
) -> None:
    """Invalid rows, dirty_ratio or random_seed raise ValueError and create nothing."""
    with psycopg.connect(database_url) as conn, pytest.raises(ValueError, match=message):
        seed(conn, **kwargs)

    assert _scalar(database_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0

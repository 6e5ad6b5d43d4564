"""`migrator demo`: the whole lifecycle on a seeded database while a live writer keeps writing.

The writer behaves like an application that follows the flags: it writes the legacy table until `write_new`,
then the split tables. Every phase runs through the same library calls the CLI uses; the summary counts the
writer's transactions and failures (which must be 0).

The demo runs in the database its DSN names (the CLI: --dsn / DATABASE_URL, else the embedded server's default
database, so a plain `migrator status` afterwards looks at it). It creates that database when it does not exist,
and before seeding it removes what an earlier demo left there; objects of the same names that a demo did not
create (a COMMENT on auth_user marks the demo's) are dropped only once `confirm` has said yes.
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
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from migrator import guards, lifecycle, operations, state
from migrator.db import Database, mask_dsn
from migrator.engine.context import Context, Reporter
from migrator.errors import ConfirmationRequired, OperationalError
from migrator.phases import contract, switch_reads
from migrator.phases.backfill import Backfill
from migrator.phases.contract import Contract
from migrator.phases.expand import Expand
from migrator.phases.switch_reads import SwitchReads
from migrator.phases.switch_writes import SwitchWrites
from migrator.phases.validate import Validate
from migrator.seed import seed
from migrator.spec import Spec, load_spec
from migrator.sqlgen import names
from migrator.sqlgen.compose import ident

# The tables `migrator seed` creates (the seed document's legacy schema), in the public schema.
SEED_TABLES = ("auth_user", "core_project", "core_importantdate", "core_file", "core_project_attachments")
# Written on auth_user by the demo: what carries it, the demo may drop again without asking.
DEMO_MARK = "created by migrator demo"


def writer_fits(spec: Spec) -> bool:
    """Whether `Writer` can play the application for `spec`: it writes the built-in spec's tables only."""
    return spec == load_spec()


@dataclass
class WriterStats:
    transactions: int = 0
    failures: int = 0
    legacy_writes: int = 0
    split_writes: int = 0
    errors: list[str] = field(default_factory=list)
    # Why the writer could not start (no legacy table, no user to own its rows); not a failed transaction.
    setup_error: str | None = None


class Writer:
    """A steady application writer (inserts, updates, type changes, deletes) that follows the flags.

    It reads the state through the flag function an application role may call (`migrator.flag_state`) and writes
    the legacy table or the split tables as `lifecycle.writes_split` says. It knows the built-in spec's tables
    (`writer_fits`)."""

    def __init__(self, dsn: str, spec: Spec, rate: float = 100.0, seed_: int = 7) -> None:
        self.dsn, self.spec, self.rate = dsn, spec, rate
        self.rng = random.Random(seed_)  # noqa: S311 — a reproducible workload, not a secret
        self.stats = WriterStats()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="demo-writer", daemon=True)
        self._state = lifecycle.START
        self._state_at = 0.0
        self._flag_query = sql.SQL("SELECT {}(%s)").format(ident(spec.state_schema, "flag_state"))
        self._keys: tuple[int, int] | None = None

    def ready(self) -> bool:
        """Read what the workload needs (the highest legacy key, a user to own new rows); False, with
        `stats.setup_error` saying why, when the database lacks them."""
        if self._keys is not None:
            return True
        try:
            with psycopg.connect(self.dsn, autocommit=True, application_name="demo-app") as conn:
                row = conn.execute(
                    "SELECT (SELECT coalesce(max(id), 1) FROM public.core_project), "
                    "(SELECT min(id) FROM public.auth_user)"
                ).fetchone()
        except psycopg.Error as exc:
            self.stats.setup_error = f"the writer cannot read core_project and auth_user: {str(exc).strip()}"
            return False
        if row is None or row[1] is None:
            self.stats.setup_error = "auth_user has no row to own the writer's projects"
            return False
        self._keys = (int(row[0]), int(row[1]))
        return True

    def start(self) -> None:
        if not self.ready():
            raise OperationalError(f"the demo writer cannot start: {self.stats.setup_error}")
        self.thread.start()

    def stop(self) -> WriterStats:
        self.stop_event.set()
        if self.thread.is_alive():
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
        assert self._keys is not None
        max_id, owner = self._keys
        interval = 1.0 / self.rate
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, application_name="demo-app")
        except psycopg.Error as exc:
            self._failed(exc)
            return
        with conn:
            next_at = time.monotonic()
            while not self.stop_event.is_set():
                try:
                    split = lifecycle.writes_split(self._current_state(conn))
                    with conn.transaction():
                        self._one(conn, split, max_id, owner)
                    self.stats.transactions += 1
                    if split:
                        self.stats.split_writes += 1
                    else:
                        self.stats.legacy_writes += 1
                except psycopg.Error as exc:
                    self._failed(exc)
                    if conn.closed:
                        return
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))

    def _failed(self, exc: psycopg.Error) -> None:
        self.stats.failures += 1
        if len(self.stats.errors) < 5:
            context = exc.diag.context if isinstance(exc, psycopg.Error) and exc.diag else None
            where = context.splitlines()[0] if context else ""
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.stats.errors.append(f"{first} ({where})" if where else first)

    def _one(self, conn: psycopg.Connection[Any], split: bool, max_id: int, owner: int) -> None:
        r = self.rng.random()
        pid = self.rng.randint(1, max_id)
        if split:
            if r < 0.3:
                row = conn.execute(
                    "INSERT INTO public.projects (name, project_type, owner_id, is_draft, created_at, updated_at) "
                    "VALUES ('demo (split)', 'school', %s, true, now(), now()) RETURNING id",
                    [owner],
                ).fetchone()
                assert row is not None
                conn.execute(
                    "INSERT INTO public.school_projects (project_id, course_name, course_code, teacher_name) "
                    "VALUES (%s, 'Demo course', 'DEMO-1', 'Demo teacher')",
                    [row[0]],
                )
                conn.execute(
                    "INSERT INTO public.project_meta (project_id, key, value) VALUES (%s, 'syllabus', %s)",
                    [row[0], '{"weeks": 4}'],
                )
            elif r < 0.8:
                conn.execute(
                    "UPDATE public.projects SET name = 'demo update (split)', updated_at = now() WHERE id = %s", [pid]
                )
            else:
                conn.execute("DELETE FROM public.projects WHERE id = %s", [pid])
            return
        if r < 0.3:
            conn.execute(
                "INSERT INTO public.core_project (name, project_type, owner_id, goal_description, study_frequency) "
                "VALUES ('demo (legacy)', 'self_study', %s, 'Learn', 'weekly')",
                [owner],
            )
        elif r < 0.7:
            conn.execute(
                "UPDATE public.core_project SET name = 'demo update (legacy)', updated_at = now() WHERE id = %s", [pid]
            )
        elif r < 0.85:
            conn.execute(
                "UPDATE public.core_project SET project_type = 'school', course_name = coalesce(course_name, 'C'), "
                "course_code = coalesce(course_code, 'C-1'), teacher_name = coalesce(teacher_name, 'T') "
                "WHERE id = %s AND project_type = 'self_study'",
                [pid],
            )
        else:
            conn.execute("DELETE FROM public.core_project WHERE id = %s", [pid])


@dataclass
class DemoResult:
    database: str
    rows: int
    phases: list[tuple[str, float, str]]
    writer: WriterStats
    quarantined_before_fix: int
    final_state: str
    # The database was created by this demo (it did not exist).
    created_database: bool = False
    # What an earlier run (or, confirmed, someone else) had left under the demo's names, dropped before seeding.
    dropped: list[str] = field(default_factory=list)


def _database_missing(exc: psycopg.OperationalError) -> bool:
    # A connection refused for a missing database carries no SQLSTATE on the client side; the server's words do.
    return "does not exist" in str(exc) and "database" in str(exc)


def ensure_database(dsn: str) -> bool:
    """Create the database `dsn` names when it does not exist (through the server's `postgres` database);
    True when it was created."""
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10):
            return False
    except psycopg.OperationalError as exc:
        if not _database_missing(exc):
            raise OperationalError(f"cannot connect to {mask_dsn(dsn)}: {str(exc).strip().splitlines()[-1]}") from None
    name = str(conninfo_to_dict(dsn).get("dbname") or "")
    try:
        with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(ident(name)))
    except psycopg.Error as exc:
        raise OperationalError(
            f"database {name} does not exist and could not be created: {str(exc).strip().splitlines()[0]}",
            hint="create it, or point --dsn at a database the demo may use",
        ) from None
    return True


def leftovers(conn: psycopg.Connection[Any], spec: Spec) -> list[str]:
    """What the database holds under the names the demo uses: the seed tables, the split tables, the archive, the
    compatibility view, the state schema."""
    wanted = [*SEED_TABLES, *spec.split_tables(), names.archive_name(spec)]
    rows = conn.execute(
        "SELECT c.relname, c.relkind FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relname = ANY (%s) ORDER BY c.relname",
        [wanted],
    ).fetchall()
    found = [f"{'view' if kind == 'v' else 'table'} public.{name}" for name, kind in rows]
    schema = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = %s)", [spec.state_schema]
    ).fetchone()
    if schema and schema[0]:
        found.append(f"schema {spec.state_schema}")
    return found


def made_by_demo(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT pg_catalog.obj_description(pg_catalog.to_regclass('public.auth_user'), 'pg_class')"
    ).fetchone()
    return bool(row and row[0] == DEMO_MARK)


def _drop(conn: psycopg.Connection[Any], found: list[str]) -> None:
    # The state schema first: its trigger functions go with it, and so do the triggers on the tables.
    for item in sorted(found, key=lambda f: not f.startswith("schema ")):
        kind, name = item.split(" ", 1)
        target = ident(*name.split(".", 1))
        conn.execute(sql.SQL("DROP {} IF EXISTS {} CASCADE").format(sql.SQL(kind.upper()), target))


def prepare(dsn: str, spec: Spec, confirm: Callable[[str], None]) -> tuple[bool, list[str]]:
    """Make `dsn`'s database ready for a demo: create it when missing, and drop what a demo left there. Objects of
    the demo's names that a demo did not create are dropped only after `confirm(question)` returns (it raises to
    say no). Returns (database created, what was dropped)."""
    created = ensure_database(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = leftovers(conn, spec)
        if found and not made_by_demo(conn):
            name = conninfo_to_dict(dsn).get("dbname") or "the database"
            confirm(f"database {name} already holds {', '.join(found)}, not created by `migrator demo`: drop them?")
        _drop(conn, found)
    return created, found


def run(
    dsn: str,
    rows: int,
    reporter: Reporter,
    *,
    rate: float = 100.0,
    quiet_period: float = 2.0,
    on_phase: Callable[[str], None] | None = None,
    confirm: Callable[[str], None] | None = None,
) -> DemoResult:
    """Seed the database `dsn` names (see `prepare`; without `confirm`, anything a demo did not create makes it
    refuse), then run every phase (with one rollback and re-advance) under a live writer, ending contracted."""
    spec = load_spec()
    created, dropped = prepare(dsn, spec, confirm or _refuse)
    database = str(conninfo_to_dict(dsn).get("dbname") or "")
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
        conn.execute(sql.SQL("COMMENT ON TABLE public.auth_user IS {}").format(sql.Literal(DEMO_MARK)))
        conn.commit()
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
    return DemoResult(database, rows, phases, stats, quarantined, final, created, dropped)


def _refuse(question: str) -> None:
    raise ConfirmationRequired(f"{question} — not without confirmation", hint="pass a confirm callback that asks")


def _fix_dirty(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "UPDATE public.core_project SET course_name = coalesce(course_name, 'Unnamed course'), "
        "course_code = coalesce(course_code, 'N/A'), teacher_name = coalesce(teacher_name, 'Unknown') "
        "WHERE project_type = 'school' AND (course_name IS NULL OR course_code IS NULL "
        "OR teacher_name IS NULL)"
    )
    conn.execute(
        "UPDATE public.core_project SET goal_description = coalesce(goal_description, 'Unspecified'), "
        "study_frequency = coalesce(study_frequency, 'weekly') WHERE project_type = 'self_study' "
        "AND (goal_description IS NULL OR study_frequency IS NULL)"
    )

"""Health-driven pacing (issue 20): a real backfill, validate and reverse backfill pause while a health signal is
red — a held old transaction, a replication slot retaining WAL, a vacuum, a failing WAL archiver, a signal that
cannot be read — and resume when it clears; the limits are options of every long job."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from migrator.db import Database
from migrator.engine import health
from migrator.engine.context import Context
from migrator.engine.health import Limits
from migrator.phases import backfill, contract, switch_reads, validate
from migrator.phases.backfill import Backfill
from migrator.phases.base import RollbackOptions
from migrator.phases.contract import Contract
from migrator.phases.expand import Expand
from migrator.phases.switch_reads import SwitchReads
from migrator.phases.switch_writes import SwitchWrites
from migrator.phases.validate import Validate
from migrator.seed import seed
from migrator.spec import Spec
from tests.cluster import cluster
from tests.helpers import wait_until


class Collect:
    """A reporter that keeps every step message and the rows copied so far."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.rows = 0

    def step(self, message: str) -> None:
        self.steps.append(message)

    def progress(self, done: int, total: int | None, **fields: Any) -> None:
        self.rows = done


def _start(
    db: Database, spec: Spec, limits: Limits, job: Callable[[Context], None] | None = None
) -> tuple[threading.Thread, Collect, list[BaseException]]:
    """Run `job` (default: a backfill with these limits) in a thread, collecting its reporter's output."""
    reporter, errors = Collect(), []
    job = job or Backfill(backfill.Options(health=limits, batch_size=200)).apply

    def run() -> None:
        try:
            job(Context(spec, db, reporter=reporter))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, reporter, errors


@pytest.fixture
def holder(database_url: str) -> Any:
    """A session whose transaction is already older than one second (a limit of 1 s is then red at once)."""
    conn = psycopg.connect(database_url)
    conn.execute("SELECT pg_catalog.txid_current()")
    time.sleep(1.2)
    yield conn
    conn.close()


@pytest.fixture
def expanded(db: Database, projects_spec: Spec) -> Database:
    """3,000 seeded rows, expanded."""
    with db.connect() as c:
        seed(c, 3000, dirty_ratio=0.0, random_seed=2)
    Expand().apply(Context(projects_spec, db))
    return db


def _paused_then_done(thread: threading.Thread, reporter: Collect, errors: list[BaseException], clear: Any) -> None:
    time.sleep(2.5)
    assert thread.is_alive()
    assert reporter.rows == 0
    assert any(s.startswith("paused:") for s in reporter.steps), reporter.steps
    clear()
    thread.join(120)
    assert not thread.is_alive()
    assert errors == []
    assert reporter.rows >= 3000
    assert any(s.startswith("health green again") for s in reporter.steps)


@pytest.mark.db
def test_an_old_transaction_pauses_the_backfill(expanded: Database, projects_spec: Spec, database_url: str) -> None:
    """A transaction open longer than the limit holds the copy; once it ends, the copy runs to the end."""
    holder = psycopg.connect(database_url)
    holder.execute("SELECT pg_catalog.txid_current()")
    time.sleep(1.2)
    thread, reporter, errors = _start(expanded, projects_spec, Limits(max_transaction_age=1.0))
    try:
        _paused_then_done(thread, reporter, errors, holder.commit)
        assert any("open longer than 1 s" in s for s in reporter.steps)
    finally:
        holder.close()


@pytest.mark.db
def test_a_slot_retaining_wal_pauses_the_backfill(expanded: Database, projects_spec: Spec) -> None:
    """A replication slot holding more WAL than the limit holds the copy; once it is dropped, the copy resumes."""
    slot = f"mt_{uuid.uuid4().hex[:10]}"
    with expanded.connect(autocommit=True) as c:
        c.execute("SELECT pg_catalog.pg_create_physical_replication_slot(%s, true)", [slot])
        c.execute("SELECT pg_catalog.pg_switch_wal()")  # some WAL for it to hold

    def drop() -> None:
        with expanded.connect(autocommit=True) as c:
            c.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", [slot])

    thread, reporter, errors = _start(expanded, projects_spec, Limits(max_lag_bytes=1))
    try:
        _paused_then_done(thread, reporter, errors, drop)
        assert any(f"slot {slot} retains" in s for s in reporter.steps)
    finally:
        with expanded.connect(autocommit=True) as c:
            c.execute(
                "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots "
                "WHERE slot_name = %s",
                [slot],
            )


@pytest.mark.db
def test_an_unreadable_signal_fails_closed_unless_told_otherwise(
    expanded: Database, projects_spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal whose query fails counts as red (the copy waits, saying why) until fail-open is chosen."""

    def broken(conn: psycopg.Connection[Any], _limits: Limits, _tables: Any) -> health.Reading:
        conn.execute("SELECT * FROM pg_catalog.no_such_view")
        raise AssertionError("unreachable")

    monkeypatch.setattr(health, "SIGNALS", (broken,))
    with expanded.connect(autocommit=True) as c:
        red = health.Health(["public.core_project"], Limits()).red(c)
        assert [r.signal for r in red] == ["broken"]
        assert health.Health(["public.core_project"], Limits(fail_open=True)).red(c) == []
    thread, reporter, errors = _start(expanded, projects_spec, Limits(fail_open=True))
    thread.join(120)
    assert errors == []
    assert any("cannot be read" in s and "--health-fail-open" in s for s in reporter.steps)


@pytest.mark.db
def test_sessions_hidden_from_the_role_make_the_old_transaction_signal_unreadable(
    expanded: Database, database_url: str
) -> None:
    """A role without pg_read_all_stats cannot see another role's transaction ages: the signal counts as red and
    its warning names the grant; granted, the same session reads green; fail-open lets the blind role go on."""
    role = f"blind_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(psycopg.sql.Identifier(role)))
    other = psycopg.connect(database_url, autocommit=True)  # the superuser's session: hidden from the role
    url = psycopg.conninfo.make_conninfo(database_url, user=role, password="pw")
    try:
        warnings: list[str] = []
        with psycopg.connect(url, autocommit=True) as blind:
            red = health.Health(["public.core_project"], Limits(), on_change=warnings.append).red(blind)
            assert "old_transaction" in [r.signal for r in red]
            assert any("pg_read_all_stats" in w for w in warnings), warnings
            opened = health.Health(["public.core_project"], Limits(fail_open=True)).red(blind)
            assert "old_transaction" not in [r.signal for r in opened]
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(psycopg.sql.SQL("GRANT pg_read_all_stats TO {}").format(psycopg.sql.Identifier(role)))
        with psycopg.connect(url, autocommit=True) as seeing:
            red = health.Health(["public.core_project"], Limits()).red(seeing)
            assert "old_transaction" not in [r.signal for r in red]
    finally:
        other.close()
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(psycopg.sql.SQL("DROP ROLE IF EXISTS {}").format(psycopg.sql.Identifier(role)))


# -- the limits as options of every long job -------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("command", ["backfill", "validate", "rollback"])
def test_every_long_job_shows_the_health_options_with_their_defaults(run_cli: Any, command: str) -> None:
    """backfill, validate and rollback each take the health limits, and --help shows each default."""
    r = run_cli(command, "--help")
    assert r.exit_code == 0
    text = " ".join(r.stdout.split())
    for option, default in [
        ("--max-transaction-age", "300.0"),
        ("--max-replica-lag-bytes", "1GiB"),
        ("--max-replica-lag-seconds", "30.0"),
    ]:
        assert option in text
        assert f"[default: {default}" in text.split(option, 1)[1][:300], option
    assert "--health-fail-open" in text


@pytest.mark.unit
@pytest.mark.parametrize(
    "args",
    [
        ["--max-replica-lag-bytes", "12XB"],
        ["--max-replica-lag-bytes", "0"],
        ["--max-transaction-age", "0"],
        ["--max-replica-lag-seconds", "nan"],
    ],
)
def test_an_invalid_health_limit_exits_2(run_cli: Any, args: list[str]) -> None:
    """A limit that is not a positive size or number is bad input (exit 2), before any connection."""
    r = run_cli("--dsn", "postgresql://nobody@127.0.0.1:1/x", "backfill", *args)
    assert r.exit_code == 2
    assert args[0] in r.stderr


@pytest.mark.db
def test_the_cli_limit_reaches_the_backfill(
    expanded: Database, database_url: str, migrator_exe: str, holder: psycopg.Connection[Any]
) -> None:
    """`backfill --max-transaction-age 1` pauses behind a held transaction, then finishes once it ends; the pause
    and the resume are audited."""
    proc = subprocess.Popen(
        [migrator_exe, "--json", "--dsn", database_url, "backfill", "--max-transaction-age", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        events = []
        for line in proc.stdout:
            events.append(json.loads(line))
            if events[-1].get("message", "").startswith("paused:"):
                break
        assert "open longer than 1 s" in events[-1]["message"]
        assert not [e for e in events if e.get("event") == "progress"]
        holder.commit()
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert result["state"] == "backfilled"
    assert any("health green again" in json.loads(line).get("message", "") for line in out.splitlines())
    # The pause and its end are in the audit log, in the state the job ran in, naming the signal.
    with expanded.connect(autocommit=True) as c:
        rows = c.execute(
            "SELECT from_state, to_state, details->>'event', details->>'signal', details->>'job' "
            "FROM migrator.transitions WHERE command = 'health' ORDER BY id"
        ).fetchall()
    assert rows == [
        ("dual_write", "dual_write", "paused", "old_transaction", "backfill"),
        ("dual_write", "dual_write", "resumed", "old_transaction", "backfill"),
    ]


@pytest.fixture
def backfilled(expanded: Database, projects_spec: Spec) -> Database:
    """3,000 rows expanded and backfilled."""
    Backfill().apply(Context(projects_spec, expanded))
    return expanded


@pytest.mark.db
def test_an_old_transaction_pauses_validate_and_the_pause_is_audited(
    backfilled: Database, projects_spec: Spec, holder: psycopg.Connection[Any]
) -> None:
    """Validate waits before its first chunk while a transaction is too old, then passes; the audit row says so."""
    job = Validate(validate.Options(health=Limits(max_transaction_age=1.0), chunk_rows=500)).apply
    thread, reporter, errors = _start(backfilled, projects_spec, Limits(), job)
    _paused_then_done(thread, reporter, errors, holder.commit)
    with backfilled.connect(autocommit=True) as c:
        row = c.execute(
            "SELECT details FROM migrator.transitions WHERE command = 'validate' ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert row is not None
    assert row[0]["health_pauses"] >= 1
    assert row[0]["health_paused_seconds"] >= 1.0


@pytest.mark.db
def test_an_old_transaction_pauses_the_reverse_backfill(
    backfilled: Database, projects_spec: Spec, database_url: str
) -> None:
    """Rollback from contracted waits in its reverse backfill while a transaction is too old, then completes."""
    ctx = Context(projects_spec, backfilled)
    Validate().apply(ctx)
    SwitchReads(switch_reads.Options(percent=100)).apply(ctx)
    SwitchWrites().apply(ctx)
    Contract(contract.Options(quiet_period=0)).apply(ctx)
    holder = psycopg.connect(database_url)
    try:
        holder.execute("SELECT pg_catalog.txid_current()")
        time.sleep(1.2)
        opts = RollbackOptions(quiet_period=0, health=Limits(max_transaction_age=1.0))
        thread, reporter, errors = _start(backfilled, projects_spec, Limits(), lambda c: Contract().rollback(c, opts))
        time.sleep(2.5)
        assert thread.is_alive()
        assert any(s.startswith("paused:") and "open longer than 1 s" in s for s in reporter.steps)
        assert not any(s.startswith("reverse backfill:") for s in reporter.steps)
        holder.commit()
        thread.join(120)
        assert errors == []
        assert any(s.startswith("health green again") for s in reporter.steps)
        assert any(s.startswith("reverse backfill:") for s in reporter.steps)
    finally:
        holder.close()


@pytest.mark.db
def test_a_vacuum_on_the_legacy_table_pauses_the_backfill(
    expanded: Database, projects_spec: Spec, database_url: str
) -> None:
    """A VACUUM running on the legacy table (slowed by its cost delay) holds the copy; once it ends, the copy
    runs to the end."""
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute("ALTER TABLE public.core_project SET (autovacuum_enabled = false)")
    vacuum = psycopg.connect(database_url, autocommit=True)
    vacuum.execute("SET vacuum_cost_delay = 100")
    vacuum.execute("SET vacuum_cost_limit = 1")  # every page read sleeps 100 ms: the vacuum lasts while we look
    pid = vacuum.info.backend_pid
    runner = threading.Thread(
        target=lambda: _ignore_cancel(vacuum, "VACUUM (DISABLE_PAGE_SKIPPING) public.core_project")
    )
    runner.start()
    try:
        with psycopg.connect(database_url, autocommit=True) as c:
            running = "SELECT 1 FROM pg_catalog.pg_stat_progress_vacuum WHERE pid = %s"
            assert wait_until(lambda: c.execute(running, [pid]).fetchone() is not None, 10) is not None
        thread, reporter, errors = _start(expanded, projects_spec, Limits())

        def stop_vacuum() -> None:
            with psycopg.connect(database_url, autocommit=True) as c:
                c.execute("SELECT pg_catalog.pg_cancel_backend(%s)", [pid])
            runner.join(10)

        _paused_then_done(thread, reporter, errors, stop_vacuum)
        assert any("vacuum is running on" in s and "core_project" in s for s in reporter.steps), reporter.steps
    finally:
        runner.join(10)
        vacuum.close()


def _ignore_cancel(conn: psycopg.Connection[Any], statement: str) -> None:
    """Run `statement`; a cancel (the test ending it) is the expected way out."""
    with contextlib.suppress(psycopg.errors.QueryCanceled):
        conn.execute(statement)


@pytest.fixture
def failing_archiver() -> Iterator[str]:
    """A cluster of its own with archive_mode on and an archive_command that fails (the test server cannot turn
    archive_mode on without a restart)."""
    yield from cluster(["archive_mode = on", "archive_command = 'exit 1'", "wal_level = replica"])


@pytest.mark.db
def test_a_failing_wal_archiver_pauses_the_backfill(failing_archiver: str, projects_spec: Spec) -> None:
    """While the WAL archiver fails (its last failure newer than its last success) the copy waits; once the
    archive_command works again and the archiver catches up, the copy runs to the end."""
    db = Database(failing_archiver)
    try:
        with db.connect() as c:
            seed(c, 3000, dirty_ratio=0.0, random_seed=4)
        Expand().apply(Context(projects_spec, db))
        with db.connect(autocommit=True) as c:
            c.execute("SELECT pg_catalog.pg_switch_wal()")
            failing = "SELECT failed_count > 0 FROM pg_catalog.pg_stat_archiver"
            assert wait_until(lambda: bool(c.execute(failing).fetchone()[0]), 30) is not None  # type: ignore[index]

        def repair() -> None:
            with db.connect(autocommit=True) as c:
                c.execute("ALTER SYSTEM SET archive_command = 'true'")
                c.execute("SELECT pg_catalog.pg_reload_conf()")
                c.execute("SELECT pg_catalog.pg_switch_wal()")

        thread, reporter, errors = _start(db, projects_spec, Limits())
        _paused_then_done(thread, reporter, errors, repair)
        assert any("the WAL archiver is failing" in s for s in reporter.steps), reporter.steps
    finally:
        db.dispose()

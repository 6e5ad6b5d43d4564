"""The adaptive pace of the long jobs (engine/pace.py): flat out on an idle server, slower when the application is
busier while the job works, short chunks while the application is at work."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from migrator.db import Database
from migrator.engine import pace
from migrator.engine.pace import Pacer
from migrator.seed import seed
from tests.helpers import wait_until


def _feed(pacer: Pacer, seconds: float, working_ms: float, resting_ms: float, t0: float) -> float:
    """Synthetic chunks of 0.1 s every 0.3 s for `seconds`, and samples every SAMPLE_EVERY, each seeing one
    application statement end: taking `working_ms` when it ran into a chunk (or its GRACE), `resting_ms`
    otherwise."""
    period, busy = 0.3, 0.1
    k = 0
    while t0 + k * period < t0 + seconds:
        pacer.chunk(t0 + k * period, t0 + k * period + busy)
        k += 1
    t = t0
    while t < t0 + seconds:
        in_chunk = (t - t0) % period < busy + pace.GRACE
        latency = (working_ms if in_chunk else resting_ms) / 1000
        pacer.observe([(t - latency, t, "update")], 1, 0, now=t)
        t += pace.SAMPLE_EVERY
    return t


@pytest.mark.unit
def test_pacer_cuts_the_duty_when_the_application_is_slower_while_the_job_works() -> None:
    """Application statements twice as slow during chunks as clear of them (its tail then twice its resting tail)
    lower the duty; equal latencies raise it again; while the application works, chunks are short."""
    pacer = Pacer(None)
    pacer.duty, pacer.chunk_scale = 0.5, pace.ACTIVE_CHUNK_SCALE
    # ~5 statements clear of the chunks per 0.3 s: the first comparison once 20 are in
    t = _feed(pacer, 3.2, working_ms=2.0, resting_ms=1.0, t0=time.monotonic())
    assert pacer.duty < 0.5
    assert "application slower" in pacer.reason
    assert pacer.chunk_scale == pace.ACTIVE_CHUNK_SCALE
    t = _feed(pacer, 1.2, working_ms=2.0, resting_ms=1.0, t0=t)
    cut = pacer.duty
    _feed(pacer, 5.0, working_ms=1.0, resting_ms=1.05, t0=t)  # past RECENT: the slow statements age out
    assert pacer.duty > cut
    assert "unaffected" in pacer.reason
    assert pacer.chunk_scale == pace.ACTIVE_CHUNK_SCALE


@pytest.mark.unit
def test_pacer_judges_each_kind_of_statement_so_slowed_writes_among_many_reads_count() -> None:
    """Two fast reads and a write per request, one write in 40 slowed while the job works: under 1% of all the
    statements (their tail unchanged) but the writes' tail 5x, and the requests wait on their writes: the duty is
    cut, and the reason names the statements."""
    pacer = Pacer(None)
    pacer.duty, pacer.chunk_scale = 0.5, pace.ACTIVE_CHUNK_SCALE
    t, writes = time.monotonic(), 0

    def sample(slowed: bool) -> None:
        nonlocal t, writes
        writes += 1
        write_ms = 5.0 if slowed and writes % 40 == 0 else 1.0
        ended = [(t - 0.0003, t, "select"), (t - 0.0003, t, "select"), (t - write_ms / 1000, t, "with")]
        pacer.observe(ended, 1, 0, now=t)
        t += pace.SAMPLE_EVERY

    for _ in range(int(4.0 / pace.SAMPLE_EVERY)):  # no chunks: every statement rests
        sample(slowed=False)
    before = pacer.duty
    assert "unaffected" in pacer.reason
    pacer.chunk(t, t + 3.5)
    for _ in range(int(3.5 / pace.SAMPLE_EVERY)):
        sample(slowed=True)
    assert pacer.duty < before, pacer.describe()
    assert "application slower" in pacer.reason
    assert "WITH statements" in pacer.reason


@pytest.mark.unit
def test_a_statement_seen_running_counts_even_when_its_end_is_never_seen() -> None:
    """A write seen running in two samples, its backend then seen idle after a later read: the write counts with at
    least the time it was seen running, and its kind; a statement seen running and then idle counts once."""
    pacer = Pacer(None)
    ended: list[tuple[float, float, str]] = []
    pacer._sighted(7, True, "t1", 0.004, "with", 100.0, ended)
    pacer._sighted(7, True, "t1", 0.029, "with", 100.025, ended)
    assert ended == []
    pacer._sighted(7, False, "t2", 0.010, "select", 100.050, ended)  # went on to a read, now idle
    assert ended == [(pytest.approx(99.996), 100.025, "with")]
    pacer._sighted(8, True, "t3", 0.001, "update", 100.0, ended)
    pacer._sighted(8, False, "t3", 0.020, "update", 100.025, ended)  # seen ending: the sampler counts it itself
    assert len(ended) == 1


@pytest.mark.unit
def test_pacer_starts_slow_again_when_the_application_starts_working_after_an_idle_spell() -> None:
    """Full speed while nothing else runs; the first second the application works, the duty drops to the slow
    start and chunks turn short, before any comparison of tails."""
    pacer = Pacer(None)
    t = time.monotonic()
    for _ in range(int(2 / pace.SAMPLE_EVERY)):
        pacer.observe([], 0, 0, now=t)
        t += pace.SAMPLE_EVERY
    assert pacer.duty == 1.0, pacer.describe()
    assert pacer.chunk_scale == 1.0
    for _ in range(int(1.2 / pace.SAMPLE_EVERY)):
        pacer.observe([(t - 0.001, t, "select")], 1, 0, now=t)
        t += pace.SAMPLE_EVERY
    assert pacer.duty <= pace.INITIAL_DUTY, pacer.describe()
    assert pacer.chunk_scale == pace.ACTIVE_CHUNK_SCALE


@pytest.mark.db
def test_pacer_runs_flat_out_when_no_other_session_is_active(db: Database) -> None:
    """With only the job on the server the sampler finds nobody to slow down, and the duty goes to 100%."""
    stop = threading.Event()
    with Pacer(lambda: db.raw_connect(autocommit=True)) as pacer:
        assert pacer.duty == pace.INITIAL_DUTY

        def chunks() -> None:
            while not stop.is_set():
                with pacer.working():
                    time.sleep(0.02)
                pacer.rest(0.02, stop)

        worker = threading.Thread(target=chunks, daemon=True)
        worker.start()
        try:
            assert wait_until(lambda: pacer.duty == 1.0, timeout=5.0) is not None, pacer.describe()
        finally:
            stop.set()
            worker.join(5)
    assert "no other sessions at work" in pacer.describe()
    assert pacer.chunk_scale == 1.0


@pytest.mark.db
def test_pacer_shortens_chunks_when_an_application_session_waits_on_the_jobs_lock(
    db: Database, database_url: str
) -> None:
    """An app UPDATE blocked behind a row lock held by a migrator session cuts the duty; chunks stay short."""
    with db.connect(autocommit=True) as setup:
        setup.execute("CREATE TABLE public.pace_t (id int PRIMARY KEY, v int)")
        setup.execute("INSERT INTO public.pace_t VALUES (1, 0)")
    job = db.raw_connect()  # application_name migrator: the tool's own session
    app = psycopg.connect(database_url, autocommit=True, application_name="app")
    try:
        job.execute("UPDATE public.pace_t SET v = 1 WHERE id = 1")  # holds the row lock, transaction open
        blocked = threading.Thread(target=lambda: app.execute("UPDATE public.pace_t SET v = 2 WHERE id = 1"))
        blocked.start()
        with Pacer(lambda: db.raw_connect(autocommit=True)) as pacer:
            with pacer.working():
                assert wait_until(lambda: pacer.duty < pace.INITIAL_DUTY, timeout=5.0) is not None, pacer.describe()
            assert pacer.chunk_scale == pace.ACTIVE_CHUNK_SCALE
            assert "waited on the job's locks" in pacer.reason
        job.rollback()
        blocked.join(5)
    finally:
        job.close()
        app.close()


@pytest.mark.db
def test_backfill_reports_its_pace_and_full_speed_turns_it_off(db: Database, database_url: str, run_cli: Any) -> None:
    """Each JSON progress line of a backfill carries the pace; with --full-speed it says the pace is off."""
    with db.connect() as c:
        seed(c, 2_000, dirty_ratio=0.0, random_seed=5)
    assert run_cli("--dsn", database_url, "--yes", "expand").exit_code == 0
    r = run_cli("--dsn", database_url, "--json", "backfill", "--full-speed")
    assert r.exit_code == 0, r.stderr
    paces = [e["pace"] for e in map(json.loads, r.stdout.splitlines()) if e.get("event") == "progress"]
    assert paces
    assert set(paces) == {"duty 100%: full speed (--full-speed)"}


@pytest.mark.db
def test_pacer_blind_to_other_roles_sessions_keeps_to_the_slow_start(db: Database, database_url: str) -> None:
    """Sampling as a role that may not see another role's statements (no pg_read_all_stats), the pacer does not take
    the busy application for an idle server: it holds the slow start and names the grant that fixes it."""
    role = f"blind_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'blind-pw'").format(sql.Identifier(role)))
    stop = threading.Event()

    def application() -> None:
        with psycopg.connect(database_url, autocommit=True, application_name="app") as app:
            while not stop.is_set():
                app.execute("SELECT pg_catalog.pg_sleep(0.005)")

    busy = threading.Thread(target=application, daemon=True)
    busy.start()
    url = make_conninfo(database_url, user=role, password="blind-pw")
    try:
        with Pacer(lambda: psycopg.connect(url, autocommit=True, application_name="migrator")) as pacer:
            assert wait_until(lambda: pacer.decisions >= 2, timeout=10.0) is not None, pacer.describe()
            assert pacer.duty <= pace.INITIAL_DUTY, pacer.describe()
            assert pacer.chunk_scale == pace.ACTIVE_CHUNK_SCALE
            assert "pg_read_all_stats" in pacer.reason
    finally:
        stop.set()
        busy.join(5)
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _spans_of_two_workers(pacer: Pacer) -> list[tuple[float, float]]:
    """Two threads each run three 30 ms chunks through `pacer.working()`; the (start, end) of every chunk."""
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(3):
            with pacer.working():
                start = time.monotonic()
                time.sleep(0.03)
                with lock:
                    spans.append((start, time.monotonic()))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sorted(spans)


@pytest.mark.unit
def test_while_the_application_works_the_workers_chunks_run_one_at_a_time() -> None:
    """Paced for a working application, two workers' chunks never overlap (two at once held both cores of a
    2-core box); at full speed they do."""
    pacer = Pacer(None)
    pacer.chunk_scale = pace.ACTIVE_CHUNK_SCALE
    spans = _spans_of_two_workers(pacer)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    full = _spans_of_two_workers(Pacer(None))
    assert any(a[1] > b[0] for a, b in itertools.pairwise(full))


@pytest.mark.unit
def test_the_tail_weighs_each_statement_by_the_samples_it_stands_for() -> None:
    """Resting statements seen by sparse samples (each standing for 4 dense ones) and a few slowed ones seen densely
    around the chunks: the tail is that of what ran (0.5% slowed: the resting latency), not of where the sampler
    looked (1.8% of the statements seen); with every weight 1 it is the plain quantile."""
    resting, near, slowed = [(0.001, 4.0)] * 300, [(0.001, 1.0)] * 20, [(0.003, 1.0)] * 6
    assert pace.tail(resting + near + slowed) == 0.001
    assert pace.tail([(lat, 1.0) for lat, _ in resting + near + slowed]) == 0.003
    plain = [float(i) for i in range(250)]
    assert pace.tail([(x, 1.0) for x in plain]) == sorted(plain)[int(len(plain) * pace.TAIL)]
    assert pace.count(resting + near) == 1220


@pytest.mark.db
def test_the_sampler_looks_densely_only_around_the_jobs_chunks(db: Database) -> None:
    """While the job rests the sampler reads pg_stat_activity every SPARSE_EVERY (reading it costs the application's
    requests), and every SAMPLE_EVERY while a chunk runs: at least twice as many samples in the same time."""
    with Pacer(lambda: db.raw_connect(autocommit=True)) as pacer:
        assert wait_until(lambda: pacer.samples >= 1, timeout=5.0) is not None
        start = pacer.samples
        time.sleep(1.0)
        resting = pacer.samples - start
        with pacer.working():
            start = pacer.samples
            time.sleep(1.0)
            working = pacer.samples - start
    assert resting <= 1.0 / pace.SPARSE_EVERY + 2, (resting, working)
    assert working >= 2 * resting, (resting, working)

"""`migrator status` shows the long job running now (migrator.jobs): rows done, rate, pace, and the health signal
holding it back, from another process; the row goes when the job ends, and a job killed outright shows as stale."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import psycopg
import pytest

from migrator.db import Database
from migrator.engine.context import Context
from migrator.phases.expand import Expand
from migrator.seed import seed
from migrator.spec import Spec
from tests.helpers import wait_until


@pytest.fixture
def expanded(db: Database, projects_spec: Spec) -> Database:
    """3,000 seeded rows, expanded."""
    with db.connect() as c:
        seed(c, 3000, dirty_ratio=0.0, random_seed=3)
    Expand().apply(Context(projects_spec, db))
    return db


def _jobs(migrator_exe: str, database_url: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [migrator_exe, "--json", "--dsn", database_url, "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    jobs = json.loads(out.stdout.strip().splitlines()[-1])["details"]["jobs"]
    assert isinstance(jobs, list)
    return jobs


@pytest.mark.db
def test_status_shows_the_running_backfill_with_its_pace_and_rate(
    expanded: Database, database_url: str, migrator_exe: str
) -> None:
    """While a backfill runs in another process, status shows its rows done of the total, its rate and its pace;
    stopped by SIGTERM, the job clears its row on the way out and no job is listed."""
    # 150 rows/s makes a 20 s job: a wide window for a status run that takes seconds on a loaded CI machine.
    proc = subprocess.Popen(
        [migrator_exe, "--json", "--dsn", database_url, "backfill", "--max-rows-per-second", "150"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        found: list[dict[str, Any]] = []

        def running() -> bool:
            found[:] = [j for j in _jobs(migrator_exe, database_url) if j["rows_per_second"] and j["done"]]
            return bool(found)

        assert wait_until(running, 60) is not None
        seen = found[0]
        assert seen["job"] == "backfill"
        assert 0 < seen["done"] < 3000
        assert seen["total"] >= 2900
        assert 0 < seen["rows_per_second"] < 1000  # capped at 150 rows/s
        assert seen["pace"]
        assert "duty" in seen["pace"]
        assert seen["held_by"] is None
        assert seen["stale"] is False
        proc.terminate()
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 143, err
    assert _jobs(migrator_exe, database_url) == []


@pytest.mark.db
def test_status_names_the_signal_that_holds_the_job_and_a_dead_job_as_stale(
    expanded: Database, database_url: str, migrator_exe: str, run_cli: Any
) -> None:
    """A backfill paused by a held transaction shows in status as paused, naming the signal; killed outright, its
    row stays, and once not heard from for a minute status says the job may have died."""
    holder = psycopg.connect(database_url)
    holder.execute("SELECT pg_catalog.txid_current()")
    time.sleep(1.2)
    proc = subprocess.Popen(
        [migrator_exe, "--json", "--dsn", database_url, "backfill", "--max-transaction-age", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if json.loads(line).get("message", "").startswith("paused:"):
                break
        (job,) = _jobs(migrator_exe, database_url)
        assert job["job"] == "backfill"
        assert "open longer than 1 s" in job["held_by"]
        text = run_cli("--dsn", database_url, "status")
        assert text.exit_code == 0
        assert "running: backfill" in text.stdout
        assert "paused: 1 transaction(s) open longer than 1 s" in text.stdout
    finally:
        proc.kill()  # SIGKILL: no chance to clear its row
        proc.wait()
        holder.close()
    (job,) = _jobs(migrator_exe, database_url)
    assert job["stale"] is False
    with expanded.connect(autocommit=True) as c:
        c.execute("UPDATE migrator.jobs SET updated_at = now() - interval '5 minutes'")
    (job,) = _jobs(migrator_exe, database_url)
    assert job["stale"] is True
    text = run_cli("--dsn", database_url, "status")
    assert "the job may have died" in text.stdout

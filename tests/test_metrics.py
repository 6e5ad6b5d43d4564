"""Prometheus metrics of the long jobs (issue 20): the endpoint of a running backfill is scraped over HTTP and parsed
with prometheus_client's own parser, and the node-exporter textfile holds the row counts when the job ends."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from migrator.db import Database
from migrator.engine.context import Context
from migrator.engine.health import Reading
from migrator.metrics import Metrics
from migrator.phases.backfill import Backfill
from migrator.phases.expand import Expand
from migrator.seed import seed
from migrator.spec import Spec

ROWS = 3000


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, keyed by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def expanded(db: Database, projects_spec: Spec) -> Database:
    """3,000 clean seeded rows, expanded."""
    with db.connect() as c:
        seed(c, ROWS, dirty_ratio=0.0, random_seed=3)
    Expand().apply(Context(projects_spec, db))
    return db


@pytest.mark.db
def test_a_running_backfill_serves_its_metrics_and_writes_the_textfile(
    expanded: Database, database_url: str, migrator_exe: str, tmp_path: Path
) -> None:
    """Scraped while a held transaction pauses it: throttled on that signal, running, nothing copied; the textfile
    written at the end holds every row copied, the chunk histogram and the state reached."""
    port, prom = _free_port(), tmp_path / "migrator.prom"
    holder = psycopg.connect(database_url)
    holder.execute("SELECT pg_catalog.txid_current()")
    time.sleep(1.2)
    argv = [migrator_exe, "--json", "--dsn", database_url, "backfill", "--max-transaction-age", "1"]
    argv += ["--metrics-port", str(port), "--metrics-address", "127.0.0.1", "--metrics-file", str(prom)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if json.loads(line).get("message", "").startswith("paused:"):
                break
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            during = _samples(response.read().decode())
        holder.commit()
        _out, err = proc.communicate(timeout=120)
    finally:
        holder.close()
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert during[("migrator_throttled", (("signal", "old_transaction"),))] == 1
    assert during[("migrator_throttled", (("signal", "vacuum"),))] == 0
    assert during[("migrator_job_running", (("job", "backfill"),))] == 1
    assert during.get(("migrator_rows_copied_total", (("job", "backfill"),)), 0) == 0
    info = [labels for (name, labels) in during if name == "migrator_migration_info"]
    assert ("state", "dual_write") in info[0]
    assert ("migrator_replication_lag_bytes", ()) in during

    after = _samples(prom.read_text())
    assert after[("migrator_rows_copied_total", (("job", "backfill"),))] == ROWS
    assert after[("migrator_rows_done", (("job", "backfill"),))] == ROWS
    assert after[("migrator_chunk_duration_seconds_count", (("job", "backfill"),))] >= 1
    assert after[("migrator_throttled", (("signal", "old_transaction"),))] == 0
    assert after[("migrator_job_running", (("job", "backfill"),))] == 0
    assert after[("migrator_job_exit_code", (("job", "backfill"),))] == 0
    info = [labels for (name, labels) in after if name == "migrator_migration_info"]
    assert ("state", "backfilled") in info[0]
    assert not list(tmp_path.glob("migrator.prom.*")), "the temporary file was renamed over the textfile"


@pytest.mark.db
def test_validate_writes_the_rows_it_validated(
    expanded: Database, projects_spec: Spec, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    """`validate --metrics-file` leaves the rows validated and one histogram sample per chunk."""
    Backfill().apply(Context(projects_spec, expanded))
    prom = tmp_path / "validate.prom"
    r = run_cli("--dsn", database_url, "validate", "--chunk-rows", "1000", "--metrics-file", str(prom))
    assert r.exit_code == 0, r.stderr
    after = _samples(prom.read_text())
    assert after[("migrator_rows_validated_total", (("job", "validate"),))] == ROWS
    assert after[("migrator_chunk_duration_seconds_count", (("job", "validate"),))] == 3
    assert after.get(("migrator_rows_copied_total", (("job", "validate"),)), 0) == 0
    assert after[("migrator_job_exit_code", (("job", "validate"),))] == 0


@pytest.mark.unit
def test_cumulative_progress_is_counted_per_pass() -> None:
    """Progress lines that carry a running total (validate, both reverse passes) add only what is new."""
    metrics = Metrics()
    for done in (300, 700):
        metrics.event("progress", job="rollback", done=done, total=None, phase="reverse backfill: insert")
    for done in (50, 80):
        metrics.event("progress", job="rollback", done=done, total=None, phase="reverse backfill: update")
    metrics.event("health", readings=[Reading("replication_lag", True, "x", {"lag_bytes": 42.0})])
    samples = _samples(_exposition(metrics))
    assert samples[("migrator_rows_copied_total", (("job", "reverse_backfill"),))] == 780
    assert samples[("migrator_throttled", (("signal", "replication_lag"),))] == 1
    assert samples[("migrator_replication_lag_bytes", ())] == 42


def _exposition(metrics: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


@pytest.mark.unit
def test_a_busy_metrics_port_exits_3_naming_it(run_cli: Any) -> None:
    """A port another process holds is an operational error (exit 3), before any connection."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_cli(
            "--dsn",
            "postgresql://nobody@127.0.0.1:1/x",
            "backfill",
            "--metrics-port",
            str(port),
            "--metrics-address",
            "127.0.0.1",
        )
    assert r.exit_code == 3
    assert "cannot serve or write the metrics" in r.stderr


@pytest.mark.unit
def test_the_readme_lists_every_metric() -> None:
    """README's Observability section names every metric family a job exposes, each prefixed migrator_."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Observability", 1)[1].split("\n## ", 1)[0]
    families = {m.name for m in Metrics().registry.collect()}
    assert families
    for name in families:
        assert name.startswith("migrator_")
        shown = f"{name}_info" if name == "migrator_migration" else name
        shown = f"{name}_total" if f"`{name}_total`" in section else shown
        assert f"`{shown}`" in section, name

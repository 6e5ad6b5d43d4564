"""`migrator report` (migrator.report): storage per side from the catalog, the seed's queries timed on both schemas
with EXPLAIN (ANALYZE, BUFFERS), and the seed's expectations with verdicts; refused before both sides are full."""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from migrator import report
from migrator.db import Database
from migrator.errors import WrongState
from migrator.seed import seed
from migrator.spec import Spec, load_spec
from tests.conftest import Server
from tests.test_json_contract import check
from tests.test_modelgen import advance, scratch_database


@pytest.fixture(scope="module")
def backfilled(pg_server: Server) -> Iterator[tuple[str, report.Report]]:
    """3,000 clean rows expanded and backfilled, measured once (the tests only read the report)."""
    with scratch_database(pg_server) as url:
        db = Database(url)
        try:
            with db.connect() as c:
                seed(c, 3000, dirty_ratio=0.0, random_seed=8)
            spec = load_spec()
            advance(db, spec, "backfilled")
            yield url, report.measure(db, spec, runs=3, analyze=True)
        finally:
            db.dispose()


@pytest.mark.db
def test_storage_per_side_from_the_catalog(backfilled: Any) -> None:
    """Each side lists its tables with heap, TOAST and every index; totals add up and the change is their ratio."""
    url, rep = backfilled
    d = rep.as_dict()
    legacy, split = d["storage"]["legacy"], d["storage"]["split"]
    assert [r["name"] for r in legacy["relations"]] == ["core_project"]
    assert [r["name"] for r in split["relations"]] == [
        "projects",
        "school_projects",
        "self_study_projects",
        "project_meta",
    ]
    assert "core_project_pkey" in legacy["relations"][0]["indexes"]
    assert "projects_created_at_idx" in split["relations"][0]["indexes"]
    with psycopg.connect(url) as c:
        row = c.execute(
            "SELECT pg_total_relation_size('public.projects'), pg_relation_size('public.projects')"
        ).fetchone()
    assert (split["relations"][0]["total"], split["relations"][0]["heap"]) == row
    for side in (legacy, split):
        assert side["total"] == sum(r["total"] for r in side["relations"])
        assert side["indexes"] == sum(sum(r["indexes"].values()) for r in side["relations"])
        assert side["heap"] + side["toast"] + side["indexes"] <= side["total"]
    assert d["storage"]["change_pct"] == round((split["total"] - legacy["total"]) / legacy["total"] * 100, 1)
    assert legacy["relations"][0]["rows"] == 3000


@pytest.mark.db
def test_query_set_timed_on_both_schemas(backfilled: Any) -> None:
    """The seed's four reads run on both sides, N runs each with the median reported; the owner's projects take
    two round trips on the split side (prefetch), and the drafts batch uses the partial index, not a seq scan."""
    _, rep = backfilled
    by_name = {q.name: q for q in rep.queries}
    assert list(by_name) == ["count_by_type", "school_projects_listing", "owner_projects", "abandoned_drafts"]
    for q in rep.queries:
        for t in (q.legacy, q.split):
            assert len(t.runs_ms) == 3
            assert t.median_ms == round(statistics.median(t.runs_ms), 3)
            assert t.median_ms > 0
            assert t.shared_hit + t.shared_read > 0
            assert t.scans
    assert (by_name["owner_projects"].legacy.statements, by_name["owner_projects"].split.statements) == (1, 2)
    assert any("project_meta" in s for s in by_name["owner_projects"].split.scans)
    drafts = by_name["abandoned_drafts"]
    assert any("projects_created_at_idx" in s for s in drafts.split.scans), drafts.split.scans
    assert not any(s.startswith("Seq Scan") for s in drafts.split.scans)
    assert any(s == "Seq Scan on core_project" for s in drafts.legacy.scans)


@pytest.mark.db
def test_expectations_carry_measured_figures(backfilled: Any) -> None:
    """Every seed claim has the measured figure and a verdict; the storage verdict follows the measured change."""
    _, rep = backfilled
    claims = {e.claim: e for e in rep.expectations}
    assert set(claims) >= {"storage", "query count_by_type", "queries overall (geometric mean)", "draft cleanup"}
    change = report._pct(rep.split.total, rep.legacy.total)
    assert claims["storage"].measured.startswith(f"{change:+.1f}%")
    assert claims["storage"].verdict == report._verdict(change, report.EXPECTED_STORAGE)
    assert claims["draft cleanup"].verdict == "met"
    assert all(e.verdict in ("met", "partly met", "not met") for e in rep.expectations)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("measured", "verdict"),
    [(-30.0, "met"), (-15.0, "met"), (-10.0, "partly met"), (0.0, "not met"), (41.0, "not met")],
)
def test_verdicts(measured: float, verdict: str) -> None:
    """Within or beyond the claimed gain is met, a smaller gain partly met, no gain or a loss not met."""
    assert report._verdict(measured, report.EXPECTED_STORAGE) == verdict


@pytest.mark.db
def test_refused_before_backfilled(db: Database, projects_spec: Spec) -> None:
    """Before the backfill the split side is incomplete: the report refuses (WrongState) naming the next step."""
    with db.connect() as c:
        seed(c, 50)
    advance(db, projects_spec, "dual_write")
    with pytest.raises(WrongState, match="backfilled"):
        report.measure(db, projects_spec, runs=1)


@pytest.mark.db
def test_report_command_json(run_cli: Any, backfilled: Any, database_url: str) -> None:
    """`migrator --json report` ends with one result holding storage, queries and expectations; on a database
    that is not backfilled it exits 1 with wrong_state."""
    url, _ = backfilled
    r = check(run_cli("--dsn", url, "--json", "report", "--runs", "1", "--query", "count_by_type"), "report", 0)
    details = r["details"]
    assert [q["name"] for q in details["queries"]] == ["count_by_type"]
    assert details["storage"]["legacy"]["total"] > 0
    assert {e["claim"] for e in details["expectations"]} >= {"storage", "query count_by_type"}
    assert r["state"] == "backfilled"
    bad = check(run_cli("--dsn", database_url, "--json", "report"), "report", 1)
    assert bad["error"]["code"] == "wrong_state"


@pytest.mark.db
def test_report_command_renders_tables(run_cli: Any, backfilled: Any) -> None:
    """Without --json the command prints the storage, query and expectation tables."""
    url, _ = backfilled
    r = run_cli("--dsn", url, "report", "--runs", "1", "--query", "abandoned_drafts")
    assert r.exit_code == 0, r.stderr
    for text in ("storage", "abandoned_drafts", "the seed's expectations", "draft cleanup"):
        assert text in r.stdout


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.db
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian package chromium)")
def test_html_page_renders_charts_in_chromium(run_cli: Any, backfilled: Any, tmp_path: Path) -> None:
    """`report --html FILE` writes one self-contained page; headless Chromium lays out every non-empty bar of the
    storage and query charts (the page's own script counts drawn bars) and shows the verdicts."""
    url, _ = backfilled
    page = tmp_path / "report.html"
    r = check(run_cli("--dsn", url, "--json", "report", "--runs", "1", "--html", str(page)), "report", 0)
    assert r["details"]["html"] == str(page)
    text = page.read_text()
    assert "http://" not in text
    assert "https://" not in text
    assert "<script src" not in text
    details = r["details"]
    storage = details["storage"]
    expected = sum(1 for side in ("legacy", "split") for p in ("heap", "toast", "indexes") if storage[side][p] > 0)
    expected += sum(1 for q in details["queries"] for side in ("legacy", "split") if q[side]["median_ms"] > 0)
    assert CHROMIUM is not None
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rendered = re.search(r'data-bars-rendered="(\d+)"', dom)
    assert rendered is not None, dom[:500]
    assert int(rendered.group(1)) == expected > 6
    assert 'data-chart="storage"' in dom
    assert all(f'data-chart="query-{q["name"]}"' in dom for q in details["queries"])
    assert "The seed's expectations" in dom
    assert dom.count('class="verdict"') == len(details["expectations"])

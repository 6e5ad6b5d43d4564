"""`migrator validate` vs reladiff on the same tables, measured in one run on the same server.

Seeds a scratch database, expands and backfills it, then compares the same two legacy-shaped views three ways:
  (a) migrator's validation (run_validation: chunk hashes, every check, the quarantine summary);
  (b) reladiff on two views (legacy_normalized and split_as_legacy from views.py, open quarantine left out as
      validate leaves it out), by key, every column (-c %) — the equivalent job;
  (c) reladiff comparing the keys only (its default without -c), for reference;
  (d) one SQL statement: a FULL JOIN of the two views, the floor for "read everything once".
Prints the median of --runs runs of each and the ratios (goal: reladiff / migrator >= 5).

    python bench/validate.py --rows 200000
    python bench/validate.py --rows 1000000 --compare-hashes
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_DSN, median, scratch_database  # noqa: E402

from migrator.db import Database  # noqa: E402
from migrator.engine.context import Context  # noqa: E402
from migrator.phases import backfill  # noqa: E402
from migrator.phases.backfill import Backfill  # noqa: E402
from migrator.phases.expand import Expand  # noqa: E402
from migrator.seed import seed  # noqa: E402
from migrator.spec import Spec, load_spec  # noqa: E402
from migrator.sqlgen import names, views  # noqa: E402
from migrator.sqlgen.compose import ident  # noqa: E402
from migrator.verify.runner import DEFAULT_CHUNK_ROWS, DEFAULT_WORKERS, run_validation  # noqa: E402

LEGACY_VIEW, SPLIT_VIEW = "bench_legacy_normalized", "bench_split_as_legacy"


def create_views(conn: psycopg.Connection[Any], spec: Spec) -> None:
    """The two SELECTs validate compares, as views reladiff can read; open quarantine keys left out."""
    q = names.state(spec, "quarantine")
    for view, select in ((LEGACY_VIEW, views.legacy_normalized(spec)), (SPLIT_VIEW, views.split_as_legacy(spec))):
        conn.execute(
            sql.SQL(
                "CREATE VIEW {v} AS SELECT * FROM ({s}) AS x WHERE NOT EXISTS (SELECT 1 FROM {q} AS q "
                "WHERE q.migration = {m} AND q.key = x.{pk}::text AND q.resolved_at IS NULL)"
            ).format(v=ident(view), s=select, q=q, m=sql.Literal(spec.migration_name), pk=ident(spec.pk))
        )


def full_join_sql(spec: Spec) -> sql.Composed:
    return sql.SQL(
        "SELECT count(*) FROM {a} AS a FULL JOIN {b} AS b ON a.{pk} = b.{pk} "
        "WHERE a.{pk} IS NULL OR b.{pk} IS NULL OR a IS DISTINCT FROM b"
    ).format(a=ident(LEGACY_VIEW), b=ident(SPLIT_VIEW), pk=ident(spec.pk))


def reladiff_exe() -> str:
    exe = Path(sys.executable).parent / "reladiff"
    found = str(exe) if exe.exists() else shutil.which("reladiff")
    if not found:
        raise SystemExit("reladiff is not installed: pip install 'reladiff[postgresql]'")
    return found


def url(dsn: str) -> str:
    """reladiff takes URLs only; scratch_database hands out key=value DSNs."""
    p = conninfo_to_dict(dsn)
    auth = quote(str(p.get("user", ""))) + (f":{quote(str(p['password']))}" if p.get("password") else "")
    host = f"{p.get('host', 'localhost')}" + (f":{p['port']}" if p.get("port") else "")
    return f"postgresql://{auth + '@' if auth else ''}{host}/{p.get('dbname', '')}"


def run_reladiff(dsn: str, spec: Spec, *, all_columns: bool, algorithm: str) -> tuple[float, str]:
    cmd = [reladiff_exe(), url(dsn), LEGACY_VIEW, SPLIT_VIEW, "-k", spec.pk, "-s", "-a", algorithm]
    if all_columns:
        cmd += ["-c", "%"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0 or "rows unchanged" not in proc.stdout:
        raise RuntimeError(f"reladiff exited {proc.returncode}:\n{proc.stdout[-1000:]}\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def compare_hashes(conn: psycopg.Connection[Any], spec: Spec) -> dict[str, float]:
    """Seconds for one pass over the legacy side with each candidate row hash (how the chunk hash was chosen)."""
    src = sql.SQL("({}) AS x").format(views.legacy_normalized(spec))
    candidates = {
        "sum(hash_record_extended(row))": sql.SQL("SELECT sum(hash_record_extended(x, 0)) FROM {}").format(src),
        "sum(hashtextextended(row::text))": sql.SQL("SELECT sum(hashtextextended(x::text, 0)) FROM {}").format(src),
        "md5(string_agg(row::text ORDER BY key))": sql.SQL(
            "SELECT md5(string_agg(x::text, '' ORDER BY x.{})) FROM {}"
        ).format(ident(spec.pk), src),
    }
    out = {}
    conn.execute("SET max_parallel_workers_per_gather = 0")
    for label, query in candidates.items():
        t0 = time.perf_counter()
        conn.execute(query)
        out[label] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", default=DEFAULT_DSN, help="server to create the scratch database on")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="validate's parallel chunk workers")
    ap.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS)
    ap.add_argument("--reladiff-algorithm", default="auto", choices=["auto", "joindiff", "hashdiff"])
    ap.add_argument("--skip-keys-only", action="store_true", help="skip reladiff's keys-only comparison")
    ap.add_argument("--compare-hashes", action="store_true", help="also time the candidate row hashes")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    spec = load_spec()

    with scratch_database(args.dsn, "bench_validate") as dsn:
        db = Database(dsn)
        t0 = time.perf_counter()
        with db.connect() as c:
            seed(c, args.rows, dirty_ratio=0.05, random_seed=1)
        Expand().apply(Context(spec, db))
        Backfill(backfill.Options()).apply(Context(spec, db))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            create_views(conn, spec)
        print(f"setup: {args.rows:,} rows seeded, expanded, backfilled in {time.perf_counter() - t0:.1f} s", flush=True)

        runs: dict[str, list[float]] = {"migrator": [], "reladiff": [], "reladiff_keys": [], "full_join": []}
        for i in range(args.runs):
            t = time.perf_counter()
            result = run_validation(db, spec, chunk_rows=args.chunk_rows, workers=args.workers)
            runs["migrator"].append(time.perf_counter() - t)
            assert result.ok, result.summary()
            seconds, out = run_reladiff(dsn, spec, all_columns=True, algorithm=args.reladiff_algorithm)
            runs["reladiff"].append(seconds)
            assert "0 rows updated" in out, out
            if not args.skip_keys_only:
                runs["reladiff_keys"].append(
                    run_reladiff(dsn, spec, all_columns=False, algorithm=args.reladiff_algorithm)[0]
                )
            with psycopg.connect(dsn, autocommit=True) as conn:
                t = time.perf_counter()
                differing = conn.execute(full_join_sql(spec)).fetchone()
                runs["full_join"].append(time.perf_counter() - t)
            assert differing == (0,), differing
            line = ", ".join(f"{k} {v[-1]:.2f} s" for k, v in runs.items() if v)
            print(f"run {i + 1}: {line}", flush=True)
        hashes = {}
        if args.compare_hashes:
            with psycopg.connect(dsn, autocommit=True) as conn:
                hashes = compare_hashes(conn, spec)
        db.dispose()

    med = {k: median(v) for k, v in runs.items() if v}
    summary = {
        "rows": args.rows,
        "runs": args.runs,
        "workers": args.workers,
        "median_seconds": {k: round(v, 3) for k, v in med.items()},
        "ratio_reladiff_all_columns": round(med["reladiff"] / med["migrator"], 2),
        "ratio_reladiff_keys_only": round(med["reladiff_keys"] / med["migrator"], 2)
        if "reladiff_keys" in med
        else None,
        "migrator_vs_full_join": round(med["migrator"] / med["full_join"], 2),
        "hash_pass_seconds": {k: round(v, 3) for k, v in hashes.items()},
    }
    if args.json:
        print(json.dumps(summary))
        return
    print(f"\n{args.rows:,} rows, median of {args.runs}:")
    print(f"  migrator validate            {med['migrator']:7.2f} s   (every check; {args.workers} worker(s))")
    print(f"  reladiff, every column       {med['reladiff']:7.2f} s   ratio {summary['ratio_reladiff_all_columns']}x")
    if "reladiff_keys" in med:
        keys_ratio = summary["ratio_reladiff_keys_only"]
        print(f"  reladiff, keys only          {med['reladiff_keys']:7.2f} s   ratio {keys_ratio}x")
    print(f"  one SQL FULL JOIN            {med['full_join']:7.2f} s   (finds no column, runs no check)")
    for label, seconds in hashes.items():
        print(f"  legacy side, {label:40s} {seconds:6.2f} s")
    goal = summary["ratio_reladiff_all_columns"]
    print(f"goal reladiff / migrator >= 5: {'met' if goal >= 5 else 'NOT met'} ({goal}x)")


if __name__ == "__main__":
    main()

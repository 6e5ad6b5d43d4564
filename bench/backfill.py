"""Backfill speed vs the physical limit, measured in one run on the same server.

For each run: seed (once), expand, then alternately
  (a) one offline INSERT … SELECT per split table of the same rows into the empty split tables, then a plain
      CREATE INDEX for each index migrator builds after its copy (both end with the same tables and indexes), and
  (b) `migrator backfill` (in a subprocess, so its peak RSS can be read), copy and index builds,
emptying the split tables in between. Prints seconds for each, the ratio offline/backfill (goal >= 0.90) and
the backfill process's peak RSS.

    python bench/backfill.py --rows 1000000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from migrator.db import Database  # noqa: E402
from migrator.engine.context import Context  # noqa: E402
from migrator.phases.expand import Expand  # noqa: E402
from migrator.seed import seed  # noqa: E402
from migrator.spec import Spec, load_spec  # noqa: E402
from migrator.sqlgen import ddl, names, rules  # noqa: E402
from migrator.sqlgen.compose import ident, join, literal, raw  # noqa: E402


def offline_statements(spec: Spec) -> list[sql.Composed]:
    """What a DBA would run offline: one INSERT … SELECT per split table, valid rows only."""
    invalid = rules.invalid(spec, "l")
    legacy, pk, link = names.source(spec), spec.pk, spec.base.link_column
    stmts = [
        sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} AS l WHERE NOT {}").format(
            names.split(spec, spec.base.table),
            join([ident(c) for c in [pk, *spec.base.columns]]),
            join([rules.column("l", c) for c in [pk, *spec.base.columns]]),
            legacy,
            invalid,
        )
    ]
    for v in spec.variants:
        stmts.append(
            sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} AS l WHERE NOT {} AND l.{} = {}").format(
                names.split(spec, v.table),
                join([ident(c) for c in [link, *v.columns]]),
                join([rules.column("l", c) for c in [pk, *v.columns]]),
                legacy,
                invalid,
                ident(spec.source.discriminator),
                literal(v.when),
            )
        )
    if spec.meta:
        m = spec.meta
        for c in m.columns:
            stmts.append(
                sql.SQL(
                    "INSERT INTO {} ({}, {}, {}) SELECT l.{}, {}, to_jsonb(l.{}) "
                    "FROM {} AS l WHERE NOT {} AND l.{} IS NOT NULL"
                ).format(
                    names.split(spec, m.table),
                    ident(link),
                    ident(m.key_column),
                    ident(m.value_column),
                    ident(pk),
                    literal(c),
                    ident(c),
                    legacy,
                    invalid,
                    ident(c),
                )
            )
    return stmts


def deferred_indexes(spec: Spec) -> list[int]:
    """The spec's indexes migrator builds after the copy: the offline copy builds them too (same end state)."""
    return [i for i in range(len(spec.indexes)) if spec.index_phase(i) == "backfill"]


def empty_split(conn: psycopg.Connection[Any], spec: Spec) -> None:
    tables = join([names.split(spec, t) for t in spec.split_tables()])
    conn.execute(sql.SQL("TRUNCATE {}").format(tables))
    for i in deferred_indexes(spec):
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(ident(spec.target_schema, ddl.index_name(spec, i))))
    conn.execute(
        sql.SQL("DELETE FROM {} WHERE migration = %s").format(names.state(spec, "backfill_ranges")),
        [spec.migration_name],
    )
    conn.execute(
        sql.SQL("DELETE FROM {} WHERE migration = %s").format(names.state(spec, "quarantine")), [spec.migration_name]
    )
    conn.execute(
        sql.SQL("UPDATE {} SET state = 'dual_write' WHERE migration = %s").format(names.state(spec, "state")),
        [spec.migration_name],
    )
    conn.execute(raw("CHECKPOINT"))


def run_offline(dsn: str, spec: Spec) -> float:
    with psycopg.connect(dsn) as conn:
        t0 = time.perf_counter()
        for stmt in offline_statements(spec):
            conn.execute(stmt)
        # Offline, a DBA builds the indexes after the load, plainly (no CONCURRENTLY, nobody else is writing).
        for i in deferred_indexes(spec):
            conn.execute(ddl.index_statement(spec, i, concurrently=False))
        conn.commit()
        return time.perf_counter() - t0


def run_backfill(dsn: str, spec: Spec, extra: list[str]) -> tuple[float, int]:
    """Seconds of the copy (as the backfill recorded it) and the subprocess's peak RSS in KiB."""
    exe = Path(sys.executable).parent / "migrator"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(
        [str(exe), "--dsn", dsn, "--json", "backfill", *extra], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"backfill failed: {proc.stderr}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            sql.SQL("SELECT details->>'seconds' FROM {} WHERE command = 'backfill' ORDER BY id DESC LIMIT 1").format(
                names.state(spec, "transitions")
            )
        ).fetchone()
    assert row is not None
    return float(row[0]), max(rss, before)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", default="postgresql://root@127.0.0.1/test", help="server to create a scratch db on")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--chunk-time", type=float, help="backfill --chunk-time (default: the backfill's)")
    ap.add_argument("--full-speed", action="store_true", help="backfill --full-speed (no adaptive pace)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch database")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    admin = args.dsn
    dbname = f"bench_backfill_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(ident(dbname)))
    dsn = psycopg.conninfo.make_conninfo(admin, dbname=dbname)
    spec = load_spec()
    try:
        with psycopg.connect(dsn) as conn:
            t0 = time.perf_counter()
            seed(conn, args.rows, random_seed=1)
            seed_s = time.perf_counter() - t0
        Expand().apply(Context(spec, Database(dsn)))
        offline: list[float] = []
        online: list[float] = []
        rss: list[int] = []
        extra = ["--workers", str(args.workers)]
        if args.chunk_time:
            extra += ["--chunk-time", str(args.chunk_time)]
        if args.full_speed:
            extra.append("--full-speed")
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(args.runs):
                order = ("offline", "backfill") if i % 2 == 0 else ("backfill", "offline")
                for what in order:
                    empty_split(conn, spec)
                    if what == "offline":
                        offline.append(run_offline(dsn, spec))
                    else:
                        secs, peak = run_backfill(dsn, spec, extra)
                        online.append(secs)
                        rss.append(peak)
                    if not args.json:
                        print(f"run {i + 1} {what:8s}: {(offline if what == 'offline' else online)[-1]:.2f} s")
        ratios = [o / b for o, b in zip(offline, online, strict=True)]
        result = {
            "rows": args.rows,
            "seed_seconds": round(seed_s, 2),
            "offline_seconds": [round(x, 3) for x in offline],
            "backfill_seconds": [round(x, 3) for x in online],
            "ratio_per_run": [round(r, 3) for r in ratios],
            "offline_median": round(statistics.median(offline), 3),
            "backfill_median": round(statistics.median(online), 3),
            "ratio_median": round(statistics.median(ratios), 3),
            "backfill_peak_rss_mib": round(max(rss) / 1024, 1),
            "workers": args.workers,
        }
        if args.json:
            print(json.dumps(result))
        else:
            print(
                f"rows {args.rows:,}: offline INSERT…SELECT median {result['offline_median']} s, "
                f"migrator backfill median {result['backfill_median']} s, "
                f"ratio offline/backfill {result['ratio_median']} (goal >= 0.90), "
                f"backfill peak RSS {result['backfill_peak_rss_mib']} MiB"
            )
    finally:
        if not args.keep:
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident(dbname)))


if __name__ == "__main__":
    main()

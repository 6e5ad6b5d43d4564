"""The application's tail latency while the backfill runs, measured in one run.

A steady pgbench writer (fixed rate, -R) updates, inserts and deletes legacy rows: first for --baseline-seconds
with the forward triggers on and no backfill, then while `migrator backfill` runs. Prints the writer's p99 in
both phases and the ratio (goal <= 1.5), and failed transactions (goal 0).

    python bench/backfill_latency.py --rows 1000000 --rate 200
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import find_pgbench, scratch_database  # noqa: E402
from zero_downtime import latencies, pct, run_load  # noqa: E402

from migrator.db import Database  # noqa: E402
from migrator.phases import backfill, expand  # noqa: E402
from migrator.phases.base import Context  # noqa: E402
from migrator.seed import seed  # noqa: E402
from migrator.spec import load_spec  # noqa: E402

SCRIPT = r"""
\set id random(1, :maxid)
\set op random(1, 100)
\if :op <= 60
UPDATE core_project SET name = 'pgbench ' || :op, updated_at = now() WHERE id = :id;
\elif :op <= 90
INSERT INTO core_project (name, project_type, owner_id, course_name, course_code, teacher_name)
VALUES ('pgbench new', 'school', 1, 'C', 'C-1', 'T');
\else
DELETE FROM core_project WHERE id = :id;
\endif
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", default="postgresql://root@127.0.0.1/test")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--baseline-seconds", type=int, default=20)
    ap.add_argument("--chunk-time", type=float, default=0.1, help="backfill --chunk-time (default: %(default)s)")
    ap.add_argument("--max-rows-per-second", type=float, default=0, help="backfill cap (0: none)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pgbench = find_pgbench()
    spec = load_spec()
    with scratch_database(args.dsn, "bench_bfl") as dsn, tempfile.TemporaryDirectory() as tmp:
        logdir = Path(tmp)
        script = logdir / "writer.sql"
        script.write_text(SCRIPT)
        with psycopg.connect(dsn) as conn:
            seed(conn, args.rows, dirty_ratio=0.02, random_seed=1)
            maxid = int(conn.execute("SELECT max(id) FROM core_project").fetchone()[0])  # type: ignore[index]
        db = Database(dsn)
        expand.apply(Context(spec, db))
        t_end = time.monotonic() + args.baseline_seconds
        base = run_load(
            pgbench,
            dsn,
            script,
            logdir,
            "a",
            lambda: time.monotonic() >= t_end,
            rate=args.rate,
            clients=args.clients,
            maxid=maxid,
        )
        finished = threading.Event()
        took: list[float] = []

        def copy() -> None:
            time.sleep(1.0)
            t0 = time.monotonic()
            try:
                backfill.apply(
                    Context(
                        spec,
                        db,
                        options={
                            "backfill": backfill.Options(
                                chunk_time=args.chunk_time, max_rows_per_second=args.max_rows_per_second or None
                            )
                        },
                    )
                )
            finally:
                took.append(time.monotonic() - t0)
                finished.set()

        worker = threading.Thread(target=copy)
        worker.start()
        during = run_load(
            pgbench,
            dsn,
            script,
            logdir,
            "b",
            finished.is_set,
            rate=args.rate,
            clients=args.clients,
            maxid=maxid,
            segment=3,
        )
        worker.join()
        lat_a, lat_b = latencies(logdir, "a_"), latencies(logdir, "b_")
        db.dispose()
    result = {
        "rows": args.rows,
        "rate": args.rate,
        "clients": args.clients,
        "backfill_seconds": round(took[0], 2),
        "without_backfill": {
            "transactions": base["processed"],
            "failed": base["failed"] + len(base["aborted"]),
            "p50_ms": round(pct(lat_a, 50), 2),
            "p99_ms": round(pct(lat_a, 99), 2),
        },
        "during_backfill": {
            "transactions": during["processed"],
            "failed": during["failed"] + len(during["aborted"]),
            "p50_ms": round(pct(lat_b, 50), 2),
            "p99_ms": round(pct(lat_b, 99), 2),
        },
    }
    result["p99_ratio"] = round(
        result["during_backfill"]["p99_ms"] / max(result["without_backfill"]["p99_ms"], 1e-9), 2
    )
    if args.json:
        print(json.dumps(result))
    else:
        a, b = result["without_backfill"], result["during_backfill"]
        print(
            f"rows {args.rows:,}, writer pgbench -R {args.rate:g} -c {args.clients}; backfill took "
            f"{result['backfill_seconds']} s"
        )
        print(
            f"without backfill: p50 {a['p50_ms']} ms, p99 {a['p99_ms']} ms, {a['transactions']} tx, "
            f"failed {a['failed']}"
        )
        print(
            f"during backfill : p50 {b['p50_ms']} ms, p99 {b['p99_ms']} ms, {b['transactions']} tx, "
            f"failed {b['failed']}"
        )
        print(f"p99 ratio: {result['p99_ratio']} (goal <= 1.5)")


if __name__ == "__main__":
    main()

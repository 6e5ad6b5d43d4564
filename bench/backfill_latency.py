"""The application's tail latency while the backfill runs, measured in one run.

A steady pgbench writer (fixed rate, -R; one run, its sessions kept throughout, as an application pool keeps its
connections) updates, inserts and deletes legacy rows in three windows, each after a
CHECKPOINT: (a) for --baseline-seconds with the forward triggers on and no copy; (b) while `migrator backfill`
runs; (c) while a plain copy of the same rows runs, the physical reference: keyset chunks of one INSERT … SELECT
per split table into empty copies of the split tables (no triggers, locks, checks or checkpoint table; the
backfill's mean chunk size, its session settings and the same rows/s cap). Prints the writer's p99 in each
phase, the ratio b/a (goal <= 1.5 at default settings), the backfill's speed as a fraction of the plain copy's
(c, at full speed under the same load), the ratio c/a (what a copy of these rows at full speed costs the writer
on this server) and failed transactions (goal 0); medians of --runs runs, each on a fresh database.

    python bench/backfill_latency.py --rows 200000 --rate 200
    python bench/backfill_latency.py --rows 200000 --full-speed
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from backfill import offline_statements  # noqa: E402
from common import find_pgbench, scratch_database  # noqa: E402
from zero_downtime import SETTLE_SECONDS, Load, StepPrinter, public  # noqa: E402

from migrator.copy.forward import BACKEND_FLUSH_AFTER  # noqa: E402
from migrator.db import Database  # noqa: E402
from migrator.engine.context import Context  # noqa: E402
from migrator.engine.session import set_local  # noqa: E402
from migrator.phases import backfill  # noqa: E402
from migrator.phases.backfill import Backfill  # noqa: E402
from migrator.phases.expand import Expand  # noqa: E402
from migrator.seed import seed  # noqa: E402
from migrator.spec import Spec, load_spec  # noqa: E402
from migrator.sqlgen import names  # noqa: E402
from migrator.sqlgen.compose import ident  # noqa: E402

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


REF_SCHEMA = "bench_ref"
REFERENCE_CHUNK_ROWS = 5000


def reference_tables(conn: psycopg.Connection[Any], spec: Spec) -> Spec:
    """Empty copies of the split tables (keys and indexes, no foreign keys or triggers) in REF_SCHEMA, made anew;
    returns the spec that names them."""
    ref = spec.model_copy(update={"base": spec.base.model_copy(update={"schema_": REF_SCHEMA})})
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident(REF_SCHEMA)))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident(REF_SCHEMA)))
    for table in spec.split_tables():
        conn.execute(
            sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(names.split(ref, table), names.split(spec, table))
        )
    return ref


def seeded_and_expanded(dsn: str, spec: Spec, rows: int, logdir: Path) -> tuple[Path, int, Database]:
    """Seed `rows` legacy rows, expand, write the writer's pgbench script; returns (script, max id, database)."""
    script = logdir / "writer.sql"
    script.write_text(SCRIPT)
    with psycopg.connect(dsn) as conn:
        seed(conn, rows, dirty_ratio=0.02, random_seed=1)
        maxid = int(conn.execute("SELECT max(id) FROM core_project").fetchone()[0])  # type: ignore[index]
    db = Database(dsn)
    Expand().apply(Context(spec, db))
    return script, maxid, db


def reference_copy(dsn: str, spec: Spec, chunk_rows: int, max_rows_per_second: float | None) -> tuple[float, int]:
    """Copy the legacy rows in keyset chunks of `chunk_rows` ids, one transaction per chunk with the backfill's
    session settings (asynchronous commit, its write-back), into empty copies of the split tables (their keys
    and indexes, no foreign keys or triggers). Returns (seconds, rows)."""
    pk = ident(spec.pk)
    with psycopg.connect(dsn, autocommit=True) as conn:
        ref = reference_tables(conn, spec)
        bounded = [
            sql.SQL("{} AND l.{} > %(lo)s AND l.{} <= %(hi)s").format(stmt, pk, pk) for stmt in offline_statements(ref)
        ]
        lo, top = conn.execute(
            sql.SQL("SELECT min({}) - 1, max({}) FROM {}").format(pk, pk, names.source(spec))
        ).fetchone() or (0, 0)
        conn.execute("CHECKPOINT")
        t0 = time.monotonic()
        copied = 0
        while lo < top:
            hi = min(lo + chunk_rows, top)
            with conn.transaction():
                # The backfill's own I/O setting (BACKEND_FLUSH_AFTER): the reference is the floor.
                set_local(conn, synchronous_commit=False, backend_flush_after=BACKEND_FLUSH_AFTER)
                base_rows = conn.execute(bounded[0], {"lo": lo, "hi": hi}).rowcount
                for stmt in bounded[1:]:
                    conn.execute(stmt, {"lo": lo, "hi": hi})
            copied += base_rows
            lo = hi
            if max_rows_per_second:
                ahead = copied / max_rows_per_second - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        took = time.monotonic() - t0
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(ident(REF_SCHEMA)))
    return took, copied


class ChunkCounter:
    """A backfill reporter that counts chunks and rows, for the plain copy's chunk size."""

    def __init__(self) -> None:
        self.chunks = 0
        self.rows = 0

    def step(self, message: str) -> None:
        pass

    def progress(self, done: int, total: int | None, **fields: Any) -> None:
        if "rows" in fields:
            self.chunks += 1
            self.rows += int(fields["rows"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", default="postgresql://root@127.0.0.1/test")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--baseline-seconds", type=int, default=30)
    ap.add_argument("--chunk-time", type=float, help="backfill --chunk-time (default: the backfill's)")
    ap.add_argument("--max-rows-per-second", type=float, default=0, help="cap for both copies (0: none)")
    ap.add_argument("--full-speed", action="store_true", help="backfill --full-speed (no adaptive pace)")
    ap.add_argument("--runs", type=int, default=3, help="runs, each on a fresh database; medians are reported")
    ap.add_argument("--no-reference", action="store_true", help="skip phase (c), the plain chunked copy")
    ap.add_argument("--steps", action="store_true", help="print the backfill's step lines (pace changes too)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    runs = [one_run(args) for _ in range(max(1, args.runs))]
    result: dict[str, Any] = {"rows": args.rows, "rate": args.rate, "clients": args.clients, "runs": runs}
    for key in ("p99_ratio", "backfill_seconds", "reference_seconds", "speed_fraction", "reference_p99_ratio"):
        if all(key in r for r in runs):
            result[key] = statistics.median(r[key] for r in runs)
    if args.json:
        print(json.dumps(result))
        return
    mode = "--full-speed" if args.full_speed else "default settings" if not (cap_given(args)) else "hand-set flags"
    print(f"rows {args.rows:,}, writer pgbench -R {args.rate:g} -c {args.clients}, backfill at {mode}")
    labels = {"without_backfill": "without a copy   ", "during_backfill": "during backfill  ",
              "during_reference": "during plain copy"}  # fmt: skip
    for i, r in enumerate(runs, 1):
        line = f"run {i}: backfill {r['backfill_seconds']} s"
        if "reference_seconds" in r:
            line += f", plain copy at full speed {r['reference_seconds']} s (backfill speed {r['speed_fraction']:.0%})"
        print(line)
        for key, label in labels.items():
            if key in r:
                x = r[key]
                tx = f"{x['transactions']} tx, failed {x['failed']}"
                print(f"  {label}: p50 {x['p50_ms']} ms, p99 {x['p99_ms']} ms, {tx}")
        print(f"  p99 ratio backfill/without: {r['p99_ratio']}")
    print(f"median p99 ratio backfill/without: {result['p99_ratio']} (goal <= 1.5)")
    if "speed_fraction" in result:
        print(
            f"median backfill speed: {result['speed_fraction']:.0%} of a plain chunked copy at full speed under the "
            f"same load (p99 ratio of that copy: {result['reference_p99_ratio']})"
        )


def cap_given(args: argparse.Namespace) -> bool:
    return bool(args.max_rows_per_second or args.chunk_time)


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    """One run on a fresh database: the baseline, the backfill, the plain copy; the run's figures."""
    pgbench = find_pgbench()
    spec = load_spec()
    cap = args.max_rows_per_second or None
    with scratch_database(args.dsn, "bench_bfl") as dsn, tempfile.TemporaryDirectory() as tmp:
        logdir = Path(tmp)
        script, maxid, db = seeded_and_expanded(dsn, spec, args.rows, logdir)

        with psycopg.connect(dsn, autocommit=True) as conn:
            # A settled legacy table: without this, autovacuum's first pass over the freshly seeded rows lands in
            # one of the windows (a baseline p99 of 110 ms once, 7x the next run's). Only it: the split tables stay
            # as expand left them (analyzed while empty, the application's cached plans of the triggers' statements
            # scan them as they grow, until the backfill's first ANALYZE).
            conn.execute("VACUUM (ANALYZE) core_project")
        opts = backfill.Options(
            max_rows_per_second=cap,
            full_speed=args.full_speed,
            **({"chunk_time": args.chunk_time} if args.chunk_time else {}),
        )
        reporter = StepPrinter() if args.steps else ChunkCounter()
        spans: dict[str, tuple[float, float]] = {}

        def window(tag: str, job: Callable[[], object]) -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CHECKPOINT")  # each window starts from a checkpoint (its first writes log whole pages)
            time.sleep(SETTLE_SECONDS)
            spans[tag] = load.window(job)

        with Load(pgbench, dsn, script, logdir, rate=args.rate, clients=args.clients, maxid=maxid) as load:
            window("a", lambda: time.sleep(args.baseline_seconds))
            window("b", lambda: Backfill(opts).apply(Context(spec, db, reporter=reporter)))
            if not args.no_reference:
                # The reference runs flat out, in chunks of what the default chunk time (0.1 s) copies at full
                # speed on this kind of box: the backfill's speed as a fraction of it is what pacing costs.
                window("c", lambda: reference_copy(dsn, spec, REFERENCE_CHUNK_ROWS, cap))
        summaries = {tag: public(load.between(span)) for tag, span in spans.items()}
        took = {tag: span[1] - span[0] for tag, span in spans.items()}
        aborted = load.aborted()
        db.dispose()
    result: dict[str, Any] = {"backfill_seconds": round(took["b"], 2)}
    result["without_backfill"] = summaries["a"]
    result["during_backfill"] = summaries["b"]
    base_p99 = max(summaries["a"]["p99_ms"], 1e-9)
    result["p99_ratio"] = round(summaries["b"]["p99_ms"] / base_p99, 2)
    result["aborted_clients"] = aborted
    if "c" in summaries:
        result["reference_seconds"] = round(took["c"], 2)
        result["speed_fraction"] = round(took["c"] / took["b"], 3)
        result["during_reference"] = summaries["c"]
        result["reference_p99_ratio"] = round(summaries["c"]["p99_ms"] / base_p99, 2)
    return result


if __name__ == "__main__":
    main()

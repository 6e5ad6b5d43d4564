"""What in a backfill chunk costs the application: the chunk's statement with its parts taken out, one at a time.

One steady pgbench writer (as in bench/backfill_latency.py: its sessions kept throughout) updates, inserts and
deletes legacy rows with the forward triggers on. In turn, each after a CHECKPOINT, windows of --seconds run:
nothing (idle), or a copy at a fixed --rows-per-second in chunks of --chunk-rows, one variant per window:

- backfill: the backfill's own chunk statement (legacy rows FOR KEY SHARE, referenced users FOR KEY SHARE,
  into the real split tables), with the backfill's session settings;
- no-legacy-lock: the same without FOR KEY SHARE on the legacy rows;
- no-fk-lock: the same without FOR KEY SHARE on the referenced users;
- no-locks: without either;
- elsewhere: the plain INSERT … SELECT of bench/backfill_latency.py into empty copies of the split tables.

Each variant copies ids no earlier window copied. Prints per variant the writer's p99 (median over --cycles) and
its ratio to the idle windows' median p99.

    python bench/chunk_cost.py --rows 400000 --rows-per-second 2000 --cycles 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from backfill import offline_statements  # noqa: E402
from backfill_latency import REF_SCHEMA, reference_tables, seeded_and_expanded  # noqa: E402
from common import find_pgbench, scratch_database  # noqa: E402
from zero_downtime import SETTLE_SECONDS, Load  # noqa: E402

from migrator.copy import forward_sql  # noqa: E402
from migrator.copy.forward import BACKEND_FLUSH_AFTER  # noqa: E402
from migrator.engine.session import set_local  # noqa: E402
from migrator.spec import Spec, load_spec  # noqa: E402
from migrator.sqlgen import names  # noqa: E402
from migrator.sqlgen.compose import as_text, ident  # noqa: E402

VARIANTS = ("backfill", "no-legacy-lock", "no-fk-lock", "no-locks", "elsewhere")
# Variants of how the backfill's chunk statement runs (not what it does): --variants picks any of both lists.
# sync-commit: the chunk's commit flushes its own WAL; small-chunks: a tenth of --chunk-rows at the same rate;
# no-flush-after: without the backfill's backend_flush_after.
RUN_VARIANTS = ("sync-commit", "small-chunks", "no-flush-after")
LEGACY_LOCK = "\n       FOR KEY SHARE\n)"
FK_LOCK = "\n       FOR KEY SHARE OF r"


def variant_sql(spec: Spec, variant: str, careful: bool = False) -> list[str]:
    """The statements of one chunk of `variant`, with %(lo)s / %(hi)s / %(limit)s parameters (`careful`: the
    backfill's ON CONFLICT form, which it runs after a trigger wrote one of the chunk's rows first)."""
    if variant in RUN_VARIANTS:
        variant = "backfill"
    if variant == "elsewhere":
        ref = spec.model_copy(update={"base": spec.base.model_copy(update={"schema_": REF_SCHEMA})})
        pk = ident(spec.pk)
        return [
            as_text(sql.SQL("{} AND l.{} > %(lo)s AND l.{} <= %(hi)s").format(stmt, pk, pk))
            for stmt in offline_statements(ref)
        ]
    text = as_text(forward_sql.chunk_sql(spec, has_cursor=True, careful=careful))
    if LEGACY_LOCK not in text or FK_LOCK not in text:
        raise SystemExit("the backfill's chunk statement changed: update bench/chunk_cost.py's variants")
    if variant in ("no-legacy-lock", "no-locks"):
        text = text.replace(LEGACY_LOCK, "\n)")
    if variant in ("no-fk-lock", "no-locks"):
        text = text.replace(FK_LOCK, "")
    return [text]


def copy_window(
    dsn: str, variant: tuple[list[str], list[str]], lo: int, seconds: float, rate: float, chunk: int, name: str
) -> int:
    """Copy chunks of `chunk` ids from `lo` at `rate` rows/s for `seconds`; returns the next id to copy."""
    chunk = max(1, chunk // 10) if name == "small-chunks" else chunk
    with psycopg.connect(dsn, autocommit=True) as conn:
        t0 = time.monotonic()
        copied = 0
        while time.monotonic() - t0 < seconds:
            for statements in variant:  # as the backfill: the careful form after a unique violation
                try:
                    with conn.transaction():
                        set_local(
                            conn,
                            synchronous_commit=name == "sync-commit",
                            backend_flush_after="0" if name == "no-flush-after" else BACKEND_FLUSH_AFTER,
                            session_replication_role="replica",
                        )
                        for stmt in statements:
                            conn.execute(stmt.encode(), {"lo": lo, "hi": lo + chunk, "limit": chunk})
                    break
                except psycopg.errors.UniqueViolation:
                    continue
            lo += chunk
            copied += chunk
            ahead = copied / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    return lo


def one_cycle(args: argparse.Namespace, dsn: str, load: Load, spec: Spec, lo: int) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    for variant in ("idle", *args.variants, "idle2"):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        time.sleep(SETTLE_SECONDS)
        if variant.startswith("idle"):
            span = load.window(lambda: time.sleep(args.seconds))
        else:
            stmts = (variant_sql(spec, variant), variant_sql(spec, variant, careful=True))
            start = lo

            def job(stmts: tuple[list[str], list[str]] = stmts, start: int = start, name: str = variant) -> int:
                return copy_window(dsn, stmts, start, args.seconds, args.rows_per_second, args.chunk_rows, name)

            span = load.window(job)
            lo = start + int(args.seconds * args.rows_per_second) + args.chunk_rows
        w = load.between(span)
        out[variant] = {"p99_ms": w["p99_ms"], "p50_ms": w["p50_ms"], "tx": w["transactions"], "failed": w["failed"]}
        print(f"  {variant:15s} p50 {w['p50_ms']:7.2f} ms  p99 {w['p99_ms']:7.2f} ms  tx {w['transactions']}")
    return out, lo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", default="postgresql://root@127.0.0.1/test")
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--rate", type=float, default=200.0, help="the writer's transactions/s")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0, help="each window")
    ap.add_argument("--rows-per-second", type=float, default=2000.0)
    ap.add_argument("--chunk-rows", type=int, default=1000)
    ap.add_argument("--cycles", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=[*VARIANTS, *RUN_VARIANTS])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    need = int(args.cycles * len(args.variants) * (args.seconds * args.rows_per_second + args.chunk_rows))
    if need > args.rows:
        ap.error(f"--rows {args.rows:,} is too few: the variants copy up to {need:,} distinct rows")
    spec = load_spec()
    with scratch_database(args.dsn, "bench_cc") as dsn, tempfile.TemporaryDirectory() as tmp:
        logdir = Path(tmp)
        script, maxid, db = seeded_and_expanded(dsn, spec, args.rows, logdir)
        db.dispose()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE) core_project")
            reference_tables(conn, spec)
            # The split tables as the backfill sees them a while in (its first ANALYZE comes at 1,000 rows).
            lo = int(conn.execute("SELECT min(id) - 1 FROM core_project").fetchone()[0])  # type: ignore[index]
            stmts = variant_sql(spec, "no-locks")
            with conn.transaction():
                set_local(conn, session_replication_role="replica")
                for stmt in stmts:
                    conn.execute(stmt.encode(), {"lo": lo, "hi": lo + 5000, "limit": 5000})
            lo += 5000
            for table in spec.split_tables():
                conn.execute(sql.SQL("ANALYZE {}").format(names.split(spec, table)))
        cycles = []
        with Load(find_pgbench(), dsn, script, logdir, rate=args.rate, clients=args.clients, maxid=maxid) as load:
            for i in range(args.cycles):
                print(f"cycle {i + 1}")
                result, lo = one_cycle(args, dsn, load, spec, lo)
                cycles.append(result)
    idle = statistics.median(c[k]["p99_ms"] for c in cycles for k in ("idle", "idle2"))
    summary = {v: round(statistics.median(c[v]["p99_ms"] for c in cycles) / max(idle, 1e-9), 2) for v in args.variants}
    if args.json:
        print(json.dumps({"cycles": cycles, "idle_p99_ms": idle, "p99_ratio": summary}))
        return
    print(f"idle p99 (median of {2 * len(cycles)} windows): {idle:.2f} ms")
    for v in args.variants:
        print(f"{v:15s} p99 ratio {summary[v]:.2f}")


if __name__ == "__main__":
    main()

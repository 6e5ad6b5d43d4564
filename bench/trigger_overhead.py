"""Write throughput on the legacy table with the forward sync triggers on vs off, measured in one run.

Seeds a scratch database, runs `expand` (forward triggers attached), copies every legacy row into the split
tables through the trigger itself (so the runs measure the steady state of dual_write, where an update finds
its split rows; --no-prefill measures the first touch instead), then runs a pgbench mix of application writes
against core_project, alternately with the row trigger DISABLEd and ENABLEd (ABBA order, to cancel drift).
Prints tps per run, the medians and the ratio with/without (goal >= 0.65).

    python bench/trigger_overhead.py [--dsn DSN] [--rows 100000] [--duration 20] [--clients 4] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common` resolves however the script is started

from common import DEFAULT_DSN, Stopwatch, find_pgbench, median, run_pgbench, scratch_database

from migrator.db import Database
from migrator.engine.context import Context
from migrator.phases.expand import Expand
from migrator.seed import seed
from migrator.spec import Spec, load_spec
from migrator.sqlgen import ddl, names

GOAL = 0.65

# One pgbench "transaction" is the whole script: six application writes, each its own (autocommit) transaction,
# as a web request that saves one form would issue them. Ids of updates are drawn from the seeded rows.
WRITE_MIX = r"""
\set id1 random(1, :maxid)
\set id2 random(1, :maxid)
\set id3 random(1, :maxid)
\set id4 random(1, :maxid)
\set owner random(:minowner, :maxowner)
INSERT INTO core_project (name, project_type, owner_id, course_name, course_code, teacher_name, syllabus,
                          start_date, is_draft, created_at, updated_at)
VALUES ('bench school ' || :id1, 'school', :owner, 'Linear Algebra', 'MATH-' || :id1, 'Dr. Noether',
        '{"weeks": 12, "topics": ["vectors", "matrices"]}', current_date, false, now(), now());
INSERT INTO core_project (name, project_type, owner_id, goal_description, study_frequency, is_draft,
                          created_at, updated_at)
VALUES ('bench self-study ' || :id2, 'self_study', :owner, 'Learn Rust', 'weekly', true, now(), now());
UPDATE core_project SET name = 'renamed ' || :id1, updated_at = now() WHERE id = :id1;
UPDATE core_project SET course_code = 'CS-' || :id2, updated_at = now() WHERE id = :id2;
UPDATE core_project SET syllabus = CASE WHEN syllabus IS NULL THEN '{"weeks": 10}'::jsonb END, updated_at = now()
 WHERE id = :id3;
UPDATE core_project
   SET project_type = CASE project_type WHEN 'school' THEN 'self_study' ELSE 'school' END,
       course_name = coalesce(course_name, 'Databases'), course_code = coalesce(course_code, 'CS-101'),
       teacher_name = coalesce(teacher_name, 'Prof. Codd'),
       goal_description = coalesce(goal_description, 'Pass the exam'),
       study_frequency = coalesce(study_frequency, 'daily'), updated_at = now()
 WHERE id = :id4;
"""
WRITES_PER_TRANSACTION = 6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--dsn", default=DEFAULT_DSN, help="server to create the scratch database on (default: %(default)s)")
    p.add_argument("--rows", type=int, default=100_000, help="seeded legacy rows (default: %(default)s)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per pgbench run (default: %(default)s)")
    p.add_argument("--clients", type=int, default=4, help="pgbench clients and threads (default: %(default)s)")
    p.add_argument("--runs", type=int, default=3, help="pairs of runs, without and with (default: %(default)s)")
    p.add_argument(
        "--no-prefill",
        dest="prefill",
        action="store_false",
        help="leave the split tables empty (updates then insert their split rows: the first touch)",
    )
    p.add_argument(
        "--indexes",
        action="store_true",
        help="also build the indexes the backfill builds (the state from `backfilled` on); default: as expand "
        "leaves the split tables (dual_write, while the backfill copies)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p.parse_args(argv)


def scalar(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def set_trigger(conn: psycopg.Connection[Any], spec: Spec, enabled: bool) -> None:
    """ENABLE/DISABLE the forward row trigger (the truncate trigger does not fire in this mix)."""
    verb = sql.SQL("ENABLE" if enabled else "DISABLE")
    conn.execute(
        sql.SQL("ALTER TABLE {} {} TRIGGER {}").format(names.source(spec), verb, names.trigger_name(spec, "forward"))
    )
    state = scalar(
        conn,
        "SELECT tgenabled FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname = %s",
        [names.source(spec).as_string(conn), names.trigger_name_text(spec, "forward")],
    )
    assert (state != "D") is enabled, f"trigger state {state!r}, wanted enabled={enabled}"


def settle(conn: psycopg.Connection[Any]) -> None:
    """The same starting line for every run: dead tuples vacuumed (the server may run without autovacuum),
    statistics fresh, no checkpoint pending."""
    conn.execute("VACUUM (ANALYZE)")  # the whole scratch database: legacy, split, quarantine, catalogs
    # CHECKPOINT needs superuser or pg_checkpoint; without it the runs are only a little noisier.
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("CHECKPOINT")


def split_count(conn: psycopg.Connection[Any], spec: Spec) -> int:
    return int(scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(names.split(spec, spec.base.table))))


def log(args: argparse.Namespace, message: str) -> None:
    if not args.json:
        print(message, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = load_spec()
    pgbench = find_pgbench()
    with scratch_database(args.dsn, "bench_trig") as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        log(args, f"seeding {args.rows} rows …")
        with Stopwatch() as sw, psycopg.connect(dsn) as c:
            seed(c, args.rows)
        log(args, f"  {sw.seconds:.1f} s")
        defines = {
            "maxid": scalar(conn, "SELECT max(id) FROM core_project"),
            "minowner": scalar(conn, "SELECT min(id) FROM auth_user"),
            "maxowner": scalar(conn, "SELECT max(id) FROM auth_user"),
        }
        db = Database(dsn)
        with Stopwatch() as sw:
            Expand().apply(Context(spec, db))
        db.dispose()
        log(args, f"expand (forward triggers attached): {sw.seconds:.1f} s")
        if args.prefill:
            # Through the trigger itself: every legacy row gets its split rows, as a finished backfill leaves them.
            with Stopwatch() as sw:
                conn.execute(
                    sql.SQL("UPDATE {} SET {} = {}").format(names.source(spec), *[sql.Identifier(spec.pk)] * 2)
                )
            log(
                args, f"split tables prefilled through the trigger ({split_count(conn, spec)} rows): {sw.seconds:.1f} s"
            )
        if args.indexes:
            for i in range(len(spec.indexes)):
                if spec.index_phase(i) == "backfill":
                    conn.execute(ddl.index_statement(spec, i))
            log(args, "indexes the backfill builds: built")
        server = conn.info.server_version

        runs: list[dict[str, float]] = []
        for i in range(args.runs):
            order = (False, True) if i % 2 == 0 else (True, False)  # ABBA: drift hits both sides alike
            run: dict[str, float] = {}
            for enabled in order:
                set_trigger(conn, spec, enabled)
                settle(conn)
                before = split_count(conn, spec)
                result = run_pgbench(
                    dsn, WRITE_MIX, clients=args.clients, duration=args.duration, defines=defines, pgbench=pgbench
                )
                grew = split_count(conn, spec) - before
                # A guard against measuring the wrong thing: only the enabled trigger may add split rows.
                assert (grew > 0) is enabled, f"split rows grew by {grew} with trigger enabled={enabled}"
                key = "with" if enabled else "without"
                run[key] = result.tps
                run[f"{key}_latency_ms"] = result.latency_ms or 0.0
                log(
                    args,
                    f"run {i + 1} {key:>7}: {result.tps:8.1f} tps ({result.tps * WRITES_PER_TRANSACTION:8.0f} writes/s,"
                    f" latency {result.latency_ms or 0:.2f} ms)",
                )
            run["ratio"] = run["with"] / run["without"] if run["without"] else 0.0
            log(args, f"run {i + 1}   ratio: {run['ratio']:8.3f}")
            runs.append(run)
        set_trigger(conn, spec, True)
        quarantined = scalar(conn, "SELECT count(*) FROM migrator.quarantine WHERE resolved_at IS NULL")

    without = median([r["without"] for r in runs])
    with_ = median([r["with"] for r in runs])
    ratio = with_ / without if without else 0.0
    # A pair's two runs are minutes apart at most, so load from other users of a shared server hits both alike:
    # the median of the pairs' ratios is the figure to trust when the medians of the tps disagree with it.
    pair_ratio = median([r["ratio"] for r in runs])
    report = {
        "benchmark": "trigger_overhead",
        "server_version": server,
        "rows": args.rows,
        "duration_s": args.duration,
        "clients": args.clients,
        "prefill": args.prefill,
        "indexes_after_backfill": args.indexes,
        "writes_per_transaction": WRITES_PER_TRANSACTION,
        "runs": runs,
        "median_tps_without": round(without, 1),
        "median_tps_with": round(with_, 1),
        "ratio": round(ratio, 3),
        "median_pair_ratio": round(pair_ratio, 3),
        "goal": GOAL,
        "ok": ratio >= GOAL,
        "open_quarantine_rows": quarantined,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"median without triggers: {without:8.1f} tps")
        print(f"median with triggers:    {with_:8.1f} tps")
        print(f"ratio with/without:      {ratio:8.3f}  (goal >= {GOAL}: {'ok' if ratio >= GOAL else 'BELOW'})")
        print(f"median of pair ratios:   {pair_ratio:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Zero downtime, measured with an independent load generator (pgbench), three windows back to back:

  (a) baseline: the application's mix of writes and reads at a fixed rate, no migration;
  (b) the same load while migrator runs the whole lifecycle — expand, backfill, validate, switch-reads,
      switch-writes, contract — with a rollback from each state and a re-advance;
  (c) the same load on the new schema (contracted: no job, no trigger of migrator's): the application's own
      queries on the split tables, the baseline of its requests that ran while the flag said contracted.

The pgbench script follows the flags like an application: it asks migrator.flag_state() each transaction and
writes the legacy table until write_new, the split tables after; it reads the split tables from read_new on.
Every write is also recorded in a ledger table in the same transaction, so at the end every row pgbench wrote
can be checked: present and equal (or absent, if its last write was a delete) — 0 lost, 0 zombies.

Prints failed transactions, p50/p99/max latency of (a), (b) and (c), the p99 ratio (b)/(a), the p99 ratio with each
transaction against its own code path's baseline ((c) for those that started in contracted — the rollback from
contracted runs while the application is on its new schema — (a) for the rest), the longest lock wait any pgbench
statement was seen in, and the ledger check.

    python bench/zero_downtime.py --rows 200000
    python bench/zero_downtime.py --rows 100000 --null 420   # the harness's own check: no migration at all
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
WARMUP_SECONDS = 3.0
SETTLE_SECONDS = 1.0  # after each CHECKPOINT, before a window starts
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import find_pgbench, scratch_database  # noqa: E402

from migrator import lifecycle, operations, state  # noqa: E402
from migrator.db import Database  # noqa: E402
from migrator.engine import pace  # noqa: E402
from migrator.engine.actions import run_actions  # noqa: E402
from migrator.engine.context import Context, NullReporter  # noqa: E402
from migrator.phases import backfill, contract, switch_reads, validate  # noqa: E402
from migrator.phases.backfill import Backfill  # noqa: E402
from migrator.phases.base import Phase, RollbackOptions  # noqa: E402
from migrator.phases.contract import Contract  # noqa: E402
from migrator.phases.expand import Expand  # noqa: E402
from migrator.phases.switch_reads import SwitchReads  # noqa: E402
from migrator.phases.switch_writes import SwitchWrites  # noqa: E402
from migrator.phases.validate import Validate  # noqa: E402
from migrator.seed import seed  # noqa: E402
from migrator.spec import Spec, load_spec  # noqa: E402

MIGRATION = "core_project_split"
LOCK_TIMEOUT_S = 0.5  # migrator's default DDL lock_timeout
# How often the harness looks at pg_stat_activity, in all three windows alike. Reading the view costs the
# application's requests too (bench/pace_ab.py --job sampler, session 15: the pace's 25 ms sampler alone put 1-4
# points more of the requests over 3 ms): at 20 ms, and in (a) and (b) only, the harness slowed the windows it
# compares, and not (c). 50 ms still sees any wait that nears the 500 ms lock_timeout.
LOCK_SAMPLE_EVERY = 0.05

# One transaction per script run. Writes go where the flags say; each write also appends to bench_ledger in the
# same statement (data-modifying CTEs), so the final check knows the last committed write of every id.
SCRIPT = r"""
\set id random(1, :maxid)
\set op random(1, 100)
SELECT (migrator.flag_state('core_project_split') IN ('write_new', 'contracted'))::int AS w,
       (migrator.flag_state('core_project_split') IN ('read_new', 'write_new', 'contracted'))::int AS rs \gset
\if :w
\if :op <= 10
WITH i AS (INSERT INTO projects (name, project_type, owner_id, is_draft, created_at, updated_at)
           VALUES ('pgbench split ' || :id, 'school', 1, true, now(), now()) RETURNING id, name, project_type),
     c AS (INSERT INTO school_projects SELECT id, 'Course', 'PG-1', 'Teacher' FROM i)
INSERT INTO bench_ledger (pid, op, name, ptype) SELECT id, 'i', name, project_type FROM i;
\elif :op <= 60
WITH u AS (UPDATE projects SET name = 'pgbench split upd ' || :op, updated_at = now() WHERE id = :id
           RETURNING id, name, project_type)
INSERT INTO bench_ledger (pid, op, name, ptype) SELECT id, 'u', name, project_type FROM u;
\elif :op <= 65
WITH d AS (DELETE FROM projects WHERE id = :id RETURNING id)
INSERT INTO bench_ledger (pid, op) SELECT id, 'd' FROM d;
\endif
\else
\if :op <= 10
WITH i AS (INSERT INTO core_project (name, project_type, owner_id, goal_description, study_frequency)
           VALUES ('pgbench legacy ' || :id, 'self_study', 1, 'Goal', 'weekly') RETURNING id, name, project_type)
INSERT INTO bench_ledger (pid, op, name, ptype) SELECT id, 'i', name, project_type FROM i;
\elif :op <= 50
WITH u AS (UPDATE core_project SET name = 'pgbench legacy upd ' || :op, updated_at = now() WHERE id = :id
           RETURNING id, name, project_type)
INSERT INTO bench_ledger (pid, op, name, ptype) SELECT id, 'u', name, project_type FROM u;
\elif :op <= 60
WITH t AS (UPDATE core_project SET project_type = CASE project_type WHEN 'school' THEN 'self_study' ELSE 'school' END,
                  course_name = coalesce(course_name, 'C'), course_code = coalesce(course_code, 'C-1'),
                  teacher_name = coalesce(teacher_name, 'T'), goal_description = coalesce(goal_description, 'G'),
                  study_frequency = coalesce(study_frequency, 'weekly')
            WHERE id = :id RETURNING id, name, project_type)
INSERT INTO bench_ledger (pid, op, name, ptype) SELECT id, 't', name, project_type FROM t;
\elif :op <= 65
WITH d AS (DELETE FROM core_project WHERE id = :id RETURNING id)
INSERT INTO bench_ledger (pid, op) SELECT id, 'd' FROM d;
\endif
\endif
\if :rs
SELECT p.name, s.course_name, t.goal_description FROM projects p
  LEFT JOIN school_projects s ON s.project_id = p.id LEFT JOIN self_study_projects t ON t.project_id = p.id
 WHERE p.id = :id;
\else
SELECT name, course_name, goal_description FROM core_project WHERE id = :id;
\endif
"""


class Load:
    """One pgbench run for the whole measurement, at a fixed rate (-R): its sessions live throughout, as an
    application's pooled connections do. (A pgbench restarted every few seconds gets fresh sessions with fresh
    plans and forgets its schedule lag: it hid an application session that kept a plan made for an empty table
    and fell 16 s behind.) Each measured window is a span of wall time; a transaction belongs to the window its
    end falls in. SIGALRM ends pgbench as its own -T does: logs flushed, summary printed."""

    def __init__(self, pgbench: str, dsn: str, script: Path, logdir: Path, *, rate: float, clients: int, maxid: int):
        self.prefix = logdir / "load"
        self.cmd = [pgbench, "-n", "-f", str(script), "-c", str(clients), "-j", str(clients), "-T", "86400"]
        self.cmd += ["-R", str(rate), "-D", f"maxid={maxid}", "-l", "--log-prefix", str(self.prefix), dsn]
        self.proc: subprocess.Popen[str] | None = None
        self.output = ""

    def __enter__(self) -> Load:
        env = {**os.environ, "PGAPPNAME": "pgbench"}
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        time.sleep(WARMUP_SECONDS)  # connected, and past each session's first (cold-cache) transactions
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGALRM)
        try:
            self.output, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.output, _ = self.proc.communicate()

    @staticmethod
    def window(job: Callable[[], object]) -> tuple[float, float]:
        """Run job; the wall-time span it took."""
        start = time.time()
        job()
        return start, time.time()

    def transactions(self) -> list[tuple[float, float | None]]:
        """(end time, latency ms or None if it failed) per transaction, from pgbench's -l logs. With -R the latency
        counts from the scheduled start, so a stall also shows in the transactions queued behind it."""
        out: list[tuple[float, float | None]] = []
        for f in self.prefix.parent.glob(f"{self.prefix.name}*"):
            for line in f.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 6:
                    end = int(parts[4]) + int(parts[5]) / 1e6
                    out.append((end, int(parts[2]) / 1000.0 if parts[2].isdigit() else None))
        return out

    def aborted(self) -> list[str]:
        return re.findall(r"client \d+ aborted.*", self.output)

    def between(self, span: tuple[float, float]) -> dict[str, Any]:
        """The window's transactions: count, failed, p50/p99/max latency, and the raw (end, latency) pairs."""
        txs = [(t, lat) for t, lat in self.transactions() if span[0] <= t < span[1]]
        lat = [x for _, x in txs if x is not None]
        return {
            "transactions": len(txs),
            "failed": len(txs) - len(lat),
            "p50_ms": round(pct(lat, 50), 2),
            "p99_ms": round(pct(lat, 99), 2),
            "max_ms": round(max(lat, default=0.0), 2),
            "_tx": [(t, x) for t, x in txs if x is not None],
        }


def public(summary: dict[str, Any]) -> dict[str, Any]:
    """A window's summary without its raw transactions."""
    return {k: v for k, v in summary.items() if not k.startswith("_")}


def slow_by_step(
    txs: list[tuple[float, float]],
    steps: list[dict[str, Any]],
    over_ms: float,
    own_over: Callable[[float, float], float],
) -> dict[str, Any]:
    """Where the tail comes from: per lifecycle step, the transactions slower than over_ms that ended during it
    (or in the gap before the next step), those slower than 1.5x their own code path's baseline p99 (`own_over`:
    that p99, given a transaction's end and latency), their p99 and the slowest."""
    out: dict[str, Any] = {}
    for i, st in enumerate(steps):
        end = steps[i + 1]["start"] if i + 1 < len(steps) else st["end"]
        during = [(t, lat) for t, lat in txs if st["start"] <= t < end]
        lats = [lat for _, lat in during]
        slow = [lat for lat in lats if lat > over_ms]
        own = [lat for t, lat in during if lat > 1.5 * own_over(t, lat)]
        key = f"{i:02d} {st['step']}"
        out[key] = {
            "tx": len(lats),
            "slow": len(slow),
            "slow_own_path": len(own),
            "p99_ms": round(pct(lats, 99), 2),
            "max_ms": round(max(lats, default=0.0), 1),
        }
    return out


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


class LockWaitSampler:
    """Samples pg_stat_activity every LOCK_SAMPLE_EVERY seconds for pgbench sessions waiting on a lock, keeping the
    longest wait, and the migration's flag state, keeping when it changed (to tell which code path each transaction
    ran). Its session is named as migrator's own, so that the pace does not take its statements for the
    application's."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.longest = 0.0
        self.states: list[tuple[float, str]] = []  # (wall time first seen, state)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, application_name="migrator-bench") as conn:
            while not self.stop.is_set():
                row = conn.execute(
                    "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - query_start)), 0), "
                    "       migrator.flag_state(%s) "
                    "FROM pg_stat_activity WHERE application_name = 'pgbench' "
                    "AND wait_event_type = 'Lock'",
                    [MIGRATION],
                ).fetchone()
                assert row is not None
                self.longest = max(self.longest, float(row[0]))
                if not self.states or self.states[-1][1] != row[1]:
                    self.states.append((time.time(), str(row[1])))
                time.sleep(LOCK_SAMPLE_EVERY)

    def state_at(self, when: float) -> str:
        """The flag state last seen at or before `when` (the first one seen, before the first sample)."""
        if not self.states:
            return ""
        return self.states[max(0, bisect.bisect_right(self.states, when, key=lambda s: s[0]) - 1)][1]

    def __enter__(self) -> LockWaitSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


class StepPrinter(NullReporter):
    """The migration's step lines on stderr, stamped, to line them up with the slow transactions."""

    def step(self, message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def lifecycle_steps(spec: Spec, db: Database, args: argparse.Namespace) -> list[tuple[str, Callable[[], object]]]:
    # At default settings the long jobs pace themselves (engine/pace.py); --tuned gives the hand-set caps a DBA
    # would otherwise pick on this 2-core box, --full-speed the jobs without any pace.
    if args.tuned:
        args.backfill_rate, args.chunk_time, args.validate_rate, args.reverse_rate = 5000, 0.005, 50000, 5000
    copy = backfill.Options(
        max_rows_per_second=args.backfill_rate or None,
        full_speed=args.full_speed,
        **({"chunk_time": args.chunk_time} if args.chunk_time else {}),
    )
    check = validate.Options(max_rows_per_second=args.validate_rate or None)
    if args.tuned:
        check = validate.Options(workers=1, chunk_rows=10_000, max_rows_per_second=args.validate_rate)
    phases: list[Phase[Any]] = [
        Expand(),
        Backfill(copy),
        Validate(check),
        SwitchReads(switch_reads.Options(percent=100)),
        SwitchWrites(),
        Contract(contract.Options(quiet_period=1.0, wait=60)),
    ]
    # Every phase with a rollback (finalize has none, and drops the archive the rollback from contracted needs).
    assert [p.name for p in phases] == list(lifecycle.PHASE_NAMES[: len(phases)])
    ctx = Context(spec, db, reporter=StepPrinter() if args.steps else NullReporter())
    rollback_opts = RollbackOptions(max_rows_per_second=args.reverse_rate or None, full_speed=args.full_speed)

    def rb() -> object:
        return operations.rollback(ctx, opts=rollback_opts)

    def run(phase: Phase[Any]) -> Callable[[], object]:
        return lambda: phase.apply(ctx)

    # Every phase, then a rollback from the state it entered, then the phase again.
    steps: list[tuple[str, Callable[[], object]]] = []
    for phase in phases:
        steps += [(phase.name, run(phase)), (f"rollback {phase.entered}", rb), (phase.name, run(phase))]
    return steps


def run_lifecycle(spec: Spec, db: Database, log: list[dict[str, Any]], args: argparse.Namespace) -> None:
    for name, fn in lifecycle_steps(spec, db, args):
        t0, start = time.monotonic(), time.time()
        fn()
        log.append({"step": name, "seconds": round(time.monotonic() - t0, 3), "start": start, "end": time.time()})


def prepare(dsn: str, spec: Spec, rows: int, logdir: Path) -> tuple[Path, int]:
    """A seeded, settled legacy table, the ledger, migrator's state schema and pgbench's script in logdir: the
    script's path and the largest id."""
    script = logdir / "app.sql"
    script.write_text(SCRIPT)
    with psycopg.connect(dsn) as conn:
        seed(conn, rows, dirty_ratio=0.0, random_seed=1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE bench_ledger (seq bigserial PRIMARY KEY, pid bigint NOT NULL, op text NOT NULL,"
            " name text, ptype text)"
        )
        run_actions(conn, [state.schema_action(spec)])  # flag_state() exists before the migration starts
        maxid = int(conn.execute("SELECT max(id) FROM core_project").fetchone()[0])  # type: ignore[index]
        # A settled table, so that autovacuum's first pass over the seeded rows does not land in a phase.
        conn.execute("VACUUM (ANALYZE) core_project")
        conn.execute("CHECKPOINT")
    return script, maxid


LEDGER_CHECK = """
WITH last AS (
    SELECT DISTINCT ON (pid) pid, op, name, ptype FROM bench_ledger ORDER BY pid, seq DESC
)
SELECT count(*) FILTER (WHERE l.op <> 'd' AND p.id IS NULL) AS lost,
       count(*) FILTER (WHERE l.op <> 'd' AND p.id IS NOT NULL AND (p.name, p.project_type)
                                  IS DISTINCT FROM (l.name, l.ptype)) AS differ,
       count(*) FILTER (WHERE l.op = 'd' AND p.id IS NOT NULL) AS zombies,
       count(*) AS ids
  FROM last AS l LEFT JOIN projects AS p ON p.id = l.pid
"""


def null_run(pgbench: str, dsn: str, script: Path, logdir: Path, maxid: int, args: argparse.Namespace) -> None:
    """The harness's own check: (a), then a window as long as a lifecycle with no migration at all, compared alike.
    A ratio near 1 says a long window is not slower than the baseline by itself (a timed checkpoint, autovacuum)."""
    with Load(pgbench, dsn, script, logdir, rate=args.rate, clients=args.clients, maxid=maxid) as load:
        with LockWaitSampler(dsn):
            span_a = load.window(lambda: time.sleep(args.baseline_seconds))
        with LockWaitSampler(dsn):
            span_b = load.window(lambda: time.sleep(args.null))
    base, idle = load.between(span_a), load.between(span_b)
    over = 1.5 * base["p99_ms"]

    def share(window: dict[str, Any]) -> float:
        return round(100 * sum(1 for _, lat in window["_tx"] if lat > over) / max(len(window["_tx"]), 1), 2)

    result = {
        "baseline": {**public(base), "over_1_5x_p99_percent": share(base)},
        "null": {**public(idle), "seconds": args.null, "over_1_5x_p99_percent": share(idle)},
        "p99_ratio": round(idle["p99_ms"] / max(base["p99_ms"], 1e-9), 2),
    }
    if args.json:
        print(json.dumps(result))
        return
    for name, w in (("(a) baseline", result["baseline"]), (f"(b) {args.null} s, no migration", result["null"])):
        print(
            f"{name}: {w['transactions']} tx, failed {w['failed']}, p99 {w['p99_ms']} ms, "
            f"{w['over_1_5x_p99_percent']}% over 1.5x (a)'s p99"
        )
    print(f"p99 ratio with no migration: {result['p99_ratio']} (1 if the harness compares like with like)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", default="postgresql://root@127.0.0.1/test")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=200.0, help="pgbench -R: transactions per second")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--baseline-seconds", type=int, default=60, help="length of windows (a) and (c)")
    ap.add_argument("--backfill-rate", type=float, default=0, help="backfill --max-rows-per-second (0: none)")
    ap.add_argument("--chunk-time", type=float, help="backfill --chunk-time (default: the backfill's)")
    ap.add_argument("--validate-rate", type=float, default=0, help="validate --max-rows-per-second (0: none)")
    ap.add_argument(
        "--reverse-rate", type=float, default=0, help="rollback --max-rows-per-second, from contracted (0: none)"
    )
    ap.add_argument(
        "--tuned",
        action="store_true",
        help="the hand-set caps of earlier sessions (backfill 5000 rows/s, 5 ms chunks, validate 50000 rows/s on one "
        "worker, reverse 5000 rows/s) instead of the defaults",
    )
    ap.add_argument("--full-speed", action="store_true", help="the long jobs without the adaptive pace")
    ap.add_argument("--steps", action="store_true", help="print the migration's step lines (pace changes too)")
    ap.add_argument(
        "--pace",
        action="append",
        default=[],
        metavar="CONSTANT=VALUE",
        help="set one of migrator/engine/pace.py's constants for this run (e.g. SLOWER=1.1); repeatable",
    )
    ap.add_argument(
        "--null", type=int, default=0, metavar="SECONDS", help="no migration: window (b) is SECONDS of load alone"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    for item in args.pace:
        name, _, value = item.partition("=")
        if not name.isupper() or not hasattr(pace, name):
            ap.error(f"--pace {item}: {name} is not a constant of migrator/engine/pace.py")
        setattr(pace, name, type(getattr(pace, name))(value))
    pgbench = find_pgbench()
    spec = load_spec()
    with scratch_database(args.dsn, "bench_zd") as dsn, tempfile.TemporaryDirectory() as tmp:
        logdir = Path(tmp)
        script, maxid = prepare(dsn, spec, args.rows, logdir)
        if args.null:
            null_run(pgbench, dsn, script, logdir, maxid, args)
            return
        db = Database(dsn)

        # (a) baseline, then (b) the whole lifecycle, under one load
        steps: list[dict[str, Any]] = []
        errors: list[BaseException] = []

        def migrate() -> None:
            try:
                run_lifecycle(spec, db, steps, args)
            except BaseException as exc:
                errors.append(exc)

        with Load(pgbench, dsn, script, logdir, rate=args.rate, clients=args.clients, maxid=maxid) as load:
            with LockWaitSampler(dsn) as sampler_a:
                span_a = load.window(lambda: time.sleep(args.baseline_seconds))
            with LockWaitSampler(dsn) as sampler_b:
                span_b = load.window(migrate)
            # (c) the application on its new schema, with no job and none of migrator's triggers: the baseline of
            # the requests that ran while the flag said contracted (the rollback from there runs while it does).
            with LockWaitSampler(dsn) as sampler_c:
                span_c = load.window(lambda: time.sleep(args.baseline_seconds if not errors else 0))
        duration_b = span_b[1] - span_b[0]
        if errors:
            # The lifecycle itself failed: say how, rather than a ledger check against tables that may not exist.
            raise SystemExit(f"the lifecycle failed after {len(steps)} steps: {errors[0]!r}")
        base, mig, new = load.between(span_a), load.between(span_b), load.between(span_c)

        def in_contracted(end: float, lat: float) -> bool:
            """Whether a transaction started while the flag said contracted (it ran the new schema's code path)."""
            return sampler_b.state_at(end - lat / 1000) == "contracted"

        def own_p99(end: float, lat: float) -> float:
            """The baseline p99 of the code path a transaction ran."""
            return new["p99_ms"] if in_contracted(end, lat) else base["p99_ms"]

        with psycopg.connect(dsn) as conn:
            lost, differ, zombies, ids = conn.execute(LEDGER_CHECK).fetchone()  # type: ignore[misc]
            final_state = state.read(conn, spec).state
        db.dispose()

    result = {
        "rows": args.rows,
        "backfill_rate": args.backfill_rate,
        "mode": "tuned" if args.tuned else "full_speed" if args.full_speed else "default",
        "pace": args.pace,
        "rate": args.rate,
        "clients": args.clients,
        "baseline": {**public(base), "longest_lock_wait_ms": round(sampler_a.longest * 1000, 1)},
        "migration": {
            **public(mig),
            "seconds": round(duration_b, 1),
            "longest_lock_wait_ms": round(sampler_b.longest * 1000, 1),
            "steps": [{k: v for k, v in st.items() if k in ("step", "seconds")} for st in steps],
            # The tail, step by step: transactions over 1.5x the baseline's p99.
            "slow_by_step": slow_by_step(mig["_tx"], steps, 1.5 * base["p99_ms"], own_p99) if steps else {},
            "final_state": final_state,
            "error": str(errors[0]) if errors else None,
            "aborted": len(load.aborted()),
        },
        "p99_ratio": round(mig["p99_ms"] / max(base["p99_ms"], 1e-9), 2),
        "new_schema": {
            **public(new),
            "p99_vs_legacy": round(new["p99_ms"] / max(base["p99_ms"], 1e-9), 2),
            "longest_lock_wait_ms": round(sampler_c.longest * 1000, 1),
            "lifecycle_tx_in_contracted": sum(1 for t, lat in mig["_tx"] if in_contracted(t, lat)),
        },
        # Each transaction against the baseline of the code path it ran (legacy, or the new schema in contracted).
        "p99_ratio_own_path": round(pct([lat / max(own_p99(t, lat), 1e-9) for t, lat in mig["_tx"]], 99), 2),
        "ledger": {"ids_written": ids, "lost": lost, "differ": differ, "zombies": zombies},
        "lock_timeout_ms": LOCK_TIMEOUT_S * 1000,
        "aborted_examples": load.aborted()[:3],
    }
    if args.json:
        print(json.dumps(result))
    else:
        a, b = result["baseline"], result["migration"]
        mode = "hand-set caps (--tuned)" if args.tuned else "full speed" if args.full_speed else "default settings"
        mode += "".join(f", pace {item}" for item in args.pace)
        print(f"rows {args.rows:,}, pgbench -R {args.rate:g} -c {args.clients}, long jobs at {mode}")
        print(
            f"(a) baseline : {a['transactions']} tx, failed {a['failed']}, "
            f"p50 {a['p50_ms']} ms, p99 {a['p99_ms']} ms, max {a['max_ms']} ms"
        )
        print(
            f"(b) lifecycle: {b['transactions']} tx in {b['seconds']} s, failed {b['failed']}, aborted clients "
            f"{b['aborted']}, p50 {b['p50_ms']} ms, p99 {b['p99_ms']} ms, max {b['max_ms']} ms, "
            f"final state {b['final_state']}"
        )
        c = result["new_schema"]
        print(
            f"(c) new schema: {c['transactions']} tx, failed {c['failed']}, p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms "
            f"({c['p99_vs_legacy']}x (a): the application's own queries on the split tables, no job, no trigger)"
        )
        print(f"p99 ratio (b)/(a): {result['p99_ratio']} (goal <= 1.5)")
        print(
            f"p99 ratio, each transaction against its own code path's baseline ((c) for the "
            f"{c['lifecycle_tx_in_contracted']} run in contracted, (a) otherwise): {result['p99_ratio_own_path']}"
        )
        print(
            f"longest lock wait seen by a pgbench statement: {b['longest_lock_wait_ms']} ms "
            f"(goal < lock_timeout {result['lock_timeout_ms']:.0f} ms)"
        )
        led = result["ledger"]
        print(
            f"ledger check: {led['ids_written']} ids written, lost {led['lost']}, differ {led['differ']}, "
            f"zombies {led['zombies']} (goal 0/0/0)"
        )
        slow = {k: v for k, v in b["slow_by_step"].items() if v["slow"]}
        if slow:
            print(f"transactions over 1.5x the baseline p99 ({1.5 * a['p99_ms']:.2f} ms), by lifecycle step:")
            for k, v in slow.items():
                print(
                    f"  {k:24s} {v['slow']:5d} of {v['tx']:5d} tx ({v['slow_own_path']} over 1.5x their own path's), "
                    f"p99 {v['p99_ms']} ms, slowest {v['max_ms']} ms"
                )
        if b["error"]:
            print(f"lifecycle error: {b['error']}")
        for ex in result["aborted_examples"]:
            print(f"aborted: {ex}")


if __name__ == "__main__":
    main()

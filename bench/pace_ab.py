"""Interleaved A/B of one paced job under one application load: which of two settings of the pace slows fewer of
the application's requests, and how long the job takes with each.

A single run of a latency bench on a shared 2-core machine varies by ±30% (its baseline window alone by ±20%), so
two settings measured in separate runs can hardly be told apart. Here one pgbench (zero_downtime's script: a flag
read, a write, a read per request, 200 a second) runs throughout; the job runs `--reps` times with each setting in
turn (A, B, A, B…), and each setting's share of slow requests (over 1.5x the baseline window's p99, and over a fixed
3 ms) is counted over all its runs.

    python bench/pace_ab.py --job reverse --reps 3 A:REVERSE_ACTIVE_CHUNK_TIME=0.01 B:REVERSE_ACTIVE_CHUNK_TIME=0.005

A setting is NAME:CONSTANT=VALUE[,CONSTANT=VALUE...], each CONSTANT one of the module constants listed in TUNABLE.
Jobs: backfill (expand, then the measured backfill, then a rollback to legacy that drops the split tables), reverse
(the rollback from contracted, then contract again, unmeasured), guard (the guards' validation that switch-reads,
switch-writes and contract run), sampler (the pace's sampler alone for 30 s, no chunk: what watching the application
costs it; `SAMPLE_EVERY=1000` turns the sampling off).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import zero_downtime as zd
from common import find_pgbench, scratch_database

from migrator import guards, operations
from migrator.copy import reverse
from migrator.db import Database
from migrator.engine import pace
from migrator.engine.context import Context, NullReporter
from migrator.phases import backfill, contract, switch_reads, validate
from migrator.phases.backfill import Backfill
from migrator.phases.base import RollbackOptions
from migrator.phases.contract import Contract
from migrator.phases.expand import Expand
from migrator.phases.switch_reads import SwitchReads
from migrator.phases.switch_writes import SwitchWrites
from migrator.phases.validate import Validate
from migrator.spec import load_spec
from migrator.verify import runner

TUNABLE: dict[str, Any] = {
    "ACTIVE_CHUNK_SCALE": pace,
    "SLOWER": pace,
    "TAIL": pace,
    "SAMPLE_EVERY": pace,
    "SPARSE_EVERY": pace,
    "INCREASE": pace,
    "DECREASE": pace,
    "MIN_DUTY": pace,
    "INITIAL_DUTY": pace,
    "MIN_KIND_STATEMENTS": pace,
    "REVERSE_ACTIVE_CHUNK_TIME": reverse,
    "PACED_CHUNK_ROWS": runner,
}
DEFAULTS = {name: getattr(module, name) for name, module in TUNABLE.items()}


def setting(text: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = text.partition(":")
    values: dict[str, Any] = {}
    for pair in filter(None, rest.split(",")):
        key, _, value = pair.partition("=")
        if key not in TUNABLE:
            raise argparse.ArgumentTypeError(f"{key} is not tunable here; one of {', '.join(TUNABLE)}")
        values[key] = type(DEFAULTS[key])(float(value))
    return name, values


def use(values: dict[str, Any]) -> None:
    for key, default in DEFAULTS.items():
        setattr(TUNABLE[key], key, values.get(key, default))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", default="postgresql://root@127.0.0.1/test")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--job", choices=["backfill", "reverse", "guard", "sampler"], default="reverse")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("settings", nargs="+", type=setting, help="NAME:CONSTANT=VALUE[,...]; NAME: alone for defaults")
    args = ap.parse_args()
    spec = load_spec()
    with scratch_database(args.dsn, "bench_ab") as dsn, tempfile.TemporaryDirectory() as tmp:
        logdir = Path(tmp)
        script, maxid = zd.prepare(dsn, spec, args.rows, logdir)
        db = Database(dsn)
        ctx = Context(spec, db, reporter=NullReporter())
        fast_contract = Contract(contract.Options(quiet_period=1.0, wait=60))

        def measured() -> Callable[[], object]:
            if args.job == "backfill":
                Expand().apply(ctx)
                return lambda: Backfill(backfill.Options()).apply(ctx)
            if args.job == "reverse":
                return lambda: operations.rollback(ctx, opts=RollbackOptions())
            if args.job == "sampler":

                def sample() -> None:
                    with pace.Pacer(lambda: db.raw_connect(autocommit=True)):
                        time.sleep(30)

                return sample
            return lambda: guards.require_in_sync(db, spec, "pace_ab")

        def after() -> None:
            use({})
            if args.job == "backfill":
                operations.rollback(ctx, opts=RollbackOptions())
                operations.rollback(ctx, opts=RollbackOptions(drop_tables=True))
            elif args.job == "reverse":
                fast_contract.apply(ctx)

        spans: list[tuple[str, tuple[float, float]]] = []
        with zd.Load(find_pgbench(), dsn, script, logdir, rate=200, clients=4, maxid=maxid) as load:
            base = load.window(lambda: time.sleep(30))
            backfilled = [Expand(), Backfill(backfill.Options(full_speed=True))]
            before = {
                "backfill": [],
                "guard": backfilled,
                "sampler": backfilled,
                "reverse": [
                    Expand(),
                    Backfill(backfill.Options(full_speed=True)),
                    Validate(validate.Options(full_speed=True)),
                    SwitchReads(switch_reads.Options(percent=100)),
                    SwitchWrites(),
                    fast_contract,
                ],
            }[args.job]
            for phase in before:
                phase.apply(ctx)
            for _ in range(args.reps):
                for name, values in args.settings:
                    job = measured()
                    use(values)
                    time.sleep(3)
                    spans.append((name, load.window(job)))
                    after()
        threshold = 1.5 * load.between(base)["p99_ms"]
        print(f"job {args.job}, {args.rows:,} rows; slow = over {threshold:.2f} ms (1.5x the baseline's p99)")
        totals: dict[str, list[float]] = {}
        for name, span in spans:
            txs = load.between(span)["_tx"]
            slow = sum(1 for _, lat in txs if lat > threshold)
            over3 = sum(1 for _, lat in txs if lat > 3.0)
            t = totals.setdefault(name, [0, 0, 0, 0.0])
            t[0], t[1], t[2], t[3] = t[0] + len(txs), t[1] + slow, t[2] + over3, t[3] + span[1] - span[0]
            print(f"  {name}: {span[1] - span[0]:6.1f} s, {len(txs):6d} requests, slow {slow / max(len(txs), 1):.2%}")
        for name, (n, slow, over3, seconds) in totals.items():
            share, share3 = slow / max(n, 1), over3 / max(n, 1)
            print(f"{name}: {seconds:.0f} s in all, slow {share:.2%} of {n:.0f} requests (over 3 ms {share3:.2%})")

        db.dispose()


if __name__ == "__main__":
    main()

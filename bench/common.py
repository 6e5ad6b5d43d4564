"""Helpers the benchmark scripts share: a scratch database, pgbench, a stopwatch, the median.

from common import Stopwatch, median, run_pgbench, scratch_database

with scratch_database("postgresql://root@127.0.0.1/test", "bench_x") as dsn:
    result = run_pgbench(dsn, "SELECT 1;", clients=4, duration=10)
    print(result.tps)
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

DEFAULT_DSN = "postgresql://root@127.0.0.1/test"


def dsn_for(dsn: str, dbname: str) -> str:
    """The same server and credentials as `dsn` (URL or key=value form), another database."""
    return make_conninfo(dsn, dbname=dbname)


@contextmanager
def scratch_database(dsn: str, prefix: str = "bench") -> Iterator[str]:
    """Create an empty database `<prefix>_<random>` on dsn's server, yield its DSN, drop it afterwards.

    The server may be shared: the random suffix keeps concurrent runs apart, and the drop (WITH FORCE) happens
    even when the benchmark fails or is interrupted.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    try:
        yield dsn_for(dsn, name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def find_pgbench() -> str:
    """pgbench of the newest PostgreSQL under /usr/lib/postgresql, else the one on PATH."""

    def version(path: str) -> float:
        try:
            return float(path.split("/")[-3])
        except ValueError:
            return 0.0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), key=version)
    if found:
        return found[-1]
    on_path = shutil.which("pgbench")
    if on_path:
        return on_path
    raise SystemExit("pgbench not found: install postgresql-client (or the server package) or put it on PATH")


@dataclass(frozen=True)
class PgbenchResult:
    tps: float  # transactions (script runs) per second, without initial connection time
    latency_ms: float | None  # average latency
    transactions: int | None
    failed: int | None  # PG15+: failed transactions (serialization/deadlock errors) reported by pgbench
    output: str


_TPS = re.compile(r"^tps = ([0-9.]+) \((?:without initial connection time|excluding connections establishing)\)", re.M)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)


def parse_pgbench(output: str) -> PgbenchResult:
    """Read pgbench's summary (PostgreSQL 14+ wording, and the older "excluding connections establishing")."""
    tps = _TPS.search(output)
    if tps is None:
        raise RuntimeError(f"no tps line in pgbench output:\n{output}")

    def number(pattern: re.Pattern[str]) -> str | None:
        m = pattern.search(output)
        return m.group(1) if m else None

    latency, processed, failed = number(_LATENCY), number(_PROCESSED), number(_FAILED)
    return PgbenchResult(
        tps=float(tps.group(1)),
        latency_ms=float(latency) if latency else None,
        transactions=int(processed) if processed else None,
        failed=int(failed) if failed else None,
        output=output,
    )


def run_pgbench(
    dsn: str,
    script: str,
    *,
    clients: int,
    duration: float,
    defines: Mapping[str, object] | None = None,
    pgbench: str | None = None,
    extra: Sequence[str] = (),
) -> PgbenchResult:
    """Run a custom pgbench script (-n: no vacuum of pgbench's own tables) for `duration` seconds."""
    with tempfile.NamedTemporaryFile("w", suffix=".pgbench", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        cmd = [pgbench or find_pgbench(), "-n", "-f", path, "-c", str(clients), "-j", str(clients)]
        cmd += ["-T", str(max(1, round(duration)))]
        for key, value in (defines or {}).items():
            cmd += ["-D", f"{key}={value}"]
        cmd += [*extra, dsn]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    finally:
        os.unlink(path)
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench exited {proc.returncode}:\n{proc.stderr.strip()}\n{proc.stdout.strip()}")
    return parse_pgbench(proc.stdout)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


class Stopwatch:
    """`with Stopwatch() as sw: …` then `sw.seconds` (also readable while running)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.stopped: float | None = None

    def __enter__(self) -> Stopwatch:
        self.started = time.perf_counter()
        self.stopped = None
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stopped = time.perf_counter()

    @property
    def seconds(self) -> float:
        return (self.stopped if self.stopped is not None else time.perf_counter()) - self.started

"""The default pace of a long job: as fast as the application's latency allows (DESIGN.md §Health-driven pacing).

The signal is the application's own statement latency, read from pg_stat_activity: a backend that has gone idle
still shows when its last statement started (query_start) and ended (state_change), so a sampler thread that reads
the view often sees nearly every statement the application's backends complete, and how long each took. It tags
each with whether a chunk of ours was running, and once per window the controller compares the two means: if the
application's statements are slower while the job works than while it rests, or any backend waits on a lock one of
the tool's sessions holds, it cuts the job's duty cycle (multiplicative decrease); otherwise it raises it (additive
increase). The duty cycle is the share of wall time the job works: after a chunk of t seconds a worker rests
t * (1 - duty) / duty. While the application is at work, chunks are also short (a tenth of --chunk-time): at the
same rows per second, the application's tail grows with the size of each chunk's burst of WAL and I/O, whatever
the chunk locks (bench/chunk_cost.py: 2,000 rows/s in chunks of 1,000 rows cost a steady writer's p99 2.1-2.8x,
even into tables the application never touches, and in chunks of 100 rows 1.2-1.4x; taking the chunk's row
locks out changed nothing measurable). While nothing else runs in the database there is nobody to slow down and
the job runs flat out in full-size chunks.

The health signals (engine/health.py) stop a job; the pacer only slows it. `--max-rows-per-second` still caps the
rate on top, and `--full-speed` turns the pacer off.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

log = logging.getLogger(__name__)

SAMPLE_EVERY = 0.025  # seconds between two pg_stat_activity samples
WINDOW = 1.0  # seconds of samples behind each decision
FIRST_WINDOW = 0.25  # the first decision comes sooner: on an idle server the job should not start at half speed
LONGEST_WINDOW = 5.0  # a window waits this long at most for enough statements of both sides
MIN_STATEMENTS = 10  # per side (working, resting) before the two are compared
INITIAL_DUTY = 0.5
MIN_DUTY = 0.05
INCREASE = 0.05
DECREASE = 0.6
# The application counts as slowed down when the tail of its statement latencies (TAIL quantile: with tens of
# statements a window, the 90th percentile is the highest that is not one statement's noise) is this much longer
# while the job works than while it rests: the p99 goal is 1.5x the baseline.
TAIL = 0.9
SLOWER = 1.5
ACTIVE_CHUNK_SCALE = 0.1  # while the application is at work: 10 ms chunks
PROBE_REST = 0.1  # seconds: at full duty a worker rests this long once a window, so resting samples exist

# One row per client backend of this database that is not migrator's (nor this sampler): whether it is running a
# statement, the start and duration of its last statement if it is idle, and whether it waits on one of our locks.
SAMPLE_SQL = (
    "SELECT a.pid, a.state = 'active', extract(epoch FROM a.query_start),"
    "       CASE WHEN a.state IN ('idle', 'idle in transaction')"
    "            THEN extract(epoch FROM a.state_change - a.query_start) END,"
    "       CASE WHEN a.wait_event_type = 'Lock' THEN EXISTS ("
    "         SELECT 1 FROM pg_catalog.pg_stat_activity t"
    "          WHERE t.pid = ANY (pg_catalog.pg_blocking_pids(a.pid))"
    "            AND t.application_name LIKE 'migrator%%') ELSE false END"
    "  FROM pg_catalog.pg_stat_activity a"
    " WHERE a.backend_type = 'client backend' AND a.pid <> pg_catalog.pg_backend_pid()"
    "   AND a.datname = pg_catalog.current_database()"
    "   AND coalesce(a.application_name, '') NOT LIKE 'migrator%%'"
)


@dataclass
class Window:
    """What one decision rests on: the application's statement latencies (seconds) that ended while the job worked
    and while it rested, samples with an application statement running, samples with a backend waiting on us."""

    working: list[float] = field(default_factory=list)
    resting: list[float] = field(default_factory=list)
    active: int = 0
    blocked: int = 0
    started: float = 0.0

    @staticmethod
    def tail(latencies: Sequence[float]) -> float:
        """The 90th percentile: the tail is what a copy hurts (lock waits, commits behind its WAL); the mean
        hardly moves."""
        return sorted(latencies)[int(len(latencies) * TAIL)] if latencies else 0.0


class Pacer:
    """Shared by the workers of one job. `working()` wraps each chunk; `rest(seconds)` follows it."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]] | None,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        # connect None: no sampling, full speed (--full-speed, or a caller that paces by other means)
        self._connect = connect
        self._on_change = on_change
        self.duty = INITIAL_DUTY if connect is not None else 1.0
        # Short chunks while the application is at work (their bursts of WAL and I/O are what its commits wait
        # behind), full-size ones otherwise; full-size until the first decision, so a small job on an idle
        # server is not slowed by it.
        self.chunk_scale = 1.0
        self.reason = "starting" if connect is not None else "full speed (--full-speed)"
        self._busy = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._window = Window(started=time.monotonic() - (WINDOW - FIRST_WINDOW))
        self._probe_due = False
        self.decisions = 0
        self._reported = self.duty  # the duty the last pace line said

    # -- the workers' side ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1

    def rest(self, seconds: float, stop: threading.Event | None = None) -> None:
        """After a chunk of `seconds`: rest so that work takes `duty` of the wall time."""
        if self._thread is None:
            return
        with self._lock:
            duty, probe = self.duty, self._probe_due
            self._probe_due = False
        wait = seconds * (1 - duty) / duty if duty < 1 else 0.0
        if probe:
            wait = max(wait, PROBE_REST)
        if wait > 0:
            (stop or self._stop).wait(min(wait, 5.0))

    def describe(self) -> str:
        """The current pace and what holds it back, for progress and status."""
        return f"duty {self.duty:.0%}: {self.reason}"

    # -- the sampler -------------------------------------------------------------------------------------------

    def __enter__(self) -> Pacer:
        if self._connect is not None:
            self._thread = threading.Thread(target=self._sample_loop, name="migrator-pacer", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _sample_loop(self) -> None:
        assert self._connect is not None
        try:
            conn = self._connect()
        except psycopg.Error as exc:
            # Without the sampler the job keeps the duty it has: paced, not stopped (health signals still apply).
            log.warning("pacer: cannot sample pg_stat_activity (%s); the job keeps a %.0f%% duty", exc, self.duty * 100)
            return
        seen: dict[int, float] = {}  # pid -> start of the last statement already counted
        with conn:
            conn.autocommit = True
            while not self._stop.wait(SAMPLE_EVERY):
                try:
                    rows = conn.execute(SAMPLE_SQL).fetchall()
                except psycopg.Error as exc:
                    log.warning("pacer: sampling failed (%s); the job keeps a %.0f%% duty", exc, self.duty * 100)
                    return
                ended = []
                for pid, _running, started, took, _waits in rows:
                    # A backend seen for the first time may have gone idle long ago: only what ends from now counts.
                    if took is not None and started is not None and seen.setdefault(pid, started) != started:
                        seen[pid] = started
                        ended.append(float(took))
                self.observe(ended, sum(1 for r in rows if r[1]), sum(1 for r in rows if r[4]))

    def observe(self, ended: Sequence[float], active: int, blocked: int, now: float | None = None) -> None:
        """One sample: the durations of the application's statements that ended since the last one (seconds), its
        statements running now, its backends waiting on our locks. Decides once a window is full."""
        now = time.monotonic() if now is None else now
        with self._lock:
            w = self._window
            (w.working if self._busy else w.resting).extend(ended)
            w.active += active > 0
            w.blocked += blocked
            if now - w.started < WINDOW:
                return
            if self._decide(w) or now - w.started >= LONGEST_WINDOW:
                self._window = Window(started=now)

    def _decide(self, w: Window) -> bool:
        """Adjust the pace from a window; False when the window needs more statements first."""
        work, rest = w.tail(w.working), w.tail(w.resting)
        self.chunk_scale = ACTIVE_CHUNK_SCALE
        if w.blocked:
            self.duty = max(MIN_DUTY, self.duty * DECREASE)
            self.reason = f"application sessions waited on the job's locks ({w.blocked} samples)"
        elif len(w.working) + len(w.resting) < MIN_STATEMENTS and not w.active:
            # Hardly anything runs besides us (a few statements a second at most): nobody to slow down.
            self.duty, self.chunk_scale = 1.0, 1.0
            self.reason = "no other sessions at work in the database"
        elif len(w.working) < MIN_STATEMENTS or len(w.resting) < MIN_STATEMENTS:
            # Not enough of one side to compare (at full duty there is no resting at all): ask for a short rest.
            self._probe_due = len(w.resting) < MIN_STATEMENTS
            return False
        elif work > rest * SLOWER:
            self.duty = max(MIN_DUTY, self.duty * DECREASE)
            self.reason = (
                f"application slower while copying ({work * 1000:.2f} vs {rest * 1000:.2f} ms, 90th percentile)"
            )
        else:
            self.duty = min(1.0, self.duty + INCREASE)
            self.reason = f"application unaffected ({work * 1000:.2f} vs {rest * 1000:.2f} ms, 90th percentile)"
        self.decisions += 1
        if self._on_change is not None and _crossed(self._reported, self.duty):
            self._reported = self.duty
            self._on_change(f"pace: {self.describe()}")
        return True


def _crossed(before: float, after: float) -> bool:
    """A change since the last line worth a new one: to or from full speed, or by half or more."""
    if (before >= 1.0) != (after >= 1.0):
        return True
    return after <= before / 2 or after >= before * 2

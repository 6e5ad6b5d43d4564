"""The default pace of a long job: as fast as the application's latency allows (DESIGN.md §Health-driven pacing).

The signal is Little's law. At a steady request rate, the application's mean latency is proportional to the number
of its backends active at any instant, so a sampler thread counts the active client backends that are not the
tool's, and tags each sample with whether a chunk of ours was running. Once per window the controller compares the
two means: if the application is busier while the job works than while it rests, or any backend waits on a lock one
of the tool's sessions holds, it cuts the job's duty cycle (multiplicative decrease); otherwise it raises it
(additive increase). The duty cycle is the share of wall time the job works: after a chunk of t seconds a worker
rests t * (1 - duty) / duty. While nothing else is active there is nobody to slow down and the job runs flat out.

The health signals (engine/health.py) stop a job; the pacer only slows it. `--max-rows-per-second` still caps the
rate on top, and `--full-speed` turns the pacer off.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

log = logging.getLogger(__name__)

SAMPLE_EVERY = 0.025  # seconds between two pg_stat_activity samples
WINDOW = 1.0  # seconds of samples behind each decision
FIRST_WINDOW = 0.25  # the first decision comes sooner: on an idle server the job should not start at half speed
LONGEST_WINDOW = 5.0  # a window waits this long at most for enough samples of both sides
MIN_SAMPLES = 8  # per side (working, resting) before the two are compared
INITIAL_DUTY = 0.5
MIN_DUTY = 0.05
INCREASE = 0.1
DECREASE = 0.6
# The application counts as slowed down when it is this much busier while the job works than while it rests
# (a p99 goal of 1.5x the baseline leaves room for about this much on the mean).
BUSIER = 1.25
NOISE = 0.05  # active backends: below this difference two means are the same
MIN_CHUNK_SCALE = 0.1  # lock waits behind the job shrink its chunk time down to this share of the target
PROBE_REST = 0.1  # seconds: at full duty a worker rests this long once a window, so resting samples exist

SAMPLE_SQL = (
    "SELECT count(*) FILTER (WHERE a.state = 'active'"
    "         AND coalesce(a.application_name, '') NOT LIKE 'migrator%%'),"
    "       count(*) FILTER (WHERE a.wait_event_type = 'Lock' AND EXISTS ("
    "         SELECT 1 FROM pg_catalog.pg_stat_activity t"
    "          WHERE t.pid = ANY (pg_catalog.pg_blocking_pids(a.pid))"
    "            AND t.application_name LIKE 'migrator%%'))"
    "  FROM pg_catalog.pg_stat_activity a"
    " WHERE a.backend_type = 'client backend' AND a.pid <> pg_catalog.pg_backend_pid()"
    "   AND a.datname = pg_catalog.current_database()"
)


@dataclass
class Window:
    """The samples behind one decision: active application backends while working / resting, lock waiters."""

    working: int = 0
    working_active: int = 0
    resting: int = 0
    resting_active: int = 0
    blocked: int = 0
    started: float = 0.0

    def mean(self, working: bool) -> float:
        n, active = (self.working, self.working_active) if working else (self.resting, self.resting_active)
        return active / n if n else 0.0


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
        # A chunk holds its rows' locks until it commits, so an application write to one of them waits up to a
        # chunk's time: lock waits shorten the chunks, not only the duty.
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
        with conn:
            conn.autocommit = True
            while not self._stop.wait(SAMPLE_EVERY):
                try:
                    row = conn.execute(SAMPLE_SQL).fetchone()
                except psycopg.Error as exc:
                    log.warning("pacer: sampling failed (%s); the job keeps a %.0f%% duty", exc, self.duty * 100)
                    return
                assert row is not None
                self.observe(int(row[0]), int(row[1]))

    def observe(self, active: int, blocked: int, now: float | None = None) -> None:
        """One sample; decides once a window is full."""
        now = time.monotonic() if now is None else now
        with self._lock:
            w = self._window
            if self._busy:
                w.working += 1
                w.working_active += active
            else:
                w.resting += 1
                w.resting_active += active
            w.blocked += blocked
            if now - w.started < WINDOW:
                return
            if self._decide(w) or now - w.started >= LONGEST_WINDOW:
                self._window = Window(started=now)

    def _decide(self, w: Window) -> bool:
        """Adjust the duty from a window; False when the window needs more samples first."""
        work, rest = w.mean(True), w.mean(False)
        if w.blocked:
            self.duty = max(MIN_DUTY, self.duty * DECREASE)
            self.chunk_scale = max(MIN_CHUNK_SCALE, self.chunk_scale / 2)
            self.reason = f"application sessions waited on the job's locks ({w.blocked} samples)"
        elif w.working_active == 0 and w.resting_active == 0:
            self.duty, self.chunk_scale = 1.0, 1.0
            self.reason = "no other active sessions"
        elif w.working < MIN_SAMPLES or w.resting < MIN_SAMPLES:
            # Not enough of one side to compare (at full duty there is no resting at all): ask for a short rest.
            self._probe_due = w.resting < MIN_SAMPLES
            return False
        elif work > rest * BUSIER + NOISE:
            self.duty = max(MIN_DUTY, self.duty * DECREASE)
            self.reason = f"application busier while copying ({work:.2f} vs {rest:.2f} active sessions)"
        else:
            self.duty = min(1.0, self.duty + INCREASE)
            self.chunk_scale = min(1.0, self.chunk_scale * 1.25)
            self.reason = f"application unaffected ({work:.2f} vs {rest:.2f} active sessions)"
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

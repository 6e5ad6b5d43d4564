"""The default pace of a long job: as fast as the application's latency allows (DESIGN.md §Health-driven pacing).

The signal is the application's own statement latency, read from pg_stat_activity: a backend that has gone idle
still shows when its last statement started (query_start) and ended (state_change), so a sampler thread that reads
the view often sees the last statement of each of the application's requests, when it ran and how long it took;
the statements before it (the write between two reads) it sees only while they run, and counts them by that.
The pacer knows when each chunk ran, so it knows which statements ran clear of every chunk (and of the moments
after one, when the next commits flush the chunk's WAL): those give the application's resting latency. Once a
second the controller compares the tail of the application's recent statements with the resting tail, for all of
them and for each kind (first keyword: a request waits on its slowest statement, and slowed writes among many
fast reads hardly move the tail of all statements): above SLOWER times it, or when any backend waits on a lock
one of the tool's sessions holds, it cuts the job's duty cycle by 30% (at most once per compared window); otherwise
it raises it by 10%. A job starts slowly (5%, short chunks) until the first decision says whether anyone else
works, and again whenever the application starts working after an idle spell. The target is the application's
whole tail, not its statements during chunks alone: with short chunks at a high duty, every statement is near
some chunk, and a comparison of statements during and between chunks found them alike while the tail was 3x
(session 9). When too few statements ran clear of the chunks, a worker rests long enough for some to (a probe).
The sampler looks every 25 ms while a chunk runs and just after, every 100 ms while the job rests (reading the view
costs the application too), and weighs each statement by the dense samples its sample stands for.

The duty cycle is the share of wall time the job works: after a chunk of t seconds a worker rests
t * (1 - duty) / duty. While the application is at work, chunks are also short (a twentieth of --chunk-time): at the
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
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg

from migrator.engine.health import HIDDEN_SESSION

log = logging.getLogger(__name__)

SAMPLE_EVERY = 0.025  # seconds between two pg_stat_activity samples while a chunk runs, and for DENSE_AFTER after it
# Seconds between two samples while the job rests. Reading pg_stat_activity costs the application's requests too:
# the sampler alone, every 25 ms, put 1.1-3.8 points more of them over 3 ms, every 100 ms 0.7 (bench/pace_ab.py
# --job sampler, session 15); sampling everything every 50 ms instead was no better, as the pace then saw too few
# of the statements the chunks slow. So the sampler looks densely where the chunks are, and sparsely between them,
# where it only needs enough statements for the resting tail; each statement counts with the weight of the interval
# it was seen in (a sparse sample sees about SPARSE_EVERY / SAMPLE_EVERY fewer), so the tails stay the tails of
# what ran, not of where the sampler looked.
SPARSE_EVERY = 0.1
WINDOW = 1.0  # seconds between two decisions
FIRST_WINDOW = 0.25  # the first decision comes sooner: on an idle server the job should not start at half speed
RECENT = 3.0  # seconds of the application's statements whose tail is compared
REFERENCE = 30.0  # seconds of statements clear of the chunks that give the resting tail
# After a chunk commits (asynchronously), the application's next commits flush its WAL: a statement ending this soon
# after a chunk does not count as resting.
GRACE = 0.05
# Dense sampling goes on this long after a chunk ends: the statements it slowed end up to GRACE later, and are seen
# at the sample after they end.
DENSE_AFTER = GRACE + SAMPLE_EVERY
MIN_STATEMENTS = 10  # application statements in RECENT before the tails are compared
MIN_RESTING = 20  # statements clear of the chunks in REFERENCE before the tails are compared
# Statements of one kind (their first keyword: select, update, with, commit...) in RECENT before that kind's tail is
# compared on its own. A request runs several statements and waits on the slowest: in zero_downtime's mix of two
# reads and a write, a copy slowed 3% of the requests — the writes' tail — but only 1% of all statements, so the
# tail of all statements stayed within SLOWER while the requests' p99 was 2.5x (session 10). Few: the writes in the
# middle of a request are only seen while running (see _sighted), 3-8 a second at 200 requests/s; at 30 the writes'
# tail was never judged and a rollback's reverse copy ran at 10-14% duty with the requests' p99 at 2.9x (one run);
# at 10, 2-5% duty and 1.66-1.73x (session 11).
MIN_KIND_STATEMENTS = 10
# A slow start: until the first decision the job assumes the application is at work (short chunks, a low duty), and
# whenever the application starts working after an idle spell the duty starts from here again; it then rises by
# INCREASE a second for as long as the application is unaffected. Starting at 50% cost more than the rest of a
# run: the first 20 s of cuts (one per RECENT) held a third of a 24 s backfill's slowed transactions.
INITIAL_DUTY = 0.05
MIN_DUTY = 0.02
# Small steps both ways, and one cut per RECENT seconds (the statements from before a cut must age out of the
# compared tail before it can say whether the cut was enough): with +5 points and x0.6 every second, the duty swung
# 2% -> 18% -> 3% within seconds, and those swings cost the tail more than their mean rate (a steady rate of about
# the same mean kept the writer's p99 near half of it).
INCREASE = 1.1
DECREASE = 0.7
# The application counts as slowed down when the tail of its recent statement latencies (the TAIL quantile, the
# goal's own: p99 within 1.5x of the baseline) is this much longer than the resting tail. Measured with the 95th
# percentile instead: the pace ran about twice as fast and the writer's p99 was 2.8x (median of 3) against 2.2x.
# SLOWER is below the goal's 1.5 because the server's statement times leave out what the client adds (its
# scheduling, the network, transactions queued behind a slow one) and because the controller rides the edge it
# is given: at 1.3 the writer's p99 was 1.84x its baseline (median of 3 runs), at 1.2 1.49x (session 10). Through
# a whole lifecycle every paced step slowed about the same share of the requests whatever its job and duty (the
# edge sets it): at 1.2 the lifecycle's p99 was 1.53x, at 1.1 1.44x (medians of 3), taking a fifth longer
# (bench/zero_downtime.py, session 16).
TAIL = 0.99
SLOWER = 1.1
# While the application is at work: 5 ms chunks. A request that overlaps a chunk is the one slowed (backfill alone,
# 100k rows, session 12: of the requests that overlapped a chunk 17% were slow at 10 ms chunks, 9% at 5 ms; the
# others 1.2-1.7% and 0.7-1.3%), and the pace rides its edge, so shorter chunks let the job work more for the same
# tail. 2 ms chunks paid a commit per hundred rows: the backfill took 10x as long for about the same tail.
ACTIVE_CHUNK_SCALE = 0.05
PROBE_REST = 0.3  # seconds a worker rests when too few statements ran clear of the chunks
RECHECK = 0.05  # a resting worker looks this often whether the pace went to full speed

# One row per client backend of this database that is not migrator's (nor this sampler): whether it is running a
# statement, the start and duration of its last statement and how long ago it ended if it is idle, whether it
# waits on one of our locks, the statement's first keyword, and whether the row is hidden from this role (state, times
# and query of other roles' sessions need pg_read_all_stats).
SAMPLE_SQL = (
    "SELECT a.pid, a.state = 'active', extract(epoch FROM a.query_start),"
    "       CASE WHEN a.state IN ('idle', 'idle in transaction')"
    "            THEN extract(epoch FROM a.state_change - a.query_start) END,"
    "       CASE WHEN a.wait_event_type = 'Lock' THEN EXISTS ("
    "         SELECT 1 FROM pg_catalog.pg_stat_activity t"
    "          WHERE t.pid = ANY (pg_catalog.pg_blocking_pids(a.pid))"
    "            AND t.application_name LIKE 'migrator%%') ELSE false END,"
    "       extract(epoch FROM pg_catalog.clock_timestamp() - a.state_change),"
    "       pg_catalog.lower(pg_catalog.substring(a.query, '^\\s*([A-Za-z]+)')), "
    + HIDDEN_SESSION
    + "  FROM pg_catalog.pg_stat_activity a"
    # (A session hidden from this role shows no backend_type either: it is kept, and counted as hidden.)
    " WHERE (a.backend_type = 'client backend' OR " + HIDDEN_SESSION + ") AND a.pid <> pg_catalog.pg_backend_pid()"
    "   AND a.datname = pg_catalog.current_database()"
    "   AND coalesce(a.application_name, '') NOT LIKE 'migrator%%'"
)


Sample = list[tuple[float, float]]  # statements' (latency, weight)


def tail(latencies: Sequence[tuple[float, float]]) -> float:
    """The TAIL quantile of (latency, weight) pairs: the tail is what a copy hurts (commits behind its WAL, lock
    waits); the mean hardly moves. Of n pairs of weight 1, the int(n * TAIL)-th smallest."""
    if not latencies:
        return 0.0
    ordered = sorted(latencies)
    target = TAIL * sum(w for _, w in ordered)
    seen = 0.0
    for latency, weight in ordered:
        seen += weight
        if seen > target:
            return latency
    return ordered[-1][0]


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
        # behind), full-size ones otherwise; short until the first decision (a quarter of a second: on an idle
        # server the job is at full speed after it).
        self.chunk_scale = ACTIVE_CHUNK_SCALE if connect is not None else 1.0
        self.reason = "starting" if connect is not None else "full speed (--full-speed)"
        self._lock = threading.Lock()
        self._one_at_a_time = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # a chunk started (or the job ends): the sampler samples densely from now
        self._thread: threading.Thread | None = None
        self._running: dict[int, float] = {}  # chunk in flight -> its start (monotonic)
        self._keys = itertools.count()
        self._chunks: deque[tuple[float, float]] = deque()  # recent chunks' (start, end)
        # (end, latency, resting, kind, weight)
        self._statements: deque[tuple[float, float, bool, str, float]] = deque()
        # pid -> (start of the statement seen running, its start and last sight on our clock, its kind)
        self._running_seen: dict[int, tuple[Any, float, float, str]] = {}
        self._active = 0  # samples since the last decision with an application statement running
        self._blocked = 0  # samples since the last decision with a backend waiting on our locks
        self._hidden = 0  # most sessions of other roles a sample since the last decision could not look into
        self._decided = time.monotonic() - (WINDOW - FIRST_WINDOW)
        self._probe_due = False
        self._cut_at = float("-inf")  # when the duty was last cut for a slower application
        self.decisions = 0
        self.samples = 0  # pg_stat_activity samples taken
        self._reported = self.duty  # the duty the last pace line said

    # -- the workers' side ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        # While the application is at work, one chunk at a time across the job's workers: two at once (validate's
        # two workers) held both cores of a 2-core box, and a request that came then waited for one.
        with self._one_at_a_time if self.chunk_scale < 1.0 else contextlib.nullcontext():
            started = time.monotonic()
            with self._lock:
                key = next(self._keys)
                self._running[key] = started
            self._wake.set()
            try:
                yield
            finally:
                with self._lock:
                    del self._running[key]
                    self._chunks.append((started, time.monotonic()))

    def chunk(self, start: float, end: float) -> None:
        """Record a chunk that ran from `start` to `end` (monotonic seconds); `working()` does it for real ones."""
        with self._lock:
            self._chunks.append((start, end))

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
        stop = stop or self._stop
        deadline = time.monotonic() + min(wait, 5.0)
        # A rest ends early once the pace finds nobody else at work: the slow start's first rests would otherwise
        # hold every short job on an idle server for a fifth of a second.
        while (left := deadline - time.monotonic()) > 0 and not stop.wait(min(left, RECHECK)):
            if self.duty >= 1.0:
                return

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
        self._wake.set()
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
        self._running_seen.clear()
        with conn:
            conn.autocommit = True
            last = time.monotonic()
            while self._next_sample(last):
                try:
                    rows = conn.execute(SAMPLE_SQL).fetchall()
                except psycopg.Error as exc:
                    log.warning("pacer: sampling failed (%s); the job keeps a %.0f%% duty", exc, self.duty * 100)
                    return
                now = time.monotonic()
                self.samples += 1
                # A sample after a sparse interval stands for the dense ones that were not taken.
                weight = min(max((now - last) / SAMPLE_EVERY, 1.0), max(SPARSE_EVERY / SAMPLE_EVERY, 1.0))
                last = now
                ended: list[tuple[float, float, str]] = []
                for pid, running, started, took, _waits, ago, kind, _hidden in rows:
                    # A backend seen for the first time may have gone idle long ago: only what ends from now counts.
                    if took is not None and started is not None and seen.setdefault(pid, started) != started:
                        seen[pid] = started
                        # When it ended on our clock: the server says how long ago (no clock comparison needed).
                        end = now - max(0.0, float(ago or 0.0))
                        ended.append((end - float(took), end, kind or ""))
                    self._sighted(pid, bool(running), started, float(ago or 0.0), kind or "", now, ended)
                active, blocked, hidden = (sum(1 for r in rows if r[i]) for i in (1, 4, 7))
                self.observe(ended, active, blocked, now, hidden=hidden, weight=weight)

    def _next_sample(self, last: float) -> bool:
        """Wait until the next sample is due (densely while a chunk runs and DENSE_AFTER after it, sparsely
        otherwise; a chunk that starts wakes the sampler); False once the job ends."""
        while not self._stop.is_set():
            now = time.monotonic()
            left = last + self._interval(now) - now
            if left <= 0:
                return True
            self._wake.wait(left)
            self._wake.clear()
        return False

    def _interval(self, now: float) -> float:
        with self._lock:
            near = bool(self._running) or bool(self._chunks and now - self._chunks[-1][1] < DENSE_AFTER)
        return SAMPLE_EVERY if near else max(SPARSE_EVERY, SAMPLE_EVERY)

    def _sighted(
        self, pid: int, running: bool, started: Any, age: float, kind: str, now: float, ended: list[Any]
    ) -> None:
        """A sample's sight of one backend. Only the last statement before a backend goes idle is seen ending; in
        a request of several statements the others (the write between two reads) would go unseen. A statement
        seen running whose backend went on to another before a sample saw it end counts as taking at least the
        time it was seen running (more often seen the longer it runs: the slow ones are the ones caught)."""
        prev = self._running_seen.pop(pid, None)
        if prev is not None and prev[0] != started:
            ended.append((prev[1], prev[2], prev[3]))
        # (Seen idle with the same start, its real duration was counted.)
        if running and started is not None:
            first = prev[1] if prev is not None and prev[0] == started else now - age
            self._running_seen[pid] = (started, first, now, kind)

    def observe(
        self,
        ended: Sequence[tuple[float, float, str]],
        active: int,
        blocked: int,
        now: float | None = None,
        hidden: int = 0,
        weight: float = 1.0,
    ) -> None:
        """One sample: the application's statements that ended since the last one ((start, end, kind), monotonic
        seconds and the first keyword), its statements running now, its backends waiting on our locks, the sessions
        this role may not look into; `weight`, how many dense samples it stands for. Decides once a window has
        passed."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for start, end, kind in ended:
                self._statements.append((end, end - start, self._clear(start, end), kind, weight))
            while self._statements and self._statements[0][0] < now - REFERENCE:
                self._statements.popleft()
            while self._chunks and self._chunks[0][1] < now - REFERENCE:
                self._chunks.popleft()
            self._active += active > 0
            self._blocked += blocked
            self._hidden = max(self._hidden, hidden)
            if now - self._decided < WINDOW:
                return
            self._decide(now)
            self._decided, self._active, self._blocked, self._hidden = now, 0, 0, 0

    def _clear(self, start: float, end: float) -> bool:
        """Whether a statement ran clear of every chunk (and of the GRACE after each)."""
        if any(s <= end for s in self._running.values()):
            return False
        # Newest first, as chunks are recorded in the order they end: the scan stops at the first chunk that ended
        # (with its GRACE) before the statement started, so a sample costs a few chunks, not 30 s of them.
        for s, e in reversed(self._chunks):
            if e + GRACE < start:
                return True
            if s <= end:
                return False
        return True

    def _decide(self, now: float) -> None:
        """Adjust the pace from the statements seen."""
        recent, resting, kinds, fresh = self._split(now)
        idle = count(recent) < MIN_STATEMENTS and not self._active
        if not idle and self.chunk_scale == 1.0:
            # The application started working after an idle spell: a slow start again, not full speed.
            self.duty = min(self.duty, INITIAL_DUTY)
        if self._blocked:
            self.chunk_scale = ACTIVE_CHUNK_SCALE
            self.duty = max(MIN_DUTY, self.duty * DECREASE)
            self.reason = f"application sessions waited on the job's locks ({self._blocked} samples)"
        elif idle and self._hidden:
            # Sessions whose statements this role may not see are no proof that nobody works: blind, the job keeps
            # to the slow start rather than run flat out next to an application it cannot measure.
            self.duty, self.chunk_scale = min(self.duty, INITIAL_DUTY), ACTIVE_CHUNK_SCALE
            self.reason = (
                f"cannot see the statements of {self._hidden} session(s) of other roles (GRANT pg_read_all_stats "
                "to the migration role); held at the slow start"
            )
        elif idle:
            # Hardly anything runs besides us (a few statements a second at most): nobody to slow down.
            self.duty, self.chunk_scale = 1.0, 1.0
            self.reason = "no other sessions at work in the database"
        elif count(resting) < MIN_RESTING:
            # The application is at work, but too few of its statements ran clear of the chunks to know its
            # resting latency: short chunks, and a rest long enough for some.
            self.chunk_scale = ACTIVE_CHUNK_SCALE
            self._probe_due = True
            return
        else:
            self.chunk_scale = ACTIVE_CHUNK_SCALE
            now_tail, rest_tail, which = _slowest(recent, resting, kinds)
            figures = f"{now_tail * 1000:.2f} vs {rest_tail * 1000:.2f} ms resting, {TAIL:.0%} of {which}"
            if now_tail > rest_tail * SLOWER:
                if now - self._cut_at >= RECENT:
                    self.duty = max(MIN_DUTY, self.duty * DECREASE)
                    self._cut_at = now
                self.reason = f"application slower ({figures})"
            else:
                self.duty = min(1.0, self.duty * INCREASE)
                self.reason = f"application unaffected ({figures})"
            # Keep the resting figure fresh: when the last clear statements are old, rest once for new ones.
            if not fresh:
                self._probe_due = True
        self.decisions += 1
        if self._on_change is not None and _crossed(self._reported, self.duty):
            self._reported = self.duty
            self._on_change(f"pace: {self.describe()}")

    def _split(self, now: float) -> tuple[Sample, Sample, dict[str, tuple[Sample, Sample]], bool]:
        """One pass over the statements kept: the (latency, weight) pairs of the recent ones and of the resting ones,
        all together and by kind, and whether a recent one ran clear of the chunks. A pass once a second over up to
        REFERENCE seconds of statements is the pacer's own work, on the cores the application shares (7,000
        statements, about 30 s of them at 200 requests a second: 3-4 ms a decision in four passes, 2.3 ms in one;
        session 15)."""
        since = now - RECENT
        recent: Sample = []
        resting: Sample = []
        kinds: dict[str, tuple[Sample, Sample]] = {}
        fresh = False
        for end, lat, clear, kind, weight in self._statements:
            by_kind = kinds.get(kind)
            if by_kind is None:
                by_kind = kinds[kind] = ([], [])
            if end >= since:
                recent.append((lat, weight))
                by_kind[0].append((lat, weight))
                fresh = fresh or clear
            if clear:
                resting.append((lat, weight))
                by_kind[1].append((lat, weight))
        return recent, resting, kinds, fresh


def count(sample: Sample) -> float:
    """How many statements a dense sampler would have seen (the minimums below are in those)."""
    return sum(w for _, w in sample)


def _slowest(recent: Sample, resting: Sample, kinds: dict[str, tuple[Sample, Sample]]) -> tuple[float, float, str]:
    """The recent and resting tails of the statements most slowed down: of all of them, or of one kind that ran often
    enough to have a tail of its own."""
    worst = (tail(recent), tail(resting), "its statements")
    for kind, (now_lat, rest_lat) in sorted(kinds.items()):
        if count(now_lat) >= MIN_KIND_STATEMENTS and count(rest_lat) >= MIN_RESTING:
            candidate = (tail(now_lat), tail(rest_lat), f"its {kind.upper() or '(unknown)'} statements")
            if candidate[0] * worst[1] > worst[0] * candidate[1]:  # a larger ratio, without dividing by 0
                worst = candidate
    return worst


def _crossed(before: float, after: float) -> bool:
    """A change since the last line worth a new one: to or from full speed, or by half or more."""
    if (before >= 1.0) != (after >= 1.0):
        return True
    return after <= before / 2 or after >= before * 2

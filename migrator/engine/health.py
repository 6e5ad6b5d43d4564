"""Health signals a long job checks between chunks (DESIGN.md §Health-driven pacing): while any is red the job
waits, and it fails closed: a signal that cannot be read counts as red (with a warning), unless the operator
chose to fail open.

Signals and their defaults (each a field of `Limits`, each an option of the long jobs):
- transactions older than `max_transaction_age` seconds (default 300): they hold back vacuum's horizon, and the
  copy's dead tuples then pile up (sessions of this database hidden from the role make it unreadable);
- replication: every slot's retained WAL and every standby's replay lag, in bytes (`max_lag_bytes`, 1 GiB) and
  seconds (`max_lag_seconds`, 30 s);
- (auto)vacuum running on a table the job writes or reads: it yields to it;
- the WAL archiver failing (with archive_mode on, a failure newer than the last success).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

log = logging.getLogger(__name__)

CHECK_EVERY = 1.0  # seconds: the signals are read at most this often, whatever the number of workers and chunks


@dataclass(frozen=True)
class Limits:
    max_transaction_age: float = 300.0
    max_lag_bytes: int = 1 << 30
    max_lag_seconds: float = 30.0
    fail_open: bool = False


@dataclass(frozen=True)
class Reading:
    """One signal's verdict: red with the reason, or green."""

    signal: str
    red: bool
    detail: str = ""
    # What was measured, for metrics (e.g. the replication lag, red or not).
    measures: dict[str, float] = field(default_factory=dict)


# A session of another role, to a role without pg_read_all_stats: no state, times or query text (the same test as
# sql/doctor_sessions.sql; usesysid leaves out autovacuum's workers, which have no role). For pg_stat_activity AS a.
HIDDEN_SESSION = "(a.query = '<insufficient privilege>' AND a.usesysid IS NOT NULL)"


class Unreadable(Exception):
    """A signal read without error but without the data it needs (e.g. sessions hidden from the role)."""


def _old_transaction(conn: psycopg.Connection[Any], limits: Limits, _tables: Sequence[str]) -> Reading:
    # A hidden session's transaction age cannot be read, and silence is no proof that it is young.
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE old), coalesce(max(age) FILTER (WHERE old), 0), "
        "       (array_agg(pid ORDER BY age DESC) FILTER (WHERE old))[1], "
        "       count(*) FILTER (WHERE hidden AND datname = pg_catalog.current_database()) "
        "  FROM (SELECT pid, datname, extract(epoch FROM now() - xact_start) AS age, "
        "               xact_start < now() - make_interval(secs => %s) AS old, " + HIDDEN_SESSION + " AS hidden "
        "          FROM pg_catalog.pg_stat_activity AS a "
        "         WHERE pid <> pg_catalog.pg_backend_pid() "
        "           AND (backend_type = 'client backend' OR " + HIDDEN_SESSION + ") "
        "           AND coalesce(application_name, '') NOT LIKE 'migrator%%') AS s",
        [limits.max_transaction_age],
    ).fetchone()
    assert row is not None
    count, oldest, pid, hidden = row
    if hidden and not count:
        raise Unreadable(
            f"{hidden} session(s) of other roles are hidden from this role "
            "(GRANT pg_read_all_stats TO the migration role)"
        )
    if count:
        return Reading(
            "old_transaction",
            True,
            f"{count} transaction(s) open longer than "
            f"{limits.max_transaction_age:.0f} s (oldest {float(oldest):.0f} s, pid {pid})",
        )
    return Reading("old_transaction", False)


def _replication_lag(conn: psycopg.Connection[Any], limits: Limits, _tables: Sequence[str]) -> Reading:
    slots = conn.execute(
        "SELECT slot_name::text, pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn) "
        "  FROM pg_catalog.pg_replication_slots WHERE restart_lsn IS NOT NULL"
    ).fetchall()
    standbys = conn.execute(
        "SELECT coalesce(application_name, client_addr::text, pid::text), "
        "       pg_catalog.pg_wal_lsn_diff(sent_lsn, replay_lsn), extract(epoch FROM replay_lag) "
        "  FROM pg_catalog.pg_stat_replication"
    ).fetchall()
    measures = {
        "lag_bytes": float(max([r or 0 for _, r in slots] + [b or 0 for _, b, _ in standbys], default=0)),
        "lag_seconds": float(max([s or 0 for _, _, s in standbys], default=0)),
    }
    for name, retained in slots:
        if retained is not None and retained > limits.max_lag_bytes:
            return Reading(
                "replication_lag",
                True,
                f"slot {name} retains {int(retained):,} bytes of WAL (limit {limits.max_lag_bytes:,})",
                measures,
            )
    for name, behind, seconds in standbys:
        if (behind or 0) > limits.max_lag_bytes or (seconds or 0) > limits.max_lag_seconds:
            return Reading(
                "replication_lag",
                True,
                f"standby {name} is {int(behind or 0):,} bytes / {float(seconds or 0):.1f} s behind",
                measures,
            )
    return Reading("replication_lag", False, measures=measures)


def _vacuum(conn: psycopg.Connection[Any], _limits: Limits, tables: Sequence[str]) -> Reading:
    row = conn.execute(
        "SELECT (p.relid::regclass)::text, p.phase FROM pg_catalog.pg_stat_progress_vacuum p "
        " WHERE p.relid = ANY (ARRAY(SELECT pg_catalog.to_regclass(t) FROM pg_catalog.unnest(%s::text[]) t)) "
        " LIMIT 1",
        [list(tables)],
    ).fetchone()
    if row:
        return Reading("vacuum", True, f"vacuum is running on {row[0]} ({row[1]})")
    return Reading("vacuum", False)


def _wal_archiver(conn: psycopg.Connection[Any], _limits: Limits, _tables: Sequence[str]) -> Reading:
    row = conn.execute(
        "SELECT pg_catalog.current_setting('archive_mode') <> 'off', "
        "       coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false), last_failed_wal "
        "  FROM pg_catalog.pg_stat_archiver"
    ).fetchone()
    if row and row[0] and row[1]:
        return Reading("wal_archiver", True, f"the WAL archiver is failing (last failed: {row[2]})")
    return Reading("wal_archiver", False)


SIGNALS: tuple[Callable[[psycopg.Connection[Any], Limits, Sequence[str]], Reading], ...] = (
    _old_transaction,
    _replication_lag,
    _vacuum,
    _wal_archiver,
)


@dataclass
class Health:
    """The signals of one job, shared by its workers: read at most once a second, waited on between chunks."""

    tables: Sequence[str]
    limits: Limits = field(default_factory=Limits)
    on_change: Callable[[str], None] = field(default=lambda _m: None)
    # Every reading, green ones too, each time the signals are read (metrics and event hooks watch them).
    on_read: Callable[[list[Reading]], None] = field(default=lambda _r: None)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _checked: float = field(default=0.0, repr=False)
    _red: list[Reading] = field(default_factory=list, repr=False)
    _warned: set[str] = field(default_factory=set, repr=False)
    paused_seconds: float = 0.0
    pauses: int = 0

    def red(self, conn: psycopg.Connection[Any]) -> list[Reading]:
        """The red signals now (cached for CHECK_EVERY seconds)."""
        with self._lock:
            if time.monotonic() - self._checked < CHECK_EVERY:
                return list(self._red)
            readings = [self._read(signal, conn) for signal in SIGNALS]
            red = [r for r in readings if r.red]
            self.on_read(readings)
            if [r.signal for r in red] != [r.signal for r in self._red]:
                self.on_change("paused: " + "; ".join(r.detail for r in red) if red else "health green again: resumed")
            self._red, self._checked = red, time.monotonic()
            return list(red)

    def _read(
        self, signal: Callable[[psycopg.Connection[Any], Limits, Sequence[str]], Reading], conn: psycopg.Connection[Any]
    ) -> Reading:
        name = signal.__name__.lstrip("_")
        try:
            with conn.transaction():
                return signal(conn, self.limits, self.tables)
        except (psycopg.Error, Unreadable) as exc:
            if name not in self._warned:
                self._warned.add(name)
                what = "ignored (--health-fail-open)" if self.limits.fail_open else "counted as red (fail closed)"
                self.on_change(f"health signal {name} cannot be read ({str(exc).strip().splitlines()[0]}): {what}")
            return Reading(name, not self.limits.fail_open, f"{name} cannot be read")

    def wait_until_green(self, conn: psycopg.Connection[Any], stop: threading.Event) -> None:
        """Return once every signal is green (or `stop` is set); meanwhile the job holds no locks."""
        started = None
        while not stop.is_set() and self.red(conn):
            started = started or time.monotonic()
            time.sleep(CHECK_EVERY)
        if started is not None:
            with self._lock:
                self.paused_seconds += time.monotonic() - started
                self.pauses += 1

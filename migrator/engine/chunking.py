"""Chunking for the long jobs: the adaptive chunk sizer, the rate limiter and the keyset cursor condition."""

from __future__ import annotations

import threading
import time

from psycopg import sql

from migrator.spec import Spec
from migrator.sqlgen.compose import ident, raw

MIN_CHUNK = 10
MAX_CHUNK = 50_000
INITIAL_CHUNK = 500


class ChunkSizer:
    """Chooses the next chunk size from the observed rate, as pt-osc does (EWMA, bounded growth)."""

    def __init__(self, target: float, fixed: int | None = None, initial: int = INITIAL_CHUNK) -> None:
        self.target = target
        self.fixed = fixed
        self.size = fixed or initial
        self.rate: float | None = None

    def next(self) -> int:
        return self.fixed or self.size

    def observe(self, rows: int, seconds: float) -> None:
        if self.fixed or rows <= 0 or seconds <= 0:
            return
        rate = rows / seconds
        self.rate = rate if self.rate is None else 0.3 * rate + 0.7 * self.rate
        if seconds > 5 * self.target:
            # Far too slow (a lock wait, a cold cache): cut at once to what would have met the target.
            self.size = max(MIN_CHUNK, int(rows * self.target / seconds))
            return
        wanted = int(self.rate * self.target)
        self.size = max(MIN_CHUNK, min(MAX_CHUNK, wanted, int(self.size * 1.5) + 1))

    def shrink(self) -> None:
        """After a lock timeout or deadlock: retry with half (a fixed --batch-size shrinks too, then recovers)."""
        base = self.size if not self.fixed else self.fixed
        self.size = max(1, base // 2)
        if self.fixed:
            self.fixed = None


class RateLimiter:
    """Keeps a long job (shared by its threads) at or under `rate` rows per second: after each piece of work,
    wait until the rows done so far are due. On a busy primary the cap leaves CPU to the application."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.rows = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def done(self, rows: int) -> None:
        if not self.rate:
            return
        with self._lock:
            self.rows += rows
            due = self.rows / self.rate - (time.monotonic() - self.started)
        if due > 0:
            time.sleep(min(due, 5.0))


def after_cursor(spec: Spec, alias: str, has_cursor: bool) -> sql.Composable:
    """The keyset condition of a chunk: `alias.pk > %(lo)s`, or TRUE for a range's first chunk."""
    if not has_cursor:
        return raw("TRUE")
    # alias is one of our own fixed table aliases ("l", "s"), written as the templates write it
    return sql.SQL("{}.{} > %(lo)s::{}").format(raw(alias), ident(spec.pk), raw(spec.source.primary_key_type))

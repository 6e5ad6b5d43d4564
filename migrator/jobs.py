"""What a long job is doing now, kept in the database so that `migrator status`, run by anyone from anywhere, shows
it (DESIGN.md §Health-driven pacing): the job, its rows done of how many, its rate, its pace and the health signal
holding it back. `JobRecord` is an observer of the job's progress events; it writes the job's row at most every
WRITE_EVERY seconds (and at once when a signal turns red or green), and deletes it when the command ends. A job
killed outright leaves its row behind: status shows how long ago it was last heard from."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from migrator.db import Database
from migrator.spec import Spec
from migrator.sqlgen import names
from migrator.sqlgen.compose import render

log = logging.getLogger(__name__)

WRITE_EVERY = 2.0  # seconds between two writes of a job's row
# A row not written for this long belongs to a job that is stuck or gone (its writes come every WRITE_EVERY s,
# and a health pause writes on each change too; a chunk may take long under a lock wait, hence the margin).
STALE_AFTER = 60.0


@dataclass(frozen=True)
class JobStatus:
    """One job's row, as status shows it."""

    job: str
    client: str
    started_at: Any
    updated_at: Any
    age_seconds: float
    phase: str | None
    done: int | None
    total: int | None
    rows_per_second: float | None
    pace: str | None
    held_by: str | None

    @property
    def stale(self) -> bool:
        return self.age_seconds > STALE_AFTER

    def describe(self) -> str:
        """One line: what it does, how far, how fast, and what holds it back."""
        parts = [self.phase or self.job]
        if self.done is not None:
            parts.append(f"{self.done:,} of {self.total:,} rows" if self.total else f"{self.done:,} rows")
        if self.rows_per_second is not None:
            parts.append(f"{self.rows_per_second:,.0f} rows/s")
        if self.held_by:
            parts.append(f"paused: {self.held_by}")
        elif self.pace:
            parts.append(f"pace {self.pace}")
        line = ", ".join(parts)
        if self.stale:
            line += f" (last heard {self.age_seconds:,.0f} s ago: the job may have died; run it again to resume)"
        return line


def read(conn: psycopg.Connection[Any], spec: Spec) -> list[JobStatus]:
    """The jobs of this migration that are running (or were, and died without clearing their row)."""
    regclass = names.regclass_literal(spec.state_schema, "jobs")
    found = conn.execute(psycopg.sql.SQL("SELECT pg_catalog.to_regclass({})").format(regclass)).fetchone()
    if not found or found[0] is None:
        return []  # a state schema made by an older migrator, or none yet
    rows = conn.execute(
        render("jobs_select", jobs=names.state(spec, "jobs")), {"migration": spec.migration_name}
    ).fetchall()
    return [JobStatus(*row) for row in rows]


class JobRecord:
    """An observer (engine.context.Observer) that keeps the job's row up to date. It never fails the job: a write
    that fails is logged once and the record stops."""

    def __init__(self, db: Database, spec: Spec, job: str) -> None:
        self.db, self.spec, self.job = db, spec, job
        self.client = f"{socket.gethostname()} pid {os.getpid()}"
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._written_at = 0.0
        self._written = False
        self._broken = False
        self._fields: dict[str, Any] = {"phase": None, "done": None, "total": None, "rate": None, "pace": None}
        self._held: dict[str, str] = {}
        self._rate_from: tuple[float, int] | None = None  # (time, rows done) the rate is measured from

    def event(self, name: str, **fields: Any) -> None:
        if name == "progress":
            self._progress(fields)
        elif name == "throttled":
            with self._lock:
                self._held[str(fields.get("signal"))] = str(fields.get("detail") or fields.get("signal"))
            self._write(force=True)
        elif name == "unthrottled":
            with self._lock:
                self._held.pop(str(fields.get("signal")), None)
            self._write(force=True)

    def gate(self, name: str, **fields: Any) -> None:
        pass

    def _progress(self, fields: dict[str, Any]) -> None:
        now = time.monotonic()
        done = fields.get("done")
        with self._lock:
            f = self._fields
            f["phase"] = fields.get("phase") or self.job
            f["done"], f["total"] = done, fields.get("total")
            if fields.get("pace"):
                f["pace"] = fields["pace"]
            if isinstance(done, int):
                if self._rate_from is None or done < self._rate_from[1]:
                    self._rate_from = (now, done)
                elif now - self._rate_from[0] >= WRITE_EVERY:
                    # The rate over the last few seconds: what the job does now, not its average since it began.
                    f["rate"] = (done - self._rate_from[1]) / (now - self._rate_from[0])
                    self._rate_from = (now, done)
        self._write()

    def _write(self, force: bool = False) -> None:
        with self._lock:
            if self._broken or (not force and time.monotonic() - self._written_at < WRITE_EVERY):
                return
            params = {
                "migration": self.spec.migration_name,
                "job": self.job,
                "client": self.client,
                **self._fields,
                "held_by": "; ".join(self._held.values()) or None,
            }
            try:
                if self._conn is None:
                    self._conn = self.db.raw_connect(autocommit=True)
                self._conn.execute(render("jobs_upsert", jobs=names.state(self.spec, "jobs")), params)
                self._written, self._written_at = True, time.monotonic()
            except psycopg.Error as exc:
                # The row is for status to show; the job goes on without it.
                self._broken = True
                log.warning("could not record the job's progress for `migrator status` (%s)", exc)

    def close(self) -> None:
        """The command ended: its job is no longer running."""
        with self._lock:
            try:
                if self._written:
                    if self._conn is None or self._conn.closed:
                        self._conn = self.db.raw_connect(autocommit=True)
                    self._conn.execute(
                        psycopg.sql.SQL("DELETE FROM {} WHERE migration = %s AND job = %s").format(
                            names.state(self.spec, "jobs")
                        ),
                        [self.spec.migration_name, self.job],
                    )
            except psycopg.Error as exc:
                log.warning("could not clear the job's row for `migrator status` (%s)", exc)
            finally:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

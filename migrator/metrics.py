"""Prometheus metrics of a long job (backfill, validate, rollback's reverse backfill), fed by the events its
Observer is told (migrator.engine.context): progress lines, health readings, the migration's state.

`--metrics-port` serves them over HTTP while the job runs; `--metrics-file` writes them in the node-exporter
textfile format (atomically: a temporary file renamed over the old one) every METRICS_FILE_EVERY seconds and when
the job ends, for cron-style runs that no Prometheus could scrape in time. Each job has its own registry: nothing
the process imports elsewhere shows up, and tests may run many jobs in one process.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server, write_to_textfile

# Seconds between two writes of --metrics-file while the job runs (the node exporter reads it on every scrape).
METRICS_FILE_EVERY = 10.0
# rows/s is the rate over this many seconds: long enough to smooth chunk-to-chunk noise, short enough to show a pause.
RATE_WINDOW = 10.0
# A chunk is ~0.1 s by default (DESIGN.md §Backfill); validate's chunks run for seconds.
CHUNK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
REVERSE_BACKFILL = "reverse_backfill"
# Prometheus scrapes from another host, as it does any exporter; --metrics-address narrows it.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104


class Metrics:
    """The metrics of one migrator process, in their own registry; an Observer (event/gate) that feeds them."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.rows_copied = Counter(
            "migrator_rows_copied", "Rows the job copied (backfill, reverse backfill).", ["job"], registry=r
        )
        self.rows_validated = Counter("migrator_rows_validated", "Legacy rows validate compared.", ["job"], registry=r)
        self.rows_quarantined = Counter(
            "migrator_rows_quarantined",
            "Rows the copy put in quarantine (the split schema rejects them).",
            ["job"],
            registry=r,
        )
        self.rows_done = Gauge(
            "migrator_rows_done", "Rows the job has done so far, resumed ones included.", ["job"], registry=r
        )
        self.rows_expected = Gauge(
            "migrator_rows_expected", "Rows the job expects to do (an estimate).", ["job"], registry=r
        )
        self.rows_per_second = Gauge(
            "migrator_rows_per_second", f"Rows per second over the last {RATE_WINDOW:.0f} s.", ["job"], registry=r
        )
        self.chunk_seconds = Histogram(
            "migrator_chunk_duration_seconds",
            "Seconds per chunk (one transaction each).",
            ["job"],
            buckets=CHUNK_BUCKETS,
            registry=r,
        )
        self.throttled = Gauge(
            "migrator_throttled", "1 while this health signal is red and the job waits for it.", ["signal"], registry=r
        )
        self.lag_bytes = Gauge(
            "migrator_replication_lag_bytes", "Largest WAL a slot retains or a standby is behind by.", registry=r
        )
        self.lag_seconds = Gauge("migrator_replication_lag_seconds", "Largest standby replay lag.", registry=r)
        self.paused = Gauge(
            "migrator_paused", "1 while the migration's pause flag is set (`migrator pause`).", registry=r
        )
        self.running = Gauge("migrator_job_running", "1 while the job runs.", ["job"], registry=r)
        self.exit_code = Gauge("migrator_job_exit_code", "The job's exit code, once it ended.", ["job"], registry=r)
        self.end_time = Gauge(
            "migrator_job_end_timestamp_seconds", "When the job ended (Unix time).", ["job"], registry=r
        )
        self.migration = Info("migrator_migration", "The migration, the command running and its state.", registry=r)
        self._lock = threading.Lock()
        # Per (job, pass): the last cumulative `done`, to count what a progress line adds.
        self._last: dict[tuple[str, str], int] = {}
        self._samples: dict[str, deque[tuple[float, float]]] = {}

    # -- the Observer ------------------------------------------------------------------------------------------

    def event(self, name: str, **fields: Any) -> None:
        with self._lock:
            if name == "progress":
                self._progress(**fields)
            elif name == "health":
                self._health(fields["readings"])
            elif name == "state":
                self.migration.info({k: str(fields.get(k) or "") for k in ("migration", "command", "state")})
                self.paused.set(1 if fields.get("paused") else 0)

    def gate(self, name: str, **fields: Any) -> None:
        pass

    def _progress(self, job: str, done: int, total: int | None, **fields: Any) -> None:
        # rollback's progress lines come from its reverse backfill (the only part of it that reports progress).
        label = REVERSE_BACKFILL if str(fields.get("phase", "")).startswith("reverse backfill") else job
        if "rows" in fields:
            added = int(fields["rows"])
        else:
            # Cumulative counts: a smaller one starts a new pass (the reverse backfill's insert, then update pass).
            key = (label, str(fields.get("phase", "")))
            last = self._last.get(key, 0)
            added = done - last if done >= last else done
            self._last[key] = done
        (self.rows_validated if job == "validate" else self.rows_copied).labels(label).inc(max(0, added))
        if fields.get("rejected"):
            self.rows_quarantined.labels(label).inc(int(fields["rejected"]))
        self.rows_done.labels(label).set(done)
        if total is not None:
            self.rows_expected.labels(label).set(total)
        if fields.get("chunk_ms") is not None:
            self.chunk_seconds.labels(label).observe(float(fields["chunk_ms"]) / 1000)
        self.running.labels(label).set(1)
        self._rate(label, max(0, added))

    def _rate(self, label: str, added: int) -> None:
        now = time.monotonic()
        samples = self._samples.setdefault(label, deque())
        total = (samples[-1][1] if samples else 0.0) + added
        samples.append((now, total))
        while len(samples) > 2 and now - samples[1][0] > RATE_WINDOW:
            samples.popleft()
        first_t, first_total = samples[0]
        self.rows_per_second.labels(label).set((total - first_total) / (now - first_t) if now > first_t else 0.0)

    def _health(self, readings: Sequence[Any]) -> None:
        for reading in readings:
            self.throttled.labels(reading.signal).set(1 if reading.red else 0)
            if "lag_bytes" in reading.measures:
                self.lag_bytes.set(reading.measures["lag_bytes"])
            if "lag_seconds" in reading.measures:
                self.lag_seconds.set(reading.measures["lag_seconds"])

    # -- the job's start and end ---------------------------------------------------------------------------------

    def started(self, job: str) -> None:
        with self._lock:
            self.running.labels(job).set(1)

    def ended(self, job: str, exit_code: int) -> None:
        with self._lock:
            for child in {job, *(label for label, _ in self._last), *self._samples}:
                self.running.labels(child).set(0)
                self.rows_per_second.labels(child).set(0)
            self.exit_code.labels(job).set(exit_code)
            self.end_time.labels(job).set(time.time())

    def write(self, path: Path) -> None:
        """Write the textfile (a temporary file in the same directory, renamed over `path`)."""
        with self._lock:
            write_to_textfile(str(path), self.registry)


@contextmanager
def serving(
    job: str,
    port: int | None = None,
    address: str = ALL_INTERFACES,
    path: Path | None = None,
) -> Iterator[tuple[Metrics, int | None]]:
    """Metrics for `job`: served on `port` (0: any free port) and/or written to `path` while the job runs and
    at its end. Yields the metrics and the port they are served on. On the way out, the job's exit code is
    recorded (0, or the exception's `exit_code`, else 3)."""
    metrics = Metrics()
    metrics.started(job)
    server = None
    bound = None
    if port is not None:
        server, _thread = start_http_server(port, address, registry=metrics.registry)
        bound = server.server_port
    stop = threading.Event()
    writer = None
    if path is not None:
        metrics.write(path)

        def keep_writing() -> None:
            while not stop.wait(METRICS_FILE_EVERY):
                metrics.write(path)

        writer = threading.Thread(target=keep_writing, name="metrics-file", daemon=True)
        writer.start()
    code = 0
    try:
        yield metrics, bound
    except KeyboardInterrupt:
        code = 130
        raise
    except BaseException as exc:
        code = int(getattr(exc, "exit_code", 3) or 3)
        raise
    finally:
        stop.set()
        if writer is not None:
            writer.join()
        metrics.ended(job, code)
        if path is not None:
            metrics.write(path)
        if server is not None:
            server.shutdown()
            server.server_close()

"""The flag reader applications use to ask "read from the split tables?" / "write to them?".

    from migrator.flags import FlagReader

    flags = FlagReader(os.environ["DATABASE_URL"])          # once per process (after fork, under gunicorn)
    if flags.reads_split(request.user.id):                   # read_new --percent P: P% of users, always the same
        project = load_from_split(project_id)
    else:
        project = load_from_legacy(project_id)

The values are cached: one query loads them, and a background thread keeps them fresh. In "notify" mode it
LISTENs on `migrator_flags` and reloads as soon as a transition (or `set_flags`) commits; in "poll" mode (a
standby, where LISTEN is impossible, or a transaction-pooling pooler such as PgBouncer, where notifications never
arrive) it reloads every `max_age` seconds. Either way nothing is served older than `max_age` seconds while the
database answers. When it does not, the reader keeps serving the last values it loaded and logs a warning; only
the very first load raises (`FlagsUnavailable`), so a misconfigured application fails at start, not mid-migration.

Pooler-safe: no server-side prepared statements, no session settings (the statement timeout is a SET LOCAL in the
load's own transaction), one round trip per load. docs/flags.md is the guide for application teams.

Applications in other languages read the same flags with SQL (the functions live in the state schema):

    SELECT migrator.flag_state('core_project_split');      -- 'legacy' … 'contracted' ('legacy' if no row)
    SELECT migrator.read_percent('core_project_split');    -- 0..100, the share of keys that read the split side

and reproduce `bucket()` to split reads by key the same way Python does (the first 4 bytes of
sha256("<migration>\\x1f<key>") as an unsigned big-endian integer, modulo 100):

    SELECT ('x' || lpad(left(encode(sha256(convert_to('core_project_split' || chr(31) || '42', 'UTF8')),
                                    'hex'), 8), 16, '0'))::bit(64)::bigint % 100;   -- key 42 reads split if < P
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import psycopg
from psycopg import sql

from migrator.db import Database, libpq_dsn, transaction_pooled
from migrator.errors import OperationalError
from migrator.lifecycle import READS_SPLIT, START, WRITES_SPLIT
from migrator.sqlgen.compose import ident
from migrator.state import NOTIFY_CHANNEL

__all__ = ["FlagReader", "Flags", "FlagsUnavailable", "bucket"]

log = logging.getLogger(__name__)


APPLICATION_NAME = "migrator-flags"
LISTENER_APPLICATION_NAME = "migrator-flags-listener"  # the background thread's connection, in either mode
PROBE_APPLICATION_NAME = "migrator-flags-probe"  # a short-lived connection that looks for a transaction pooler
CONNECT_TIMEOUT = 3  # seconds; a reload that cannot connect must not hold a request for long
STATEMENT_TIMEOUT_MS = 2000  # set with SET LOCAL in each load's transaction: nothing leaks through a pooler
POLL = 0.5  # how often the listener wakes to check for close() and for max_age
MIN_PERIOD = 0.1  # the listener never reloads more often than this, however small max_age is
BACKOFF_START, BACKOFF_MAX = 0.1, 5.0
WARN_EVERY = 60.0  # while the database stays unreachable, repeat the warning at most this often
# Errors of the flag query that mean "expand has not created the state schema yet": the state is legacy.
NOT_EXPANDED = (psycopg.errors.InvalidSchemaName, psycopg.errors.UndefinedFunction)
# Errors of LISTEN that mean "notifications cannot work here": a standby ("cannot execute LISTEN during recovery").
NO_LISTEN = (psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.FeatureNotSupported)
Mode = Literal["notify", "poll"]


class FlagsUnavailable(OperationalError):
    """The first load of the flags failed: the application cannot know which side to use."""


@dataclass(frozen=True)
class Flags:
    """One consistent load of a migration's flags."""

    state: str
    read_percent: int
    loaded_at: float  # time.monotonic() when the query that produced it started


def bucket(migration: str, key: str | int) -> int:
    """The key's stable bucket 0..99: the same in every process, host and Python version (not hash())."""
    digest = hashlib.sha256(f"{migration}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100


class FlagReader:
    """Cached, thread-safe view of one migration's flags, refreshed on NOTIFY (or by polling) and at most
    `max_age` old.

    `listen=False` starts no background thread: a request that finds the values older than `max_age` reloads them.
    """

    def __init__(
        self,
        dsn: str,
        migration: str = "core_project_split",
        state_schema: str = "migrator",
        *,
        max_age: float = 5.0,
        listen: bool = True,
    ) -> None:
        if not max_age > 0:
            raise ValueError(f"max_age must be a positive number of seconds, got {max_age!r}")
        db = Database(dsn)  # parses the DSN (a bad one is a BadInputError) and knows how to print it masked
        self._display = db.display
        self._scrub = db.scrub
        self._conninfo = libpq_dsn(db.url)
        self.migration = migration
        self.max_age = max_age
        # One simple-protocol round trip, no parameters, so nothing is prepared on the server: the timeout is
        # local to this transaction, and a transaction pooler may hand the server connection on after COMMIT.
        self._statement = sql.SQL(
            "BEGIN READ ONLY; SET LOCAL statement_timeout = {timeout}; "
            "SELECT {flag_state}({m}), {read_percent}({m}), pg_catalog.pg_backend_pid(); COMMIT"
        ).format(
            timeout=sql.Literal(STATEMENT_TIMEOUT_MS),
            flag_state=ident(state_schema, "flag_state"),
            read_percent=ident(state_schema, "read_percent"),
            m=sql.Literal(migration),
        )
        self._lock = threading.Lock()  # guards _flags and the failure bookkeeping
        self._query_lock = threading.Lock()  # guards _query_conn (the app-side connection)
        self._query_conn: psycopg.Connection[Any] | None = None
        self._stop = threading.Event()
        self._mode: Mode = "poll"
        self._listener_ok = False  # the background thread LISTENs on a connection where notifications arrive
        self._thread_ok = False  # the background thread is connected and reloading (in either mode)
        self._listen_pid: int | None = None  # the backend the thread LISTENs on
        self._failing_since: float | None = None
        self._last_warning = 0.0
        self._retry_at = 0.0
        self._thread: threading.Thread | None = None

        # The first load raises: an application must not start without knowing which side to use.
        if listen:
            try:
                conn = self._connect(LISTENER_APPLICATION_NAME)
            except psycopg.Error as exc:
                raise self._unavailable(exc) from None
            try:
                self._flags = self._open_session(conn)
            except psycopg.Error as exc:
                conn.close()
                raise self._unavailable(exc) from None
            self._thread = threading.Thread(
                target=self._run, args=(conn,), name=f"migrator-flags-{migration}", daemon=True
            )
            self._thread.start()
        else:
            try:
                with self._query_lock:
                    self._flags, _ = self._load(self._app_conn())
            except psycopg.Error as exc:
                self._drop_query_conn()
                raise self._unavailable(exc) from None

    # -- what applications ask ----------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        """How changes reach this reader: "notify" (LISTEN, at once) or "poll" (a reload every max_age).

        "poll" on a standby (LISTEN is impossible during recovery), behind a transaction-pooling pooler
        (notifications would never arrive), and with listen=False.
        """
        return self._mode

    @property
    def listener_ok(self) -> bool:
        """True while the background thread LISTENs on a connection where notifications do arrive."""
        return self._listener_ok and self._mode == "notify"

    def flags(self) -> Flags:
        """The current flags as one consistent snapshot (state and percent from the same load)."""
        now = time.monotonic()
        with self._lock:
            current = self._flags
            age = now - current.loaded_at
            fresh = age <= self.max_age
            # While the background thread is connected it reloads (on NOTIFY and) on max_age itself: a request
            # never waits.
            delegated = self._thread_ok and age <= max(self.max_age, MIN_PERIOD) + 2 * POLL
            due = now >= self._retry_at
        if fresh or delegated or not due or self._stop.is_set():
            return current
        # Stale and nobody else is refreshing: reload here, unless another request thread already is.
        if self._query_lock.acquire(blocking=False):
            try:
                self._reload_on_app_conn()
            finally:
                self._query_lock.release()
        with self._lock:
            return self._flags

    def state(self) -> str:
        """The migration's state ('legacy' when the state schema or the migration's row does not exist)."""
        return self.flags().state

    def read_percent(self) -> int:
        """The share of request keys (0..100) that read from the split tables in read_new."""
        return self.flags().read_percent

    def reads_split(self, request_key: str | int | None = None) -> bool:
        """Read from the split tables? In read_new, true for read_percent% of keys, always the same ones.

        Without a key only 100% counts: a caller that cannot name its request keeps reading legacy until every
        request would read the split side. `42` and `"42"` are the same key.
        """
        f = self.flags()
        if f.state != "read_new":
            return f.state in READS_SPLIT
        if request_key is None:
            return f.read_percent >= 100
        return bucket(self.migration, request_key) < f.read_percent

    def writes_split(self) -> bool:
        """Write to the split tables (write_new and contracted)?"""
        return self.flags().state in WRITES_SPLIT

    def refresh(self) -> None:
        """Reload now. When the database does not answer, keep the last values and log a warning."""
        with self._query_lock:
            self._reload_on_app_conn()

    def close(self) -> None:
        """Stop the listener and close the connections. The last values stay readable."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=POLL + CONNECT_TIMEOUT + 1)
        with self._query_lock:
            self._drop_query_conn()

    def __enter__(self) -> FlagReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- loading ------------------------------------------------------------------------------------------

    def _connect(self, application_name: str) -> psycopg.Connection[Any]:
        # prepare_threshold=None: never a server-side prepared statement. Behind a transaction pooler a statement
        # prepared on one server connection is unknown (or already exists) on the next one.
        return psycopg.connect(
            self._conninfo,
            autocommit=True,
            application_name=application_name,
            connect_timeout=CONNECT_TIMEOUT,
            prepare_threshold=None,
        )

    def _load(self, conn: psycopg.Connection[Any]) -> tuple[Flags, int | None]:
        """One load, and the pid of the backend that answered (None when expand has not run)."""
        started = time.monotonic()
        row = None
        try:
            with conn.cursor() as cur:
                cur.execute(self._statement)
                while True:  # BEGIN, SET, SELECT, COMMIT: one result each
                    if cur.description is not None:
                        row = cur.fetchone()
                    if not cur.nextset():
                        break
        except NOT_EXPANDED:
            _rollback(conn)
            return Flags(START, 0, started), None  # expand has not run: no state schema, no functions
        except psycopg.Error:
            _rollback(conn)  # never leave a transaction open: a pooler would keep the server connection for it
            raise
        assert row is not None  # a SELECT of scalar functions returns one row
        return Flags(str(row[0]), int(row[1]), started), int(row[2])

    def _open_session(self, conn: psycopg.Connection[Any]) -> Flags:
        """Choose the mode for the background thread's new connection, LISTEN when notifications can arrive,
        and load. LISTEN comes before the load, on the same connection, so no transition slips between them."""
        row = conn.execute("SELECT pg_catalog.pg_backend_pid(), pg_catalog.pg_is_in_recovery()").fetchone()
        assert row is not None
        pid, in_recovery = int(row[0]), bool(row[1])
        mode: Mode = "notify"
        why = ""
        if in_recovery:
            mode, why = "poll", "the server is a standby (no LISTEN during recovery)"
        elif transaction_pooled(conn, lambda: self._connect(PROBE_APPLICATION_NAME), pid):
            mode, why = "poll", "a transaction-pooling pooler is in between (notifications would never arrive)"
        else:
            try:
                conn.execute(sql.SQL("LISTEN {}").format(ident(NOTIFY_CHANNEL)))
            except NO_LISTEN as exc:
                mode, why = "poll", f"LISTEN is refused ({_first_line(str(exc))})"
        flags, _ = self._load(conn)
        if mode != self._mode or why:
            log.info(
                "migration %s: flags reader in %s mode%s",
                self.migration,
                mode,
                f": {why}; polling every {self.max_age:g} s" if why else "",
            )
        self._mode = mode
        self._listen_pid = pid if mode == "notify" else None
        self._listener_ok = mode == "notify"
        self._thread_ok = True
        return flags

    def _store(self, flags: Flags) -> None:
        with self._lock:
            # Two loads may finish out of order (listener and a request thread); keep the one that started later.
            if flags.loaded_at >= self._flags.loaded_at:
                if flags.state != self._flags.state or flags.read_percent != self._flags.read_percent:
                    log.info(
                        "migration %s: flags now state=%s read_percent=%s",
                        self.migration,
                        flags.state,
                        flags.read_percent,
                    )
                self._flags = flags
            if self._failing_since is not None:
                log.warning("migration %s: flags reachable again at %s", self.migration, self._display)
            self._failing_since = None
            self._retry_at = 0.0

    def _failed(self, exc: BaseException, *, retry_in: float | None) -> None:
        """Note a failed reload: keep the last values, warn (not on every attempt), and space out retries.

        `retry_in` spaces out the request side's own attempts (None: leave its schedule as it is).
        """
        now = time.monotonic()
        with self._lock:
            if retry_in is not None:
                self._retry_at = now + retry_in
            first = self._failing_since is None
            if first:
                self._failing_since = now
            if not first and now - self._last_warning < WARN_EVERY:
                return
            self._last_warning = now
            age = now - self._flags.loaded_at
            kept = f"state={self._flags.state} read_percent={self._flags.read_percent}"
        log.warning(
            "migration %s: cannot reload flags from %s (%s); keeping %s, loaded %.0f s ago",
            self.migration,
            self._display,
            self._scrub(_first_line(str(exc))) or type(exc).__name__,
            kept,
            age,
        )

    def _app_conn(self) -> psycopg.Connection[Any]:
        """The request-side connection, opened on first use (caller holds _query_lock)."""
        if self._query_conn is None or self._query_conn.closed:
            self._query_conn = self._connect(APPLICATION_NAME)
        return self._query_conn

    def _drop_query_conn(self) -> None:
        if self._query_conn is not None:
            self._query_conn.close()
            self._query_conn = None

    def _reload_on_app_conn(self) -> None:
        """Reload on the request-side connection (caller holds _query_lock); never raises psycopg errors."""
        for attempt in (1, 2):
            try:
                self._store(self._load(self._app_conn())[0])
                return
            except psycopg.Error as exc:
                broken = self._query_conn is None or self._query_conn.broken or self._query_conn.closed
                self._drop_query_conn()
                # A connection the server dropped while idle fails once; a fresh one is worth one more try.
                if attempt == 1 and broken and not isinstance(exc, psycopg.errors.ConnectionTimeout):
                    continue
                self._failed(exc, retry_in=min(self.max_age, BACKOFF_MAX))
                return

    def _unavailable(self, exc: psycopg.Error) -> FlagsUnavailable:
        return FlagsUnavailable(
            f"cannot read the flags of migration {self.migration} from {self._display}: "
            f"{self._scrub(_first_line(str(exc)))}",
            hint="check the DSN and that the server is running; the application cannot choose a side without them",
        )

    # -- the background thread ----------------------------------------------------------------------------

    def _run(self, conn: psycopg.Connection[Any] | None) -> None:
        """Reload on each NOTIFY for this migration (notify mode) and whenever max_age passes; reconnect on loss."""
        backoff = BACKOFF_START
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self._connect(LISTENER_APPLICATION_NAME)
                    self._store(self._open_session(conn))  # anything may have changed while we were away
                    backoff = BACKOFF_START
                self._wait_and_reload(conn)
            except Exception as exc:  # the thread must outlive any failure; the app keeps serving
                self._listener_ok = False
                self._thread_ok = False
                if conn is not None:
                    conn.close()
                    conn = None
                if self._stop.is_set():
                    break
                self._failed(exc, retry_in=None)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
        self._listener_ok = False
        self._thread_ok = False
        if conn is not None:
            conn.close()

    def _wait_and_reload(self, conn: psycopg.Connection[Any]) -> None:
        """One turn: wait up to POLL for a notification (or until max_age), reload when needed."""
        with self._lock:
            loaded_at = self._flags.loaded_at
        until_stale = max(self.max_age, MIN_PERIOD) - (time.monotonic() - loaded_at)
        reload = until_stale <= 0
        if not reload:
            if self._mode == "notify":
                for note in conn.notifies(timeout=min(POLL, until_stale)):
                    if self._concerns_us(note.payload):
                        reload = True
                        break
            else:
                self._stop.wait(min(POLL, until_stale))
        if reload and not self._stop.is_set():
            flags, pid = self._load(conn)
            self._store(flags)
            if self._mode == "notify" and pid is not None and pid != self._listen_pid:
                # Another backend answered: a pooler hands our server connection around, and the one that LISTENs
                # is no longer ours. Notifications cannot be trusted; poll from now on.
                log.warning(
                    "migration %s: the flags connection changed backend (a transaction pooler?); polling every %g s",
                    self.migration,
                    self.max_age,
                )
                self._mode = "poll"
                self._listener_ok = False

    def _concerns_us(self, payload: str) -> bool:
        try:
            data = json.loads(payload)
        except ValueError:
            return True  # an unreadable payload costs one query; ignoring it could cost a missed transition
        return not isinstance(data, dict) or data.get("migration") in (None, self.migration)


def _rollback(conn: psycopg.Connection[Any]) -> None:
    """End a failed load's transaction; a connection that cannot even roll back is closed."""
    if conn.closed or conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        return
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error:
        conn.close()


def _first_line(message: str) -> str:
    message = message.strip()
    return message.splitlines()[0] if message else message

"""Connections: SQLAlchemy 2 engine over psycopg 3, per-transaction timeouts, the advisory lock, DSN masking.

Phases work on psycopg connections handed out by the engine's pool: psycopg's `sql` module composes every
identifier, and executing those compositions directly keeps one path from `plan` to `apply`.

Every session the tool opens pins `search_path` to `pg_catalog, pg_temp` (a startup option), so no object a
user creates in `public` can shadow a built-in function or operator the tool's SQL uses. The commands that take
the migration's advisory lock need a real session: `require_session` refuses a transaction-pooling pooler.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from sqlalchemy import create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import NullPool

from migrator.errors import BadInputError, ConnectionFailed, LockHeld, OperationalError

APPLICATION_NAME = "migrator"
# While a DDL statement waits for its lock, every application query on that table queues behind it; a short
# wait, retried with backoff, keeps that stall short (measured with bench/zero_downtime.py).
DEFAULT_LOCK_TIMEOUT = 0.5
DEFAULT_STATEMENT_TIMEOUT = 0.0  # 0 = no limit; backfill chunks and validation set their own
CONNECT_TIMEOUT = 5
# The tool's sessions resolve unqualified names in pg_catalog (then pg_temp) only: nothing a user may create in
# `public` (a function, an operator such as `=(varchar, varchar)`) can be picked instead of a built-in.
SEARCH_PATH = "pg_catalog, pg_temp"
SEARCH_PATH_OPTION = "-c search_path=pg_catalog,pg_temp"
# Settings that change the text or JSON form of a value (timestamptz offsets, bytea, intervals, floats), pinned
# wherever the tool turns a typed value into text or JSON (the meta encoding), so a value crosses the syncs the same
# whatever session the application wrote it from.
VALUE_SETTINGS: dict[str, str] = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "bytea_output": "hex",
    "extra_float_digits": "1",
}
# The tool's sessions pin them too (the backfill and the validation encode values as the sync functions do).
VALUE_SETTINGS_OPTION = " ".join(f"-c {k}={v.replace(' ', '')}" for k, v in VALUE_SETTINGS.items())
POOLER_HINT = (
    "use a direct or session-pooled DSN: the server's own host and port, or a PgBouncer database with "
    "pool_mode = session; nothing was changed"
)


class TransactionPooler(OperationalError):
    """The DSN goes through a transaction- or statement-pooling pooler: no session to hold a lock, SET or LISTEN."""


def _to_url(dsn: str) -> URL:
    """Accept a postgres URL (any driver suffix) or a libpq keyword string; return a psycopg-driver URL."""
    dsn = dsn.strip()
    if not dsn:
        raise BadInputError("empty DSN", hint="pass --dsn postgresql://user@host/db or set DATABASE_URL")
    if "://" not in dsn:
        try:
            parts = psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise BadInputError(f"cannot parse DSN: {_first_line(str(exc))}") from None
        query = {k: str(v) for k, v in parts.items() if k not in ("user", "password", "host", "port", "dbname")}
        host, port = parts.get("host"), parts.get("port")
        if host and str(host).startswith("/"):
            # A socket directory is no URL host (it would become the path): libpq takes it, and its port, as query
            # parameters of the URL instead.
            query["host"] = str(host)
            if port:
                query["port"] = str(port)
            host = port = None
        return URL.create(
            "postgresql+psycopg",
            username=_opt(parts.get("user")),
            password=_opt(parts.get("password")),
            host=_opt(host),
            port=int(str(port)) if port else None,
            database=_opt(parts.get("dbname")),
            query=query,
        )
    try:
        url = make_url(dsn)
    except (sa_exc.ArgumentError, ValueError):
        raise BadInputError(
            f"cannot parse DSN {mask_dsn(dsn)!r}", hint="use postgresql://user@host:port/dbname"
        ) from None
    if url.get_backend_name() not in ("postgresql", "postgres"):
        raise BadInputError(f"not a PostgreSQL DSN: {url.get_backend_name()}://…", hint="use postgresql://…")
    return url.set(drivername="postgresql+psycopg")


def _opt(v: object) -> str | None:
    return None if v in (None, "") else str(v)


def _first_line(msg: str) -> str:
    return msg.strip().splitlines()[0] if msg.strip() else msg


# Where a password sits in a URL (user:PASSWORD@) and in a keyword DSN (password=PASSWORD or password='…').
_URL_PASSWORD = re.compile(r"(://[^:/@]*:)([^@]*)(@)")
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)()")


def _password_pattern(dsn: str) -> re.Pattern[str]:
    return _URL_PASSWORD if "://" in dsn else _KEYWORD_PASSWORD


def dsn_password(dsn: str) -> str | None:
    """The password written in a DSN (even one that does not parse), so it can be scrubbed from any output."""
    match = _password_pattern(dsn).search(dsn)
    if not match or not match.group(2):
        return None
    value = match.group(2)
    return value[1:-1] if len(value) > 1 and value[0] == value[-1] == "'" else value


def mask_dsn(dsn: str) -> str:
    """The DSN as it may be printed: any password replaced by ***."""
    return _password_pattern(dsn).sub(r"\1***\3", dsn)


def libpq_dsn(url: URL) -> str:
    """A plain libpq URL (for pg_dump, psql, pgbench) from an engine URL."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass
class Database:
    """One database, reachable through a DSN. Cheap to create; connects lazily."""

    dsn: str
    application_name: str = APPLICATION_NAME

    def __post_init__(self) -> None:
        self.url = _to_url(self.dsn)
        self._engine: Engine | None = None

    @property
    def password(self) -> str | None:
        return self.url.password if isinstance(self.url.password, str) else None

    @property
    def display(self) -> str:
        return self.url.render_as_string(hide_password=True).replace("postgresql+psycopg", "postgresql")

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            # Options the DSN itself carries (?options=-c%20…) are kept; the search_path pin comes last and wins.
            given = self.url.query.get("options")
            given_text = " ".join(given) if isinstance(given, tuple) else (given or "")
            options = f"{given_text} {SEARCH_PATH_OPTION} {VALUE_SETTINGS_OPTION}".strip()
            self._engine = create_engine(
                self.url,
                poolclass=NullPool,  # a CLI run opens few connections; a pool would only hold them past their use
                connect_args={
                    "application_name": self.application_name,
                    "connect_timeout": CONNECT_TIMEOUT,
                    "options": options,
                },
            )
        return self._engine

    def scrub(self, message: str) -> str:
        """Remove the password from any text that is about to be shown."""
        pw = self.password
        return message.replace(pw, "***") if pw else message

    def raw_connect(self, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        """A psycopg connection (caller closes it). Connection failures become one clear OperationalError."""
        try:
            fairy = self.engine.raw_connection()
        except (sa_exc.OperationalError, sa_exc.InterfaceError, psycopg.OperationalError) as exc:
            orig = getattr(exc, "orig", None) or exc
            reason = _first_line(str(orig))
            hint = "check --dsn / DATABASE_URL and that the server is running"
            if "unsupported startup parameter" in reason:
                # PgBouncer refuses the `options` startup parameter that pins search_path unless told to ignore it.
                hint = f"a pooler refused the search_path startup option; {POOLER_HINT}"
            raise ConnectionFailed(f"cannot connect to {self.display}: {self.scrub(reason)}", hint=hint) from None
        conn = fairy.driver_connection
        assert isinstance(conn, psycopg.Connection)
        # Detach from SQLAlchemy's pool wrapper: with NullPool the psycopg connection is ours to close.
        fairy.detach()
        conn.autocommit = autocommit
        # No automatic server-side prepares: after 5 runs psycopg would prepare our keyset-range statements, and
        # PostgreSQL may then switch to a generic plan that scans whole tables instead of one key range.
        conn.prepare_threshold = None
        return conn

    @contextmanager
    def connect(self, *, autocommit: bool = False) -> Iterator[psycopg.Connection[Any]]:
        conn = self.raw_connect(autocommit=autocommit)
        try:
            yield conn
        finally:
            conn.close()

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


# -- the migration's advisory lock -------------------------------------------------------------------------


def advisory_key(*parts: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock, the same from every host and Python version."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True)
class LockHolder:
    pid: int
    application_name: str
    user: str
    client: str | None
    since: datetime | None

    def describe(self) -> str:
        where = f" from {self.client}" if self.client else ""
        since = f" since {self.since:%Y-%m-%d %H:%M:%S %Z}".rstrip() if self.since else ""
        return f"pid {self.pid} ({self.application_name or 'no application_name'}, user {self.user}{where}){since}"


def lock_holder(conn: psycopg.Connection[Any], key: int) -> LockHolder | None:
    # pg_locks splits a bigint advisory key into classid (high 32 bits) and objid (low 32 bits), objsubid = 1.
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    classid, objid = unsigned >> 32, unsigned & 0xFFFFFFFF
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """
            SELECT a.pid, coalesce(a.application_name, '') AS app, coalesce(a.usename::text, '') AS usr,
                   host(a.client_addr) AS client, a.backend_start
              FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = %s
               AND l.objid::bigint = %s AND l.objsubid = 1 AND l.database = (
                   SELECT oid FROM pg_database WHERE datname = current_database())
            """,
            [classid, objid],
        )
        row = cur.fetchone()
    if row is None:
        return None
    return LockHolder(row["pid"], row["app"], row["usr"], row["client"], row["backend_start"])


# -- a real session: no transaction pooler ------------------------------------------------------------------


def _probe(conn: psycopg.Connection[Any], query: str) -> tuple[Any, ...]:
    """One statement in its own transaction (so that a transaction pooler may hand the backend on after it)."""
    row = conn.execute(query).fetchone()
    if not conn.autocommit:
        conn.commit()
    assert row is not None
    return tuple(row)


def sibling_connection(conn: psycopg.Connection[Any], application_name: str) -> psycopg.Connection[Any]:
    """A second autocommit connection with the same parameters as `conn` (password included)."""
    params: dict[str, Any] = dict(conn.info.get_parameters())
    if conn.info.password:
        params["password"] = conn.info.password
    params["application_name"] = application_name
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    return psycopg.connect(**params, autocommit=True, prepare_threshold=None)


def transaction_pooled(
    conn: psycopg.Connection[Any],
    connect_other: Callable[[], psycopg.Connection[Any]],
    first_pid: int | None = None,
) -> bool:
    """Whether `conn` reaches PostgreSQL through a pooler that hands its backend to other clients between
    transactions (PgBouncer pool_mode = transaction or statement).

    Two signs, either one enough. Another client's connection, opened just after our statement, is served by our
    backend: a pooler reuses the server connection it has just got back (PgBouncer's default is last in, first
    out), where a direct or session-pooled connection keeps its backend to itself. Or our next statement is served
    by another backend. A backend serves one session from start to end, so neither sign can appear without a
    pooler: no false alarm (a backend is named by its pid and its server's start time, in case the other
    connection reaches another host of a multi-host DSN). Under heavy load on the same pool both may be missed.
    `first_pid` is our backend's pid when the caller has just asked for it; `connect_other` opens the probe.
    """
    query = "SELECT pg_catalog.pg_backend_pid(), pg_catalog.pg_postmaster_start_time()"
    ours = _probe(conn, query)
    if first_pid is not None and ours[0] != first_pid:
        return True
    try:
        with connect_other() as other:
            theirs: tuple[Any, ...] | None = _probe(other, query)
    except psycopg.OperationalError:
        theirs = None  # no second connection (a connection limit): the check below still answers
    if theirs == ours:
        return True
    return _probe(conn, query) != ours


def require_session(conn: psycopg.Connection[Any]) -> None:
    """Refuse a transaction-pooling pooler (TransactionPooler); make sure this session's search_path is pinned.

    An advisory lock, a session SET or a LISTEN on such a connection stays on a server connection that the pooler
    then gives to other clients: the lock outlives the command, the setting leaks.
    """
    pid, search_path = _probe(conn, "SELECT pg_catalog.pg_backend_pid(), pg_catalog.current_setting('search_path')")
    if transaction_pooled(conn, lambda: sibling_connection(conn, f"{APPLICATION_NAME}-probe"), pid):
        where = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
        raise TransactionPooler(
            f"{where} is a transaction-pooling pooler (PgBouncer pool_mode = transaction?): the server session "
            "changes between statements, so the migration's lock, SET and LISTEN cannot stay with this command",
            hint=POOLER_HINT,
        )
    if str(search_path).replace(" ", "") != SEARCH_PATH.replace(" ", ""):
        # A session pooler that drops startup options (PgBouncer ignore_startup_parameters = options): this is a
        # real session, so a session-level setting stays with it.
        _probe(conn, f"SELECT pg_catalog.set_config('search_path', '{SEARCH_PATH}', false)")


@contextmanager
def advisory_lock(conn: psycopg.Connection[Any], *parts: str) -> Iterator[None]:
    """Hold a session advisory lock for the block, or raise LockHeld naming who holds it.

    The connection must be a real session (require_session): a transaction pooler is refused first.
    """
    require_session(conn)
    key = advisory_key(*parts)
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()
    if not conn.autocommit:
        conn.commit()
    if not row or not row[0]:
        holder = lock_holder(conn, key)
        who = holder.describe() if holder else "another session (it has just released it; try again)"
        raise LockHeld(
            f"another operator is running a migrator command on this migration: {who}",
            hint="wait for it to finish, or ask its owner; nothing was changed",
        )
    try:
        yield
    finally:
        try:
            conn.execute("SELECT pg_advisory_unlock(%s)", [key])
            if not conn.autocommit:
                conn.commit()
        except psycopg.Error:
            pass  # the connection is gone, and with it the lock


def operator_name() -> str:
    """Who is acting, for the audit log: $MIGRATOR_OPERATOR, else the OS user."""
    try:
        return os.environ.get("MIGRATOR_OPERATOR") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def table_exists(conn: psycopg.Connection[Any], schema: str, table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [sql.Identifier(schema, table).as_string(conn)]).fetchone()
    return bool(row and row[0])


def scalar(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> Any:
    """The first column of the first row, or None when there is no row."""
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None

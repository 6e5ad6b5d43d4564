"""Connections: SQLAlchemy 2 engine over psycopg 3, per-transaction timeouts, the advisory lock, DSN masking.

Phases work on psycopg connections handed out by the engine's pool: psycopg's `sql` module composes every
identifier, and executing those compositions directly keeps one path from `plan` to `apply`.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
from collections.abc import Iterator
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

from migrator.errors import BadInputError, ConnectionFailed, LockHeld

APPLICATION_NAME = "migrator"
# While a DDL statement waits for its lock, every application query on that table queues behind it; a short
# wait, retried with backoff, keeps that stall short (measured with bench/zero_downtime.py).
DEFAULT_LOCK_TIMEOUT = 0.5
DEFAULT_STATEMENT_TIMEOUT = 0.0  # 0 = no limit; backfill chunks and validation set their own
CONNECT_TIMEOUT = 5


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
        port = parts.get("port")
        return URL.create(
            "postgresql+psycopg",
            username=_opt(parts.get("user")),
            password=_opt(parts.get("password")),
            host=_opt(parts.get("host")),
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
            self._engine = create_engine(
                self.url,
                poolclass=NullPool,  # a CLI run opens few connections; a pool would only hold them past their use
                connect_args={"application_name": self.application_name, "connect_timeout": CONNECT_TIMEOUT},
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
            raise ConnectionFailed(
                f"cannot connect to {self.display}: {self.scrub(_first_line(str(orig)))}",
                hint="check --dsn / DATABASE_URL and that the server is running",
            ) from None
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


@contextmanager
def advisory_lock(conn: psycopg.Connection[Any], *parts: str) -> Iterator[None]:
    """Hold a session advisory lock for the block, or raise LockHeld naming who holds it."""
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

"""Retry policies keyed on SQLSTATE.

Lock timeouts, deadlocks, serialization failures and lost connections are the ordinary weather of a live
database: the statement did nothing, so running it again is safe. Everything else is a real error and stops.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
from sqlalchemy import exc as sa_exc
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from migrator.errors import ConnectionFailed, OperationalError

T = TypeVar("T")

LOCK_NOT_AVAILABLE = "55P03"
SERIALIZATION_FAILURE = "40001"
DEADLOCK_DETECTED = "40P01"
QUERY_CANCELED = "57014"  # statement_timeout
TRANSIENT_SQLSTATES = frozenset({LOCK_NOT_AVAILABLE, SERIALIZATION_FAILURE, DEADLOCK_DETECTED})
# Connection-level classes: 08 connection exception, 57P01-57P03 admin shutdown / crash shutdown / cannot connect now.
CONNECTION_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE behind a psycopg or SQLAlchemy-wrapped error, if any."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig
    if isinstance(exc, psycopg.Error):
        return exc.sqlstate
    return None


def is_connection_loss(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionFailed):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    state = sqlstate(exc)
    if state and (state.startswith("08") or state in CONNECTION_SQLSTATES):
        return True
    return isinstance(orig, psycopg.OperationalError) and state is None


def is_transient(exc: BaseException) -> bool:
    return sqlstate(exc) in TRANSIENT_SQLSTATES or is_connection_loss(exc)


def retrying(
    *,
    attempts: int = 8,
    max_wait: float = 5.0,
    predicate: Callable[[BaseException], bool] = is_transient,
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> Retrying:
    """A bounded retry loop with exponential backoff and full jitter (so retrying operators don't march in step)."""
    return Retrying(
        retry=retry_if_exception(predicate),
        stop=stop_after_attempt(attempts),
        wait=wait_random_exponential(multiplier=0.05, max=max_wait),
        reraise=True,
        before_sleep=before_sleep,
    )


def run_with_retry(fn: Callable[[], T], **kwargs: object) -> T:
    for attempt in retrying(**kwargs):  # type: ignore[arg-type]
        with attempt:
            return fn()
    raise AssertionError("unreachable: tenacity reraises the last error")


# -- surviving a server restart ------------------------------------------------------------------------------

# How long one outage (a server restart, a failover) may last before a long job gives up on it. A window of time,
# not a number of attempts: with jittered backoff, ten attempts can be spent in well under a second.
RECONNECT_WINDOW = 60.0
RECONNECT_MAX_WAIT = 2.0


def connection_lost(exc: BaseException) -> bool:
    """The session is gone (server restart, failover, terminated backend), or a new one is refused while the server
    is down or starting up. Db.raw_connect reports a refused connection as migrator's own OperationalError and
    keeps the driver's error only as its context, so that is where we look."""
    if is_connection_loss(exc):
        return True
    cause = exc.__cause__ or exc.__context__
    return isinstance(exc, OperationalError) and cause is not None and is_connection_loss(cause)


def lost_message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"connection lost ({text[0] if text else type(exc).__name__})"


def survive_connection_loss(
    fn: Callable[[], T], on_lost: Callable[[BaseException], None], *, progress: Callable[[], int] | None = None
) -> T:
    """Run fn until it returns, running it again after a lost connection, for up to RECONNECT_WINDOW seconds per
    outage. An outage ends when fn made progress (progress() moved) since it began: a long backfill may live
    through several restarts, but a server that never comes back stops it."""
    began: float | None = None
    seen = progress() if progress else 0
    wait = 0.05
    while True:
        try:
            return fn()
        except Exception as exc:
            if not connection_lost(exc):
                raise
            now = time.monotonic()
            if progress is not None and progress() != seen:
                seen, began, wait = progress(), None, 0.05
            if began is None:
                began = now
                on_lost(exc)  # once per outage: its retries would only repeat it
            elif now - began > RECONNECT_WINDOW:
                raise
        # Jittered, so the workers of one or several hosts don't reconnect in step.
        time.sleep(random.uniform(wait / 2, wait))  # noqa: S311 — jitter, not a secret
        wait = min(RECONNECT_MAX_WAIT, wait * 2)

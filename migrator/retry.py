"""Retry policies keyed on SQLSTATE.

Lock timeouts, deadlocks, serialization failures and lost connections are the ordinary weather of a live
database: the statement did nothing, so running it again is safe. Everything else is a real error and stops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import psycopg
from sqlalchemy import exc as sa_exc
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from migrator.errors import ConnectionFailed

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

"""Session settings for one transaction: the one way the tool sets lock_timeout, statement_timeout and friends.

Only `SET LOCAL` semantics (set_config(..., true)): a setting dies with its transaction, so a pooled or reused
session never carries it into the next statement.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

# A transaction that locks both the legacy and the split tables meets application transactions that lock them in
# either order (forward sync: legacy then split; reverse sync: split then legacy). Waiting less than PostgreSQL's
# deadlock_timeout (1 s by default) means we give up and retry before the deadlock detector could pick an
# application transaction as its victim.
MULTI_TABLE_LOCK_TIMEOUT = 0.1

# Settings given in seconds by callers and sent as milliseconds.
_DURATIONS = frozenset({"lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout"})


def ms(seconds: float) -> str:
    """A duration setting's value: seconds as whole milliseconds ('50ms')."""
    return f"{int(seconds * 1000)}ms"


def setting_value(name: str, value: Any) -> str:
    if name in _DURATIONS and isinstance(value, int | float) and not isinstance(value, bool):
        return ms(value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def set_local(conn: psycopg.Connection[Any], **settings: Any) -> None:
    """Set each setting for the current transaction only, in one round trip. Names with a dot (custom settings
    such as migrator.origin) are written as `migrator__origin`; durations are given in seconds; None is skipped."""
    pairs = [(name.replace("__", "."), setting_value(name, v)) for name, v in settings.items() if v is not None]
    if not pairs:
        return
    calls = ", ".join("set_config(%s, %s, true)" for _ in pairs)
    conn.execute(f"SELECT {calls}", [x for pair in pairs for x in pair])


@contextmanager
def transaction(conn: psycopg.Connection[Any], **settings: Any) -> Iterator[psycopg.Connection[Any]]:
    """One short transaction with its own settings (e.g. lock_timeout=0.05), so a waiting DDL never queues the
    application behind it for long."""
    with conn.transaction():
        set_local(conn, **settings)
        yield conn

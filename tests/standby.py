"""A physical standby of the DATABASE_URL server, for tests of what applications do on a read replica.

The `standby` fixture (module scope, so its replication slot is gone before other modules' backfills read their
health signals; import it into a test module) makes one, in this order:

- `pg_basebackup -R` (a streaming standby) when the server accepts a replication connection, over DATABASE_URL
  or, as the `postgres` OS user, over the server's unix socket;
- otherwise, when this process can read the server's data directory (root, or its owner), a low-level base
  backup: `pg_backup_start`, a copy of the data directory, `pg_backup_stop`. That standby replays the WAL from the
  server's own pg_wal through `restore_command`, and a temporary replication slot (dropped with the session that
  created it) keeps that WAL on the server meanwhile. Nothing in the server's configuration changes.

It runs with the server's own binaries (same major version) on a free loopback port, as the `postgres` OS user
when the tests run as root, with trust authentication on 127.0.0.1; it is stopped and removed at the end. Without
DATABASE_URL (the embedded server run), or when none of the above is possible, the tests that use it skip.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import Server

START_TIMEOUT = 120  # seconds for the standby to accept connections
# A hot standby refuses to start unless these are at least the primary's values.
PRIMARY_MINIMUMS = (
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
)
# What a base backup leaves out of the data directory (as pg_basebackup does): these directories are kept empty,
SKIP_CONTENTS = frozenset(
    {"pg_wal", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots", "pg_stat_tmp", "pg_subtrans"}
)
# and these files are not copied.
SKIP_FILES = frozenset(
    {
        "postmaster.pid",
        "postmaster.opts",
        "backup_label",
        "backup_label.old",
        "tablespace_map",
        "current_logfiles",
        "postgresql.auto.conf.tmp",
        "pg_internal.init",
        "standby.signal",
        "recovery.signal",
    }
)


@dataclass
class Standby:
    """A running hot standby of the test server."""

    port: int
    user: str
    password: str | None
    method: str  # "pg_basebackup" (streaming) or "low-level backup" (WAL from the server's pg_wal)
    admin: psycopg.Connection[Any]  # to the primary; in the low-level case it holds the temporary slot
    slot: str | None

    def url_for(self, dbname: str) -> str:
        """A libpq URL of `dbname` on the standby."""
        url = make_url("postgresql://127.0.0.1").set(
            username=self.user, password=self.password, port=self.port, database=dbname
        )
        return url.render_as_string(hide_password=False)

    def query(self, dbname: str, query: str) -> Any:
        """The first column of the first row of `query` on the standby (None when no row)."""
        with psycopg.connect(self.url_for(dbname), autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(query).fetchone()
            return row[0] if row else None

    def wait_until(self, dbname: str, query: str, timeout: float = 60.0) -> bool:
        """Poll `query` on the standby until its first column is true; errors (the database or schema is not
        replayed yet) count as "not yet". False when `timeout` seconds pass first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.query(dbname, query):
                    self._release_wal()
                    return True
            except psycopg.Error:
                pass
            time.sleep(0.1)
        return False

    def _release_wal(self) -> None:
        """Let the server recycle the WAL the standby has replayed (the slot would otherwise keep it all)."""
        if self.slot is None:
            return
        try:
            lsn = self.query("postgres", "SELECT pg_last_wal_replay_lsn()::text")
            if lsn:
                self.admin.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", [self.slot, lsn])
        except psycopg.Error:
            pass  # behind the slot already, or the standby is busy: the slot just keeps a little more WAL


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the postgres OS user when we are root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _server_user_ids() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _bindir(major: int) -> Path | None:
    """The directory of `postgres` and `pg_ctl` of the server's major version."""
    candidates = [Path(f"/usr/lib/postgresql/{major}/bin")]
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            candidates.insert(0, Path(out.stdout.strip()))
    except (OSError, subprocess.TimeoutExpired):
        pass
    for bindir in candidates:
        postgres = bindir / "postgres"
        if not (postgres.exists() and (bindir / "pg_ctl").exists()):
            continue
        version = subprocess.run([str(postgres), "--version"], capture_output=True, text=True, check=False)
        # "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"
        words = version.stdout.split()
        if len(words) >= 3 and words[2].split(".")[0] == str(major):
            return bindir
    return None


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


def _copy_data_directory(src: Path, dst: Path) -> None:
    """Copy a running server's data directory for a low-level base backup; files that vanish meanwhile (a database
    dropped during the copy) are skipped, as WAL replay recreates or removes them anyway."""
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        (dst / rel).mkdir(mode=0o700, exist_ok=True)
        if rel == Path("."):
            for name in SKIP_CONTENTS:
                if name in dirs:
                    (dst / name).mkdir(mode=0o700, exist_ok=True)
            (dst / "pg_wal" / "archive_status").mkdir(mode=0o700, parents=True, exist_ok=True)
            dirs[:] = [d for d in dirs if d not in SKIP_CONTENTS]
        dirs[:] = [d for d in dirs if not d.startswith("pgsql_tmp")]
        for name in files:
            if name in SKIP_FILES or name.startswith("pgsql_tmp"):
                continue
            try:
                shutil.copyfile(os.path.join(root, name), dst / rel / name)
            except FileNotFoundError:
                continue


def _settings(admin: psycopg.Connection[Any], names: tuple[str, ...]) -> dict[str, str]:
    rows = admin.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", [list(names)]).fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def _try_pg_basebackup(bindir: Path, data: Path, attempts: list[str], ids: tuple[int, int]) -> str | None:
    """Run `pg_basebackup -R` with each conninfo in turn; None on success, else the last error."""
    error = "no attempt"
    for conninfo in attempts:
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(mode=0o700)
        os.chown(data, *ids)
        cmd = [str(bindir / "pg_basebackup"), "-D", str(data), "-R", "-X", "stream", "-c", "fast", "-w"]
        try:
            done = subprocess.run(
                _as_server_user([*cmd, "-d", conninfo]), capture_output=True, text=True, timeout=600, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            error = str(exc)
            continue
        if done.returncode == 0:
            return None
        error = (done.stderr.strip().splitlines() or ["pg_basebackup failed"])[-1]
    return error


def _low_level_backup(admin: psycopg.Connection[Any], src: Path, data: Path, version: int) -> str:
    """Copy `src` between pg_backup_start and pg_backup_stop; return the temporary slot that keeps the WAL."""
    slot = f"mt_standby_{uuid.uuid4().hex[:10]}"
    # Temporary: it lives as long as `admin`, even if this process dies, so it never keeps WAL for long.
    admin.execute("SELECT pg_create_physical_replication_slot(%s, true, true)", [slot])
    label = f"migrator tests standby {slot}"
    start, stop = (
        ("SELECT pg_backup_start(%s, true)", "SELECT labelfile, spcmapfile FROM pg_backup_stop(false)")
        if version >= 150000
        else (
            "SELECT pg_start_backup(%s, true, false)",
            "SELECT labelfile, spcmapfile FROM pg_stop_backup(false, false)",
        )
    )
    admin.execute(start, [label])
    try:
        _copy_data_directory(src, data)
    finally:
        row = admin.execute(stop).fetchone()
    assert row is not None
    (data / "backup_label").write_text(row[0])
    if row[1]:
        (data / "tablespace_map").write_text(row[1])
    return slot


def _start(bindir: Path, base: Path, port: int, ids: tuple[int, int]) -> None:
    log = base / "standby.log"
    cmd = [
        str(bindir / "pg_ctl"),
        "-D",
        str(base / "data"),
        "-l",
        str(log),
        "-w",
        "-t",
        str(START_TIMEOUT),
        # On the command line, these win over a postgresql.auto.conf copied from the server.
        "-o",
        f"-c config_file={base / 'standby.conf'} -p {port} -c listen_addresses=127.0.0.1 "
        f"-c unix_socket_directories={base}",
        "start",
    ]
    _chown_tree(base, *ids)
    done = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, timeout=START_TIMEOUT + 30, check=False)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else done.stderr
        raise RuntimeError(f"the standby did not start:\n{tail}")


def _stop(bindir: Path, base: Path) -> None:
    subprocess.run(
        _as_server_user([str(bindir / "pg_ctl"), "-D", str(base / "data"), "-m", "immediate", "-w", "stop"]),
        capture_output=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def standby(pg_server: Server) -> Iterator[Standby]:
    """A hot standby of the DATABASE_URL server on a free loopback port (skips when it cannot be made)."""
    if pg_server.kind != "DATABASE_URL":
        pytest.skip("the standby is made from the DATABASE_URL server; DATABASE_URL is not set")
    ids = _server_user_ids()
    if ids is None:
        pytest.skip("running as root but there is no `postgres` OS user to run the standby as")
    url = make_url(pg_server.admin_url)
    admin = psycopg.connect(pg_server.admin_url, autocommit=True)
    base: Path | None = None
    bindir: Path | None = None
    try:
        version = int(admin.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]
        bindir = _bindir(version // 10000)
        if bindir is None:
            pytest.skip(f"no PostgreSQL {version // 10000} server binaries (postgres, pg_ctl) on this machine")
        base = Path(tempfile.mkdtemp(prefix="mt_standby_"))
        os.chmod(base, 0o700)
        data = base / "data"
        os.chown(base, *ids)
        settings = _settings(admin, (*PRIMARY_MINIMUMS, "unix_socket_directories", "port"))
        attempts = [pg_server.admin_url]
        socket_dir = settings.get("unix_socket_directories", "").split(",")[0].strip()
        if socket_dir and os.geteuid() == 0:
            attempts.append(f"host={socket_dir} port={settings.get('port', '5432')} user=postgres")
        conf = [f"{name} = {settings[name]}" for name in PRIMARY_MINIMUMS if name in settings]
        conf += ["hot_standby = on", "fsync = off", "shared_buffers = '64MB'", "logging_collector = off"]
        conf += [f"hba_file = '{base / 'pg_hba.conf'}'", f"ident_file = '{base / 'pg_ident.conf'}'"]
        slot = None
        error = _try_pg_basebackup(bindir, data, attempts, ids)
        method = "pg_basebackup"
        if error is not None:
            # No replication connection allowed (pg_hba.conf): copy the data directory instead, if we may read it.
            superuser = admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
            src = Path(str(admin.execute("SHOW data_directory").fetchone()[0]))  # type: ignore[index]
            if not (superuser and superuser[0]):
                pytest.skip(f"pg_basebackup failed ({error}) and the DATABASE_URL role is not a superuser")
            if not os.access(src, os.R_OK | os.X_OK):
                pytest.skip(f"pg_basebackup failed ({error}) and the data directory {src} cannot be read here")
            if any((src / "pg_tblspc").iterdir()):
                pytest.skip(f"pg_basebackup failed ({error}) and the server has tablespaces (not copied here)")
            shutil.rmtree(data, ignore_errors=True)
            slot = _low_level_backup(admin, src, data, version)
            (data / "standby.signal").touch()
            conf += [f'restore_command = \'cp "{src / "pg_wal"}/%f" "%p"\'', "wal_retrieve_retry_interval = '200ms'"]
            method = "low-level backup"
        (base / "standby.conf").write_text("\n".join(conf) + "\n")
        (base / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        (base / "pg_ident.conf").write_text("")
        port = _free_port()
        _start(bindir, base, port, ids)
        user = url.username or os.environ.get("PGUSER") or pwd.getpwuid(os.geteuid()).pw_name
        password = url.password if isinstance(url.password, str) else None
        node = Standby(port, user, password, method, admin, slot)
        if not node.wait_until("postgres", "SELECT pg_is_in_recovery()", timeout=START_TIMEOUT):
            raise RuntimeError(f"the standby on port {port} does not accept connections")
        yield node
    finally:
        if base is not None and bindir is not None:
            _stop(bindir, base)
            shutil.rmtree(base, ignore_errors=True)
        admin.close()  # drops the temporary slot

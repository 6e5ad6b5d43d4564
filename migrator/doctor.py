"""`migrator doctor`: a read-only preflight of what DESIGN.md §Production asks of a server, before `expand` and at
any time after. Each check is a small function in the CHECKS table yielding findings ("ok" | "warn" | "fail", a
one-line message, the fix); the report is ok when none fails. Every check runs in its own READ ONLY transaction
under short timeouts; what a check cannot read (permission denied, a timeout) is a "warn" saying so, not a crash."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from migrator import lifecycle, preflight, state
from migrator.db import Database, scalar, table_exists
from migrator.engine.session import set_local
from migrator.errors import BadInputError, MigratorError, OperationalError
from migrator.spec import Spec
from migrator.sqlgen import dependents, names, triggers
from migrator.sqlgen.compose import as_text, ident, load

Status = Literal["ok", "warn", "fail"]

MIN_SERVER_VERSION = 140000
CHECK_STATEMENT_TIMEOUT = 10.0
CHECK_LOCK_TIMEOUT = 1.0  # doctor never waits long behind a DDL lock queue
QUERY_TEXT_CHARS = 80
# Trigger kinds migrator attaches to the legacy table (the split tables' reverse kinds come from sqlgen.triggers).
_LEGACY_TRIGGER_KINDS = ("forward", "forward_truncate", "legacy_writes", "compat_view")


@dataclass(frozen=True)
class Thresholds:
    long_transaction_seconds: float = 60.0
    # Between two statements an application is "idle in transaction" for milliseconds; not for seconds.
    idle_transaction_seconds: float = 5.0
    lag_seconds: float = 30.0
    lag_bytes: int = 1 << 30
    large_table_bytes: int = 10 << 30  # the disk check warns above it when it cannot measure free space


@dataclass
class Finding:
    """One result of a check: its status, a one-line message, the fix (for warn/fail) and optional detail lines."""

    status: Status
    message: str
    fix: str | None = None
    details: list[str] = field(default_factory=list)
    check: str = ""  # set by the runner: the name of the check in CHECKS that found it

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "message": self.message, "fix": self.fix,
                "details": self.details}  # fmt: skip


@dataclass
class DoctorReport:
    migration: str
    database: str
    state: str | None
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "fail"]

    def summary(self) -> str:
        failed = ", ".join(dict.fromkeys(f.check for f in self.failures))
        head = f"{len(self.failures)} finding(s) failed ({failed})" if failed else "no check failed"
        return f"doctor: {head}, {sum(f.status == 'warn' for f in self.findings)} warning(s)"

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "migration": self.migration, "database": self.database, "state": self.state,
                "findings": [f.as_dict() for f in self.findings]}  # fmt: skip


@dataclass
class Probe:
    """What every check reads: the connection, the spec, the thresholds, and the facts gathered once."""

    conn: psycopg.Connection[Any]
    db: Database
    spec: Spec
    limits: Thresholds
    server: dict[str, Any]  # doctor_server's row: version, role, superuser, pid, …
    own_pids: list[int]
    state: state.State | None = None  # None: the state could not be read
    legacy_name: str = ""  # the legacy table, quoted and qualified (its archive once contracted)
    shown: str = ""  # the same, as messages print it
    legacy: dict[str, Any] | None = None  # doctor_legacy_table's row; None when the table is absent

    @property
    def role(self) -> str:
        return str(self.server["role"])

    @property
    def q_role(self) -> str:
        return _q(self.role)

    @property
    def expanded_before(self) -> bool:
        """A state row exists: expand has run for this migration, so the names it uses are migrator's own."""
        return self.state is not None and self.state.updated_at is not None

    def rows(self, template: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(load(template), params).fetchall()


def _q(*parts: str) -> str:
    return as_text(ident(*parts))


def _bytes(n: float | None) -> str:
    size = float(n or 0)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def _short(text: str, limit: int = QUERY_TEXT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _listed(items: Iterable[Any], limit: int = 10) -> str:
    items = [str(i) for i in items]
    return ", ".join(items[:limit]) + (", …" if len(items) > limit else "")


# -- the checks (those marked needs_legacy in CHECKS run only when the legacy table exists) ----------------------

Found = Iterator[Finding]


def _server_version(p: Probe) -> Found:
    version = f"PostgreSQL {p.server['version']}"
    if p.conn.info.server_version < MIN_SERVER_VERSION:
        yield Finding("fail", f"{version} is too old", "upgrade to PostgreSQL 14 or newer")
    else:
        yield Finding("ok", version)
    if p.server["standby"]:
        yield Finding("fail", "the DSN points at a standby (in recovery); migrator writes", "use the primary's DSN")


def _legacy_table(p: Probe) -> Found:
    if p.state is not None and lifecycle.stage(p.state.state).dropped:  # finalize dropped it
        return (yield Finding("ok", f"the legacy table's archive {p.shown} was dropped by finalize"))
    if p.legacy is None:
        fix = "check [source] (schema, table) in the spec, or run `migrator seed` for the demo schema"
        yield Finding("fail", f"legacy table {p.shown} does not exist", fix)
    elif p.legacy["kind"] not in ("r", "p"):
        yield Finding("fail", f"{p.shown} is not a table (relkind {p.legacy['kind']})", "point [source] at a table")
    else:
        have = {r["attname"] for r in p.rows("preflight_columns", {"table": p.legacy_name})}
        if missing := [col for col in p.spec.legacy_columns() if col not in have]:
            yield Finding("fail", f"{p.shown} has no column(s) {', '.join(missing)}", "fix the spec's column names")
        else:
            size = f"≈{p.legacy['rows_estimate']:,} rows, {_bytes(p.legacy['bytes'])} with indexes and TOAST"
            yield Finding("ok", f"{p.shown} exists with every column the spec names ({size})")


def _primary_key(p: Probe) -> Found:
    row = p.conn.execute(load("preflight_primary_key"), {"table": p.legacy_name}).fetchone()
    key, pk = (row[0] if row else None), p.spec.pk
    if key == [pk]:
        yield Finding("ok", f"{p.shown} has the single-column primary key ({pk}) the spec names")
    elif not key:
        fix = f"ALTER TABLE {p.legacy_name} ADD PRIMARY KEY ({_q(pk)}): migrator copies and compares rows by it"
        yield Finding("fail", f"{p.shown} has no primary key", fix)
    else:
        msg = f"{p.shown}'s primary key is ({', '.join(key)}); the spec says ({pk})"
        yield Finding("fail", msg, "set source.primary_key to the table's single-column primary key")


def _ownership(p: Probe) -> Found:
    if p.legacy is not None and p.legacy["owned"]:
        owner = p.legacy["owner"]
        how = "owns" if owner == p.role else f"has the privileges of {owner}, the owner of"
        yield Finding("ok", f"role {p.role} {how} {p.shown}")
    elif p.legacy is not None:
        owner, table = p.legacy["owner"], p.legacy_name
        msg = f"role {p.role} neither owns {p.shown} nor is a member of its owner {owner}: no triggers, no rename"
        yield Finding("fail", msg, f"GRANT {_q(owner)} TO {p.q_role}; or ALTER TABLE {table} OWNER TO {p.q_role}")
    # contract re-points the spec's references (ALTER TABLE on each); the base's foreign keys need REFERENCES.
    refs = [_q(r.schema_, r.table) for r in p.spec.references]
    targets = [_q(fk.references_schema, fk.references) for fk in p.spec.base.foreign_keys]
    for row in p.rows("doctor_table_privileges", {"tables": refs + targets}):
        name, is_ref, owner, shown = row["name"], row["name"] in refs, row["owner"], row["name"].replace('"', "")
        if not row["exists"]:
            what = "the spec's [[references]] table" if is_ref else "the table a base foreign key references,"
            yield Finding("fail", f"{what} {shown} does not exist", "fix the spec or create the table")
        elif is_ref and not row["owned"]:
            msg = f"contract re-points the foreign key of {shown}, owned by {owner}"
            yield Finding("fail", msg, f"GRANT {_q(owner)} TO {p.q_role}")
        elif not is_ref and not row["can_reference"]:
            msg = f"expand adds a foreign key to {shown}: needs REFERENCES"
            yield Finding("fail", msg, f"GRANT REFERENCES ON {name} TO {p.q_role}")


def _create(p: Probe) -> Found:
    spec, role = p.spec, p.role
    purposes = {spec.target_schema: "the split tables", spec.state_schema: "migrator's state and functions"}
    schemas = list(dict.fromkeys([spec.target_schema, spec.state_schema, spec.source.schema_]))
    for row in p.rows("doctor_schemas", {"schemas": schemas}):
        schema, q = row["schema"], _q(row["schema"])
        grant = f"GRANT CREATE ON SCHEMA {q} TO {p.q_role}"
        purpose = purposes.get(schema)
        if purpose is None:  # the legacy schema alone: `contract --compat-view` creates its view there
            if row["exists"] and not row["can_create"]:
                msg = f"role {role} may not CREATE in schema {schema}: `contract --compat-view` cannot create its view"
                yield Finding("warn", msg, f"{grant} (only needed for --compat-view)")
        elif row["can_create"]:
            yield Finding("ok", f"role {role} may create {purpose} in schema {schema}")
        elif row["exists"]:
            yield Finding("fail", f"role {role} may not CREATE in schema {schema} ({purpose})", grant)
        elif p.server["create_db"]:
            yield Finding("ok", f"schema {schema} does not exist yet; role {role} may create it")
        else:
            db = _q(p.server["database"])
            fix = f"CREATE SCHEMA {q} AUTHORIZATION {p.q_role}; or GRANT CREATE ON DATABASE {db} TO {p.q_role}"
            yield Finding("fail", f"schema {schema} ({purpose}) does not exist; role {role} may not create it", fix)


def _replication_role(p: Probe) -> Found:
    pg15 = p.conn.info.server_version >= 150000
    if p.server["superuser"]:
        yield Finding("ok", f"role {p.role} is a superuser: the backfill may skip per-row foreign-key checks")
    elif pg15 and p.conn.execute(load("doctor_replication_role")).fetchone() == (True,):
        yield Finding("ok", f"role {p.role} may SET session_replication_role (the backfill's fast path)")
    else:
        msg = "the backfill checks foreign keys per row; a superuser or GRANT SET ON PARAMETER "
        msg += "session_replication_role (PG 15+) makes it faster"
        grant = f"GRANT SET ON PARAMETER session_replication_role TO {p.q_role} (as a superuser)"
        yield Finding("warn", msg, grant if pg15 else "run the backfill as a superuser, or accept the per-row path")


def _app_roles(p: Probe) -> Found:
    grants = [r for r in p.rows("doctor_grants", {"table": p.legacy_name}) if r["role"] != p.role]
    if not grants:
        yield Finding("ok", f"no role but the owner holds privileges on {p.shown}")
    else:
        msg = f"roles with privileges on {p.shown}: {_listed(r['role'] for r in grants)} (mirrored on the split side)"
        yield Finding("ok", msg, details=[f"{r['role']}: {', '.join(r['privileges'])}" for r in grants])


def _sessions(p: Probe) -> list[dict[str, Any]]:
    limits = {"long": p.limits.long_transaction_seconds, "idle": p.limits.idle_transaction_seconds}
    return p.rows("doctor_sessions", {"own": p.own_pids, **limits})


def _describe(r: dict[str, Any]) -> str:
    query = f": {_short(r['query'])}" if r["query"] else ""
    what = f"{r['usename']}@{r['datname']}, {r['state'] or 'active'}, transaction open {r['xact_seconds']:.0f} s"
    return f"pid {r['pid']} ({what}){query}"


def _long_transactions(p: Probe) -> Found:
    rows, limit = _sessions(p), p.limits.long_transaction_seconds
    long = [r for r in rows if not r["hidden"] and r["xact_seconds"] >= limit]
    if long:
        msg = f"transaction(s) open over {limit:.0f} s (pid {_listed(r['pid'] for r in long)}): DDL queues behind "
        fix = "let them finish, or end them with SELECT pg_terminate_backend(pid), before running a phase"
        yield Finding("warn", msg + "their locks, and they hold back vacuum", fix, [_describe(r) for r in long])
    else:
        yield Finding("ok", f"no transaction open longer than {limit:.0f} s")
    if hidden := [r["pid"] for r in rows if r["hidden"]]:
        msg = f"cannot see the transactions of {len(hidden)} session(s) of other roles (pid {_listed(hidden)})"
        yield Finding("warn", msg, f"GRANT pg_read_all_stats TO {p.q_role} so doctor can check them")


def _idle_in_transaction(p: Probe) -> Found:
    if rows := [r for r in _sessions(p) if r["state"].startswith("idle in transaction")]:
        seconds, pids = p.limits.idle_transaction_seconds, _listed(r["pid"] for r in rows)
        msg = f"session(s) idle in a transaction over {seconds:.0f} s (pid {pids}): they hold locks and a snapshot"
        fix = "find the application that leaves it open, or SELECT pg_terminate_backend(pid); set "
        fix += "idle_in_transaction_session_timeout"
        yield Finding("warn", msg, fix, [_describe(r) for r in rows])
    else:
        yield Finding("ok", "no session idle in a transaction")


def _replication_slots(p: Probe) -> Found:
    if not (slots := p.rows("doctor_replication_slots")):
        yield Finding("ok", "no replication slots")
    for s in slots:
        kept = "retains WAL" if s["retained_bytes"] is None else f"retains {_bytes(s['retained_bytes'])} of WAL"
        what = f"{s['type']} slot {s['name']}" + (f" (database {s['database']})" if s["database"] else "")
        if s["active"]:
            yield Finding("ok", f"{what} is active; it {kept}")
        else:
            msg = f"{what} is inactive and {kept}: it will keep all the WAL the backfill writes (≈ the table's size)"
            drop = f"SELECT pg_drop_replication_slot('{s['name']}')"
            yield Finding("warn", msg, f"start its consumer, or drop it if gone: {drop}")


def _standby_lag(p: Probe) -> Found:
    if not (standbys := p.rows("doctor_standbys")):
        yield Finding("ok", "no standby streams from this server")
    for s in standbys:
        who = f"standby {s['name'] or '?'} ({s['client']}, {s['state']})"
        if s["replay_bytes"] is None:
            yield Finding("warn", f"cannot read the replay lag of {who}", f"GRANT pg_monitor TO {p.q_role}")
            continue
        seconds = s["replay_seconds"] or 0.0
        lag = f"{who} replays {_bytes(s['replay_bytes'])}, {seconds:.1f} s behind"
        if s["replay_bytes"] > p.limits.lag_bytes or seconds > p.limits.lag_seconds:
            yield Finding("warn", lag, "let it catch up before the backfill, or pace it with --max-rows-per-second")
        else:
            yield Finding("ok", lag)


def _wal_level(p: Probe) -> Found:
    level = p.server["wal_level"]
    note = "; logical decoding will stream every row the backfill copies" if level == "logical" else ""
    yield Finding("ok", f"wal_level = {level}{note}")


def _local_free_bytes(p: Probe) -> int | None:
    """Free bytes on the data directory's filesystem when the server runs on this host and is provably the same
    server (its postmaster.pid records the start time the server reports); else None."""
    host, data_dir = p.db.url.host or "", p.server["data_directory"]
    if not data_dir or not (host in ("", "localhost", "127.0.0.1", "::1") or host.startswith("/")):
        return None
    try:
        lines = (Path(data_dir) / "postmaster.pid").read_text().splitlines()
        if abs(int(lines[2]) - int(p.server["started"])) > 1:
            return None
        return shutil.disk_usage(data_dir).free
    except (OSError, ValueError, IndexError):
        return None


def _disk_headroom(p: Probe) -> Found:
    # The split tables hold the same rows (≈ the legacy table's size with indexes), and the backfill writes about
    # as much WAL again until checkpoints recycle it (longer while a slot or the archiver holds it).
    size = int(p.legacy["bytes"]) if p.legacy else 0
    need, free = 2 * size, _local_free_bytes(p)
    estimate = f"the split tables need ≈{_bytes(size)} (the legacy table's size) plus ≈{_bytes(size)} of WAL"
    if free is None:
        msg = f"{estimate}; free disk space cannot be read from SQL on this server, so it was not measured"
        if size > p.limits.large_table_bytes:
            yield Finding("warn", msg, f"check that the data (and WAL) volume has at least {_bytes(need)} free")
        else:
            yield Finding("ok", msg)
        return
    msg = f"{estimate}; the data directory's filesystem has {_bytes(free)} free (measured on this host)"
    if free < need:
        yield Finding("fail", msg, "free disk space or grow the volume before expand")
    elif free < 2 * need:
        yield Finding("warn", msg, "leave room for the application's own growth while the migration runs")
    else:
        yield Finding("ok", msg)


def _local_port(conn: psycopg.Connection[Any]) -> int | None:
    try:
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
            name = sock.getsockname()
    except (OSError, psycopg.Error):
        return None
    return int(name[1]) if isinstance(name, tuple) else None


def _pooler(p: Probe) -> Found:
    """Statement by statement (no transaction): behind a transaction pooler each one may get another server
    process. A second session holds a transaction open meanwhile, so the pooler cannot hand the same one back."""
    query = load("doctor_backend_pid")
    pids = [int(p.server["pid"]), scalar(p.conn, query)]
    try:
        with p.db.connect() as side:
            side.execute(query)  # opens a transaction: it keeps its server process
            pids += [scalar(p.conn, query), scalar(p.conn, query)]
    except MigratorError:  # no second connection (connection limit): probe with one
        pids.append(scalar(p.conn, query))
    server_port, client_port = p.server["client_port"], _local_port(p.conn)
    if len(set(pids)) > 1:
        msg = f"the server process changed between statements on one connection (pid {_listed(dict.fromkeys(pids))}):"
        msg += " a transaction-pooling pooler is on the DSN; advisory locks, LISTEN and SET would not hold"
        yield Finding("fail", msg, "use a direct or session-pooled DSN")
    elif server_port is not None and client_port is not None and server_port != client_port:
        msg = f"the server sees this session from port {server_port}, this client uses port {client_port}: a proxy, "
        msg += "pooler or port forwarding is in between (the server process stayed the same)"
        yield Finding("warn", msg, "if it is a pooler, make it pool sessions, not transactions; or use a direct DSN")
    else:
        yield Finding("ok", f"direct session: one server process (pid {pids[0]}) answered every statement")


def _own_functions(spec: Spec) -> list[str]:
    kinds = ["sync", *_LEGACY_TRIGGER_KINDS, *(kind for _, kind, _ in triggers.reverse_tables(spec))]
    return [names.object_name(spec.migration_name, suffix=k) for k in kinds]


def _name_collisions(p: Probe) -> Found:
    spec, schema, free = p.spec, p.spec.target_schema, []
    # The tables migrator recorded as its own (preflight's rule): a kept one holds rows and is reused by a new expand.
    ours = preflight.recorded_tables(p.conn, spec)
    for table in spec.split_tables():
        if not table_exists(p.conn, schema, table):
            free.append(f"{schema}.{table}")
        elif table in ours:
            yield Finding("ok", f"{schema}.{table} exists: migrator's own (recorded by an earlier expand)")
        elif scalar(p.conn, sql.SQL("SELECT EXISTS (SELECT FROM {})").format(ident(schema, table))):
            msg = f"{schema}.{table} already exists, holds rows and was not created by migrator: expand refuses it"
            yield Finding("fail", msg, "rename or drop it, or choose another table name in the spec")
        else:
            msg = f"{schema}.{table} already exists (empty), not created by migrator: expand uses it as it is"
            yield Finding("warn", msg, "drop it unless it is meant for this migration, or rename it in the spec")
    if free:
        yield Finding("ok", f"split table names are free: {', '.join(free)}")
    archived = p.state is not None and lifecycle.stage(p.state.state).archived
    if not archived and table_exists(p.conn, spec.source.schema_, archive := names.archive_name(spec)):
        msg = f"{spec.source.schema_}.{archive} already exists: contract renames the legacy table to that name"
        yield Finding("fail", msg, f"rename or drop {_q(spec.source.schema_, archive)}")
    if p.expanded_before:
        return
    kinds = [*_LEGACY_TRIGGER_KINDS, *(kind for _, kind, _ in triggers.reverse_tables(spec))]
    tables = [as_text(names.source(spec)), *(as_text(names.split(spec, t)) for t in spec.split_tables())]
    params = {"triggers": [names.trigger_name_text(spec, k) for k in kinds], "tables": tables,
              "schema": spec.state_schema, "functions": _own_functions(spec)}  # fmt: skip
    for row in p.rows("doctor_own_objects", params):
        msg = f"{row['kind']} {row['name']} exists with a name migrator gives its own objects: expand would replace it"
        yield Finding("warn", msg, "drop or rename it if something else uses it, or rename the migration in the spec")


def _dependents(p: Probe) -> Found:
    spec = p.spec
    params = {"table": p.legacy_name, "pattern": dependents.name_pattern(spec), "own": _own_functions(spec),
              "schema": spec.state_schema, "references": [_q(r.schema_, r.table) for r in spec.references]}  # fmt: skip
    if found := [r for r in p.rows("doctor_dependents", params) if not r["expected"]]:
        objects = _listed([f"{r['kind']} {r['name']}" for r in found], 8)
        msg = f"{len(found)} object(s) depend on {p.shown}: {objects}"
        fix = "contract renames the legacy table: see below what it does with each (`contract --compat-view`)"
        yield Finding("warn", msg, fix, [f"{r['kind']} {r['name']}: {r['how']}" for r in found])
    else:
        yield Finding("ok", f"nothing but the spec's [[references]] depends on {p.shown}")
    if p.state is None or not lifecycle.stage(p.state.state).archived:  # what contract will do with each
        moved = [d for d in dependents.find(p.conn, spec) if d.handling != "note"]
        refused = [d for d in moved if d.handling == "refuse"]
        msg = f"contract re-points {len(moved) - len(refused)} of them (with --compat-view), refuses {len(refused)}"
        todo = "fix each refused object as its line says before `migrator contract`" if refused else None
        yield Finding("warn" if refused else "ok", msg, todo, [f"{d.handling}: {d.line()}" for d in moved])


def _public_create(p: Probe) -> Found:
    spec, clean = p.spec, True
    schemas = list(dict.fromkeys([spec.source.schema_, spec.target_schema, spec.state_schema, "public"]))
    for row in p.rows("doctor_schemas", {"schemas": schemas}):
        schema, q = row["schema"], _q(row["schema"])
        others = [r for r in row["creators"] if r not in ("PUBLIC", p.role)]
        if "PUBLIC" in row["creators"]:
            clean = False
            msg = f"every role may CREATE in schema {schema}: an unprivileged role can plant functions and operators "
            msg += "that shadow the ones a privileged session resolves through search_path"
            yield Finding("fail", msg, f"REVOKE CREATE ON SCHEMA {q} FROM PUBLIC")
        elif others:
            clean = False
            msg = f"role(s) {', '.join(others)} may CREATE in schema {schema}: their objects can shadow names there"
            fix = f"REVOKE CREATE ON SCHEMA {q} FROM {', '.join(map(_q, others))} unless they need it"
            yield Finding("warn", msg, fix)
    if clean:
        yield Finding("ok", f"PUBLIC may not CREATE in {', '.join(schemas)}")


def _row_level_security(p: Probe) -> Found:
    leg = p.legacy or {}
    if not leg.get("rls"):
        yield Finding("ok", f"row-level security is off on {p.shown}")
        return
    what = f"row-level security is on for {p.shown} ({leg['policies']} policies"
    what += ", forced)" if leg["rls_forced"] else ")"
    if p.server["superuser"] or p.server["bypassrls"] or (leg["owner"] == p.role and not leg["rls_forced"]):
        yield Finding("warn", f"{what}: the split tables get no policies", "create them on the split tables first")
    else:
        fix = f"ALTER ROLE {p.q_role} BYPASSRLS, or run migrator as the owner (without FORCE ROW LEVEL SECURITY)"
        yield Finding("fail", f"{what}: role {p.role} would copy and compare only the rows its policies show", fix)


def _user_triggers(p: Probe) -> Found:
    ours = {names.trigger_name_text(p.spec, k) for k in _LEGACY_TRIGGER_KINDS}
    if found := [r for r in p.rows("doctor_triggers", {"table": p.legacy_name}) if r["name"] not in ours]:
        fix = "the sync must account for them: a BEFORE trigger changes the row the forward sync copies, and the "
        fix += "reverse sync's writes to the legacy table fire them; re-create on the split side what the app needs"
        details = [f"{r['name']} ({'disabled' if r['enabled'] == 'D' else 'on'}): {_short(r['definition'], 160)}"
                   for r in found]  # fmt: skip
        yield Finding("warn", f"user trigger(s) on {p.shown}: {_listed(r['name'] for r in found)}", fix, details)
    else:
        yield Finding("ok", f"no user triggers on {p.shown}")


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Probe], Iterable[Finding]]
    needs_legacy: bool = False  # skipped when the legacy table is absent (legacy_table has failed already)
    transactional: bool = True  # False: runs statement by statement (the pooler probe)


CHECKS: tuple[Check, ...] = (
    Check("server_version", _server_version),
    Check("legacy_table", _legacy_table),
    Check("primary_key", _primary_key, needs_legacy=True),
    Check("ownership", _ownership),
    Check("create", _create),
    Check("replication_role", _replication_role),
    Check("app_roles", _app_roles, needs_legacy=True),
    Check("long_transactions", _long_transactions),
    Check("idle_in_transaction", _idle_in_transaction),
    Check("replication_slots", _replication_slots),
    Check("standby_lag", _standby_lag),
    Check("wal_level", _wal_level),
    Check("disk_headroom", _disk_headroom, needs_legacy=True),
    Check("pooler", _pooler, transactional=False),
    Check("name_collisions", _name_collisions),
    Check("dependents", _dependents, needs_legacy=True),
    Check("public_create", _public_create),
    Check("row_level_security", _row_level_security, needs_legacy=True),
    Check("user_triggers", _user_triggers, needs_legacy=True),
)
CHECK_NAMES: tuple[str, ...] = tuple(c.name for c in CHECKS)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _guarded(p: Probe, check: Check) -> list[Finding]:
    """Run one check; what it cannot read becomes a warning that says so."""
    try:
        if not check.transactional:
            found = list(check.run(p))
        else:
            with p.conn.transaction():
                set_local(p.conn, statement_timeout=CHECK_STATEMENT_TIMEOUT, lock_timeout=CHECK_LOCK_TIMEOUT)
                found = list(check.run(p))
    except psycopg.errors.InsufficientPrivilege as exc:
        fix = f"run doctor as a role that may read it (e.g. GRANT pg_monitor TO {p.q_role})"
        found = [Finding("warn", f"could not check: {_first_line(exc)}", fix)]
    except (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable):
        found = [Finding("warn", "could not check: timed out waiting for the catalog", "run doctor again")]
    except psycopg.Error as exc:
        if p.conn.broken:
            raise OperationalError(f"lost the connection during the {check.name} check") from exc
        found = [Finding("warn", f"could not check: {exc.sqlstate or ''} {_first_line(exc)}", "run it again with -v")]
    for f in found:
        f.check = check.name
    return found


def run(
    db: Database,
    spec: Spec,
    *,
    long_transaction_seconds: float = Thresholds.long_transaction_seconds,
    idle_transaction_seconds: float = Thresholds.idle_transaction_seconds,
    limits: Thresholds | None = None,
    checks: Iterable[str] | None = None,
) -> DoctorReport:
    """Run every check (or the named ones) read-only and return the findings. Writes nothing."""
    selected = list(CHECK_NAMES if checks is None else checks)
    if unknown := [c for c in selected if c not in CHECK_NAMES]:
        raise BadInputError(f"unknown doctor check(s): {', '.join(unknown)}", hint=f"use: {', '.join(CHECK_NAMES)}")
    limits = dataclasses.replace(limits or Thresholds(), long_transaction_seconds=long_transaction_seconds,
                                 idle_transaction_seconds=idle_transaction_seconds)  # fmt: skip
    with db.connect(autocommit=True) as conn:
        conn.read_only = True  # every transaction block below starts READ ONLY
        with conn.cursor(row_factory=dict_row) as cur:
            server = cur.execute(load("doctor_server")).fetchone()
        assert server is not None  # the current role always has its pg_roles row
        p = Probe(conn, db, spec, limits, server, [int(server["pid"])])
        findings: list[Finding] = []
        try:
            with conn.transaction():
                p.state = state.read(conn, spec)
        except psycopg.Error as exc:
            fix = f"GRANT USAGE ON SCHEMA {_q(spec.state_schema)} and SELECT on its tables TO {p.q_role}"
            findings.append(Finding("warn", f"cannot read the migration state: {_first_line(exc)}", fix, [], "state"))
        table = names.archive_name(spec) if p.state and lifecycle.past_legacy(p.state.state) else spec.source.table
        p.legacy_name, p.shown = _q(spec.source.schema_, table), f"{spec.source.schema_}.{table}"
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            p.legacy = cur.execute(load("doctor_legacy_table"), {"table": p.legacy_name}).fetchone()
        for check in CHECKS:
            if check.name in selected and (p.legacy is not None or not check.needs_legacy):
                findings.extend(_guarded(p, check))
    return DoctorReport(spec.migration_name, db.display, p.state.state if p.state else None, findings)

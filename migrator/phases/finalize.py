"""finalize (contracted -> finalized): drop the archive safely, once nothing can need it.

Guards: the migration has been contracted for the retention period (--min-age; a shorter one is accepted and
recorded in the audit log), nothing still depends on the archive (or on the compatibility view that is about to
go), and the compatibility view has had no writes for the quiet period — counted by the legacy-writes counter, as
contract counted direct legacy writes. Reads cannot be counted: the CLI says so when it asks for confirmation.

Then, optionally, the archive is written to a file (--dump: pg_dump -t when a pg_dump fits the server, else CSV
through COPY), its row count and sha256 in the audit log; and in short lock-timeout-guarded steps: the
compatibility view goes (unless --keep-compat-view), then the functions and counters only the legacy table's sync
needed, and last, in one transaction with the state change, the base table's key gets a sequence of its own (so
nothing depends on the archive any more) and the archive is dropped.

Every step before the last is one the rollback from contracted re-creates, so an interrupted finalize leaves a
migration that `finalize` finishes or `rollback` takes back. There is no rollback from finalized.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from migrator import guards, lifecycle, state
from migrator.db import Database, libpq_dsn, scalar
from migrator.engine.actions import Action, run_actions
from migrator.engine.context import Context, Report
from migrator.engine.session import MULTI_TABLE_LOCK_TIMEOUT
from migrator.errors import BadInputError, GuardFailed
from migrator.phases.base import Phase, RollbackOptions
from migrator.snapshots import find_tools
from migrator.spec import Spec
from migrator.sqlgen import dependents, names, repoint
from migrator.sqlgen.compose import as_text, literal

DEFAULT_MIN_AGE = 7 * 86400.0
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """'7d', '12h', '30m', '45s', '0' (plain numbers are seconds) -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if not m:
        raise BadInputError(f"--min-age {text!r} is not a duration", hint="use e.g. 7d, 12h, 30m, 45s or 0")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class Options:
    """What `migrator finalize` may be asked; every field has a CLI option of the same name."""

    # Seconds the migration must have been contracted for (the archive's retention period).
    min_age: float = DEFAULT_MIN_AGE
    # Seconds without a write through the compatibility view; checked for up to `wait` seconds before refusing.
    quiet_period: float = 60.0
    wait: float = 0.0
    # Write the archive to this file first.
    dump: Path | None = None
    keep_compat_view: bool = False


class Finalize(Phase[Options]):
    """contracted -> finalized: give the base key its own sequence, drop the compatibility view and the archive."""

    name = "finalize"
    options_type = Options
    # Set by apply: the migration was finalized already and nothing was done.
    noop: bool = False

    def plan(self, ctx: Context, conn: psycopg.Connection[Any] | None = None) -> list[Action]:
        spec, keep = ctx.spec, self.options.keep_compat_view
        acts: list[Action] = []
        view = conn is None or repoint.is_view(conn, spec)
        if view and not keep:
            fn = names.function_name(spec, "compat_view")
            acts.append(
                Action(
                    f"drop the compatibility view {spec.source.table} and its trigger function",
                    sql.SQL("-- squawk-ignore ban-drop-view\nDROP VIEW IF EXISTS {};\n{}").format(
                        names.source(spec), repoint.drop_statement("function", [fn])
                    ),
                    done_check=sql.SQL("SELECT to_regclass({}) IS NULL").format(literal(as_text(names.source(spec)))),
                )
            )
        leftovers = repoint.sync_leftovers(spec, keep_view=keep)
        by_kind = [
            repoint.drop_statement(kind, [n for k, n in leftovers if k == kind]) for kind in ("function", "sequence")
        ]
        acts.append(Action("drop the sync functions and write counters only the legacy table needed", _join(by_kind)))
        archive = names.archive(spec)
        last = [*repoint.own_key_sequence(spec, conn, view_default=view and keep)]
        # Deliberate, and the point of finalize: guarded by the retention period, the quiet period and a confirmation.
        last.append(sql.SQL("-- squawk-ignore ban-drop-table\nDROP TABLE IF EXISTS {}").format(archive))
        acts.append(
            Action(
                f"in one transaction: give {spec.base.table}.{spec.pk} its own key sequence (an identity key: a new "
                f"one, above every key drawn), drop the archive {_archive(spec).replace(chr(34), '')}",
                _join(last),
                lock_timeout=MULTI_TABLE_LOCK_TIMEOUT,
                done_check=sql.SQL("SELECT to_regclass({}) IS NULL").format(literal(as_text(archive))),
            )
        )
        return acts

    def apply(self, ctx: Context) -> None:
        spec, opts, db = ctx.spec, self.options, ctx.require_db()
        with state.transition(db, spec, self.name, (self.left, self.entered)) as tr:
            if tr.start.state == self.entered:
                self.noop = True
                ctx.reporter.step(f"already {self.entered}: the archive is gone, nothing to do")
                return
            if tr.progress is not None:
                ctx.reporter.step(f"resuming: {state.describe_progress(tr.progress)}")
            contracted_for = _require_retention(tr.conn, spec, self.left, opts.min_age)
            dependents.require_droppable(tr.conn, spec, keep_view=opts.keep_compat_view)
            # Outside a transaction: the moved mark must stay committed when the guard refuses.
            guards.wait_for_quiet(tr.conn, spec, "legacy", opts.quiet_period, opts.wait, self.name, ctx.reporter.step)
            ctx.observer.gate("before-finalize", archive=_archive(spec), keep_compat_view=opts.keep_compat_view)
            details: dict[str, Any] = {
                "min_age_seconds": opts.min_age,
                "retention_shortened": opts.min_age < DEFAULT_MIN_AGE,
                "contracted_for_seconds": round(contracted_for, 1),
                "quiet_period_seconds": opts.quiet_period,
                "reads_counted": False,
            }
            if opts.dump is not None and scalar(tr.conn, "SELECT to_regclass(%s) IS NOT NULL", [_archive(spec)]):
                details["dump"] = dump_archive(db, tr.conn, spec, opts.dump)
                ctx.reporter.step(f"archive written to {opts.dump}: {details['dump']['rows']:,} rows")
            acts = self.plan(ctx, tr.conn)
            details["dropped"] = _dropped(spec, acts, opts.keep_compat_view)
            run_actions(
                tr.conn,
                acts,
                on_step=ctx.announce(),
                lock_timeout=ctx.lock_timeout,
                record=tr.recorder([a.description for a in acts]),
                # The archive goes in the state change's own transaction: no kill leaves finalized with it, or
                # contracted without it.
                finish=tr.finisher(self.entered, reason=ctx.reason, details=details),
            )

    def verify(self, ctx: Context) -> Report:
        spec = ctx.spec
        report = Report(self.name)
        with ctx.require_db().connect(autocommit=True) as conn:
            gone = scalar(conn, "SELECT to_regclass(%s) IS NULL", [_archive(spec)])
            report.check(bool(gone), f"the archive {_archive(spec)} is dropped", "the archive is still there")
            owned = scalar(conn, repoint.key_sequence_done(spec))
            report.check(bool(owned), f"{spec.base.table}.{spec.pk} owns its key sequence", "the key has no sequence")
        return report

    def rollback(self, ctx: Context, opts: RollbackOptions) -> None:
        lifecycle.require_reversible(self.entered)


def _join(parts: Sequence[sql.Composable]) -> sql.Composed:
    return sql.SQL(";\n").join(parts)


def _archive(spec: Spec) -> str:
    return as_text(names.archive(spec))


def _dropped(spec: Spec, acts: list[Action], keep_view: bool) -> list[str]:
    """What finalize drops, for the audit log (names as a reader writes them: spec names need no quotes)."""
    out = [("view", names.source(spec))] if "compatibility view" in acts[0].description else []
    out += repoint.sync_leftovers(spec, keep_view=keep_view)
    return [f"{kind} {as_text(name).replace(chr(34), '')}" for kind, name in [*out, ("table", names.archive(spec))]]


def _require_retention(conn: psycopg.Connection[Any], spec: Spec, contracted: str, min_age: float) -> float:
    """Seconds since contract; refuses while that is shorter than the retention period."""
    row = conn.execute(
        # The transition into contracted, not any row that stayed there (validate, cleanup-drafts and health
        # pauses are audited with from = to): those must not restart the retention clock.
        sql.SQL(
            "SELECT extract(epoch FROM now() - max(at)) FROM {} "
            "WHERE migration = %s AND to_state = %s AND from_state IS DISTINCT FROM to_state"
        ).format(names.state(spec, "transitions")),
        [spec.migration_name, contracted],
    ).fetchone()
    age = float(row[0]) if row and row[0] is not None else 0.0
    if age < min_age:
        raise GuardFailed(
            f"`finalize` refused: the migration has been {contracted} for {_human(age)}, and the archive is kept "
            f"for {_human(min_age)} (--min-age)",
            hint=f"run it again in {_human(min_age - age)}, or pass a shorter --min-age (e.g. --min-age 0; the "
            "shorter retention is recorded in the audit log)",
        )
    return age


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def dump_archive(db: Database, conn: psycopg.Connection[Any], spec: Spec, path: Path) -> dict[str, Any]:
    """Write the archive to `path` (pg_dump -t when one at least as new as the server is found, else CSV through
    COPY); its row count and the file's sha256 go to the audit log."""
    archive = names.archive(spec)
    rows = int(scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(archive)) or 0)
    server_major = conn.info.server_version // 10000
    tools = [t for t in find_tools("pg_dump") if t.major >= server_major]
    if tools:
        tool = min(tools, key=lambda t: t.major)
        params = conninfo_to_dict(libpq_dsn(db.url))
        password = params.pop("password", None)
        env = {**os.environ, **({"PGPASSWORD": str(password)} if password else {})}
        cmd = [tool.path, "--dbname", make_conninfo(**{k: str(v) for k, v in params.items()})]
        cmd += ["--table", as_text(archive), "--file", str(path)]
        # An argv list, no shell; the program is a pg_dump found by find_tools().
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600, check=False)  # noqa: S603
        if done.returncode != 0:
            raise GuardFailed(f"`finalize` refused: pg_dump failed: {done.stderr.strip()[-300:]}")
        how = f"pg_dump {tool.major}"
    else:
        with (
            path.open("wb") as out,
            conn.cursor().copy(
                sql.SQL("COPY (SELECT * FROM {}) TO STDOUT WITH (FORMAT csv, HEADER)").format(archive)
            ) as copy,
        ):
            for chunk in copy:
                out.write(chunk)
        how = "csv (COPY; no pg_dump for this server found)"
    digest = hashlib.sha256()
    with path.open("rb") as written:
        for block in iter(lambda: written.read(1 << 20), b""):
            digest.update(block)
    return {"file": str(path), "format": how, "rows": rows, "sha256": digest.hexdigest(), "bytes": path.stat().st_size}

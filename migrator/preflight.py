"""expand's preflight: refuse, before any DDL, a database that does not match the spec, naming what is wrong and
the fix. Never destroy what the tool did not create: a table with a target name that migrator did not create and
that holds rows is refused, and a kept split table whose columns differ from the spec is never silently used."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from migrator.db import table_exists
from migrator.errors import GuardFailed, OperationalError, TableDoesNotExist
from migrator.spec import Spec, split_table_columns
from migrator.sqlgen import names
from migrator.sqlgen.compose import as_text, ident, join, load, raw
from migrator.sqlgen.ddl import legacy_row_security, untranslatable_policies

MIN_SERVER_VERSION = 140000


def check(conn: psycopg.Connection[Any], spec: Spec) -> None:
    version = conn.info.server_version
    if version < MIN_SERVER_VERSION:
        raise OperationalError(
            f"PostgreSQL {version // 10000} is too old", hint="migrator needs PostgreSQL 14 or newer"
        )
    _legacy_table(conn, spec)
    _row_security(conn, spec)
    recorded = recorded_tables(conn, spec)
    for table, want in split_table_columns(spec).items():
        have = _columns(conn, names.split(spec, table))
        if not have:
            continue
        qualified = f"{spec.target_schema}.{table}"
        if set(have) != want:
            raise GuardFailed(
                f"table {qualified} already exists with other columns ({', '.join(have)})",
                hint="rename or drop it, or choose another table name in the spec",
            )
        if table not in recorded and _has_rows(conn, names.split(spec, table)):
            raise GuardFailed(
                f"table {qualified} already exists, holds rows, and was not created by migrator: expand would "
                "mix them with the copy (and a rollback would empty it)",
                hint="rename it, move its rows elsewhere, or choose another table name in the spec",
            )
        _same_types(conn, spec, table, have)


def recorded_tables(conn: psycopg.Connection[Any], spec: Spec) -> set[str]:
    """The split tables migrator has recorded as its own for this migration (none before the first expand)."""
    if not table_exists(conn, spec.state_schema, "objects"):
        return set()
    rows = conn.execute(
        sql.SQL("SELECT name FROM {} WHERE migration = %s AND kind = 'table'").format(names.state(spec, "objects")),
        [spec.migration_name],
    ).fetchall()
    return {r[0] for r in rows}


def _legacy_table(conn: psycopg.Connection[Any], spec: Spec) -> None:
    legacy = names.source(spec)
    cols = _columns(conn, legacy)
    if not cols:
        raise TableDoesNotExist(
            f"legacy table {spec.source.schema_}.{spec.source.table} does not exist",
            hint="check [source] in the spec, or run `migrator seed` to create the demo schema",
        )
    missing = [c for c in spec.legacy_columns() if c not in cols]
    if missing:
        raise GuardFailed(
            f"legacy table {spec.source.table} has no column(s) {', '.join(missing)}",
            hint="fix the column names in the spec",
        )
    row = conn.execute(load("preflight_primary_key"), {"table": as_text(legacy)}).fetchone()
    if not row or row[0] != [spec.pk]:
        raise GuardFailed(
            f"{spec.source.table}'s primary key is {row[0] if row else 'missing'}, the spec says [{spec.pk}]",
            hint="set source.primary_key to the table's single-column primary key",
        )


def _columns(conn: psycopg.Connection[Any], table: sql.Identifier) -> dict[str, str]:
    """Column name -> its type as PostgreSQL formats it (empty when the table does not exist)."""
    return dict(conn.execute(load("preflight_columns"), {"table": as_text(table)}).fetchall())


def _has_rows(conn: psycopg.Connection[Any], table: sql.Identifier) -> bool:
    row = conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(table)).fetchone()
    return bool(row and row[0])


def _same_types(conn: psycopg.Connection[Any], spec: Spec, table: str, have: dict[str, str]) -> None:
    """The spec's columns of a kept split table must have the spec's types: PostgreSQL formats both (a throwaway
    temporary table with the spec's column types, rolled back), so varchar(50) and character varying(50) agree."""
    declared = {
        spec.base.table: spec.stored(spec.base.columns),
        **{v.table: spec.stored(v.columns) for v in spec.variants},
    }.get(table, {})
    if not declared:
        return
    probe = ident("pg_temp", "migrator_preflight_types")
    columns = join([sql.Composed([ident(c), raw(f" {cs.type}")]) for c, cs in declared.items()])
    with conn.transaction(force_rollback=True):
        conn.execute(sql.SQL("CREATE TEMPORARY TABLE {} ({}) ON COMMIT DROP").format(probe, columns))
        want = _columns(conn, probe)
    differ = [f"{c} is {have[c]}, the spec says {t}" for c, t in want.items() if have.get(c) != t]
    if differ:
        raise GuardFailed(
            f"table {spec.target_schema}.{table}, kept from an earlier attempt, does not match the spec: "
            + "; ".join(differ),
            hint=f"drop it (DROP TABLE {spec.target_schema}.{table}; migrator made it) so expand creates it "
            "anew, or make the spec say what it holds",
        )


def _row_security(conn: psycopg.Connection[Any], spec: Spec) -> None:
    enabled, _, policies = legacy_row_security(conn, spec)
    refused = untranslatable_policies(spec, policies) if enabled else []
    if refused:
        raise GuardFailed(
            f"{spec.source.table} has row-level security policies over columns that do not all land in "
            f"{spec.base.table}: {', '.join(refused)} — the split tables could not hide the same rows",
            hint="rewrite those policies over base columns, or move the columns they use to [base.columns]",
        )

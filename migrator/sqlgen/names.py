"""Every name the tool gives or uses, composed in one place: qualified identifiers of the spec's tables and of the
objects migrator creates (functions, triggers, constraints, indexes, the archive, the legacy-writes counter)."""

from __future__ import annotations

import hashlib

from psycopg import sql

from migrator.spec import Spec
from migrator.sqlgen.compose import as_text, ident, literal

PG_MAX_IDENT_BYTES = 63


def object_name(*parts: str, suffix: str) -> str:
    """A deterministic constraint/index/trigger name that fits in 63 bytes (a hash keeps truncated names unique)."""
    name = "_".join([*parts, suffix])
    if len(name.encode()) <= PG_MAX_IDENT_BYTES:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]  # noqa: S324 — a name tag, not security
    head = name.encode()[: PG_MAX_IDENT_BYTES - len(suffix) - 10].decode(errors="ignore")
    return f"{head}_{digest}_{suffix}"


def source(spec: Spec) -> sql.Identifier:
    return ident(spec.source.schema_, spec.source.table)


def split(spec: Spec, table: str) -> sql.Identifier:
    return ident(spec.target_schema, table)


def state(spec: Spec, table: str) -> sql.Identifier:
    return ident(spec.state_schema, table)


def sequence_name(spec: Spec) -> str:
    # PostgreSQL names both serial and identity sequences <table>_<column>_seq; expand resolves the real one
    # with pg_get_serial_sequence when it has a database, and this is what an offline plan shows.
    return f"{spec.source.table}_{spec.pk}_seq"


def regclass_literal(*parts: str) -> sql.Literal:
    """A quoted, qualified name as a string literal, for to_regclass()/::regclass in DDL."""
    return literal(as_text(ident(*parts)))


def split_regclass(spec: Spec, table: str) -> sql.Literal:
    return regclass_literal(spec.target_schema, table)


def function_name(spec: Spec, kind: str) -> sql.Identifier:
    return ident(spec.state_schema, object_name(spec.migration_name, suffix=kind))


def trigger_name_text(spec: Spec, kind: str) -> str:
    return object_name("migrator", spec.migration_name, suffix=kind)


def trigger_name(spec: Spec, kind: str) -> sql.Identifier:
    return ident(trigger_name_text(spec, kind))


def archive_name(spec: Spec) -> str:
    return object_name(spec.source.table, suffix="archived")


def archive(spec: Spec) -> sql.Identifier:
    return ident(spec.source.schema_, archive_name(spec))


def legacy_writes_sequence(spec: Spec) -> sql.Identifier:
    return writes_sequence(spec, "legacy")


def writes_sequence(spec: Spec, side: str) -> sql.Identifier:
    """The counter of direct writes to one side ("legacy" or "split") while both syncs are on."""
    return ident(spec.state_schema, object_name(spec.migration_name, suffix=f"{side}_writes"))

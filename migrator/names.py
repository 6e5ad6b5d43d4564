"""Qualified identifiers of the objects a spec implies, composed in one place."""

from __future__ import annotations

from psycopg import sql

from migrator.spec import Spec
from migrator.sqlfiles import as_text, ident, literal


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

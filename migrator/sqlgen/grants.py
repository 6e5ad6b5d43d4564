"""Mirrored grants: the objects the application will use get the privileges its roles hold on the legacy table.

The application keeps the roles and grants it had; it never needs grants on the state schema (the sync runs as the
migration role, in SECURITY DEFINER functions). What it will read and write itself — the split tables from
read_new, the compatibility view after contract — gets, per role, exactly the privileges that role holds on the
legacy table, read from the catalog when the phase runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from migrator.sqlgen.compose import as_text, ident, join, raw

# Table privileges a legacy grant may carry, in the order GRANT lists them.
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")

_GRANTS_SQL = """
SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END, a.privilege_type
  FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
 WHERE c.oid = pg_catalog.to_regclass(%s) AND a.grantee <> c.relowner
 ORDER BY 1 NULLS FIRST, 2
"""


def table_grants(conn: psycopg.Connection[Any], table: sql.Identifier) -> dict[str | None, list[str]]:
    """Role (None = PUBLIC) -> the privileges it holds on `table`, its owner left out (an owner holds them all)."""
    out: dict[str | None, list[str]] = {}
    for role, privilege in conn.execute(_GRANTS_SQL, [as_text(table)]).fetchall():
        out.setdefault(role, []).append(privilege)
    return {role: [p for p in TABLE_PRIVILEGES if p in privs] for role, privs in out.items()}


def mirror_statements(
    grants: dict[str | None, list[str]] | None, targets: Sequence[sql.Identifier]
) -> list[sql.Composed]:
    """The GRANT statements themselves (to run inside another step's transaction); offline, a comment saying so."""
    if grants is None:
        comment = sql.SQL("-- at apply: GRANT <each role's privileges on the legacy table> ON {} TO <that role>")
        return [comment.format(join(targets))]
    return [
        sql.SQL("GRANT {} ON {} TO {}").format(
            raw(", ".join(privileges)), join(targets), raw("PUBLIC") if role is None else ident(role)
        )
        for role, privileges in grants.items()
        if privileges
    ]


def sequence_statements(
    grants: dict[str | None, list[str]] | None, sequence: sql.Identifier | None
) -> list[sql.Composed]:
    """The split base table draws new keys from the legacy key's sequence (nextval in its DEFAULT, which checks
    privileges, unlike an identity column's own insert): each role that may INSERT into the legacy table gets
    USAGE on it."""
    if sequence is None:
        return []
    if grants is None:
        return [sql.SQL("-- at apply: GRANT USAGE ON SEQUENCE {} TO <each role that may INSERT>").format(sequence)]
    return [
        sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(sequence, raw("PUBLIC") if role is None else ident(role))
        for role, privileges in grants.items()
        if "INSERT" in privileges
    ]


# What an archive must not take any more: contract leaves the legacy table read-only for the application's roles
# (a write there would never reach the split tables), and the rollback from contracted gives those back.
WRITE_PRIVILEGES = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")


def _writes(grants: dict[str | None, list[str]]) -> dict[str | None, list[str]]:
    return {role: [p for p in privileges if p in WRITE_PRIVILEGES] for role, privileges in grants.items()}


def revoke_writes(grants: dict[str | None, list[str]] | None, archive: sql.Identifier) -> list[sql.Composed]:
    """REVOKE the write privileges each role holds on the table being archived (its SELECT stays)."""
    if grants is None:
        return [sql.SQL("-- at apply: REVOKE <each role's write privileges> ON {} FROM <that role>").format(archive)]
    return [
        sql.SQL("REVOKE {} ON {} FROM {}").format(
            raw(", ".join(privileges)), archive, raw("PUBLIC") if role is None else ident(role)
        )
        for role, privileges in _writes(grants).items()
        if privileges
    ]


def restore_writes(grants: dict[str | None, list[str]] | None, table: sql.Identifier) -> list[sql.Composed]:
    """GRANT back the write privileges: those each role holds on the split base table, which mirrors the legacy
    table's grants since read_new (the archive itself no longer says what they were)."""
    if grants is None:
        return [sql.SQL("-- at apply: GRANT <each role's write privileges on the split base> ON {}").format(table)]
    return mirror_statements(_writes(grants), [table])

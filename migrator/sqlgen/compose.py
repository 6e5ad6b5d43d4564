"""SQL templates by name, and the one helper that turns names into identifiers.

Templates live in sql/ (and validators/) as plain .sql files with `{placeholder}` slots. They are filled with
psycopg.sql objects only: identifiers through `ident()`, literals (in DDL, which takes no bind parameters) through
`literal()`, fragments through `join()`. Values in DML are bind parameters, never formatted in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from psycopg import sql

# The package directory (migrator/), one level above this module.
_PKG = Path(__file__).resolve().parent.parent


def _dir(name: str) -> Path:
    # In a wheel the SQL folders sit inside the package; in a source checkout they sit at the repo root.
    inside = _PKG / name
    return inside if inside.is_dir() else _PKG.parent / name


def sql_dir() -> Path:
    return _dir("sql")


def validators_dir() -> Path:
    return _dir("validators")


def runbooks_dir() -> Path:
    return _dir("runbooks")


@cache
def load(name: str, folder: str = "sql") -> str:
    """The text of `<folder>/<name>.sql`."""
    path = _dir(folder) / f"{name}.sql"
    return path.read_text().rstrip("\n")


def ident(*parts: str) -> sql.Identifier:
    """The only way a name enters SQL: `ident("public", "core_project")` -> "public"."core_project"."""
    return sql.Identifier(*parts)


def literal(value: Any) -> sql.Literal:
    """A value inside DDL (defaults, CHECK lists, partial-index predicates), where bind parameters cannot go."""
    return sql.Literal(value)


def raw(text: str) -> sql.SQL:
    """A fragment of trusted SQL text: template keywords or a type name that passed the spec's type grammar."""
    # psycopg types SQL() as taking a LiteralString; callers pass template text or spec-vetted type names.
    return sql.SQL(text)  # type: ignore[arg-type,unused-ignore]


def join(parts: Sequence[sql.Composable], sep: str = ", ") -> sql.Composed:
    return raw(sep).join(parts)


def render(template: str, /, **slots: sql.Composable) -> sql.Composed:
    """Fill sql/<template>.sql with composed fragments."""
    return raw(load(template)).format(**slots)


def render_validator(template: str, /, **slots: sql.Composable) -> sql.Composed:
    """Fill validators/<template>.sql with composed fragments."""
    return raw(load(template, "validators")).format(**slots)


def as_text(query: sql.Composable) -> str:
    """SQL text without a connection, as `plan` prints it and the golden tests compare it."""
    return query.as_string(None)


def plpgsql_function(
    function: sql.Identifier,
    body: sql.Composable,
    returns: str = "trigger",
    args: sql.Composable | None = None,
    settings: Mapping[str, str] | None = None,
) -> sql.Composed:
    """CREATE OR REPLACE FUNCTION with a dollar-quote tag that cannot occur in the body.

    A quoted identifier inside the body may contain any text, `$migrator$` included, which would end a fixed
    tag early and let the rest run as SQL; so the tag is chosen after the body is rendered.
    """
    text = as_text(body)
    n = 0
    tag = "$migrator$"
    while tag in text:
        n += 1
        tag = f"$migrator{n}$"
    signature = sql.SQL("{}({})").format(function, args if args is not None else raw(""))
    # Every generated function runs as the migration role that owns it (SECURITY DEFINER): an application role
    # needs no grants on the split tables or the state schema for its writes to be synced, and so gets none.
    # Such a function must not trust the caller's search_path (an unprivileged role could shadow an operator in
    # it and run code as the owner): pg_catalog only, pg_temp last. Nobody but triggers calls it: EXECUTE is
    # revoked from PUBLIC (PostgreSQL does not check EXECUTE when it fires a trigger).
    # `settings` pins the value settings the body's encoding depends on (a timestamptz in the meta JSON must not
    # take the TimeZone of the application's session that fired it); each SET costs every call, so only those.
    pins = join([sql.SQL(" SET {} = {}").format(ident(k), literal(v)) for k, v in (settings or {}).items()], "")
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {} RETURNS {} LANGUAGE plpgsql\n"
        "SECURITY DEFINER SET search_path = pg_catalog, pg_temp{} AS {}\n{}{};\n"
        "REVOKE EXECUTE ON FUNCTION {} FROM PUBLIC"
    ).format(signature, raw(returns), pins, raw(tag), raw(text.rstrip("\n") + "\n"), raw(tag), signature)

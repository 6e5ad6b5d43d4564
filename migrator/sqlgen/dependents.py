"""What else depends on the legacy table, and how contract (and its rollback) moves it along.

PostgreSQL binds views, materialized views, rules, SQL-standard function bodies and policies to a table's identity,
not its name: when contract renames the legacy table to its archive they silently follow it and read the frozen
archive from then on. So, before any DDL, contract finds them in the catalog (pg_depend, pg_rewrite) and either
re-points each at the legacy *name* — which, with --compat-view, is the compatibility view over the split tables —
inside the swap's own transaction, or refuses, naming the object and the fix:

- a view: CREATE OR REPLACE VIEW with the definition read before the rename (the catalog prints names qualified,
  as the tool's sessions pin search_path). The view keeps its identity: owner, grants, comments, options
  (security_barrier, check_option, security_invoker) given again, and views built on it, all stay.
- a materialized view: dropped and re-created WITH DATA, with its options, owner, grants and indexes. Re-created
  in the swap rather than left to a later REFRESH: a REFRESH would still read the archive (it binds by identity
  too), and a matview created WITH NO DATA errors on every read until refreshed. The price is that its query runs
  while the swap holds its locks, so `plan contract` says so; a matview that other views depend on cannot be
  dropped and is refused.
- a rule of another table whose action reads or writes the legacy table: CREATE OR REPLACE RULE, same text.
- a function with an SQL-standard body (BEGIN ATOMIC … / RETURN …): CREATE OR REPLACE FUNCTION, same text;
  refused when it uses the table's row type (its signature would change).
- refused: a rule *on* the legacy table (it fires on writes the application no longer makes there), a policy of
  another table, a publication, a foreign key the spec's [[references]] do not name.
- listed only: PL/pgSQL functions whose source names the table; they resolve the name when they run, so they
  reach whatever has the legacy name then.

The rollback from contracted runs the same statements the other way: found on the compatibility view, re-created
once the archive has its name back.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql

from migrator.errors import GuardFailed
from migrator.spec import Spec
from migrator.sqlgen import grants, names
from migrator.sqlgen.compose import as_text, ident, join, literal, raw

Handling = Literal["re-point", "refuse", "note"]

_RELATION = "SELECT c.oid, c.reltype FROM pg_catalog.pg_class AS c WHERE c.oid = pg_catalog.to_regclass(%(table)s)"

# Views, materialized views and rules of other relations whose query reads or writes the table.
_REWRITES = f"""
WITH rel AS ({_RELATION})
SELECT DISTINCT r.oid, r.rulename::text, v.oid AS rel_oid, v.relkind::text, n.nspname::text, v.relname::text,
       pg_catalog.pg_get_userbyid(v.relowner)::text, coalesce(v.reloptions, '{{}}')::text[]
  FROM rel
  JOIN pg_catalog.pg_depend AS d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
                               AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = rel.oid
  JOIN pg_catalog.pg_rewrite AS r ON r.oid = d.objid
  JOIN pg_catalog.pg_class AS v ON v.oid = r.ev_class
  JOIN pg_catalog.pg_namespace AS n ON n.oid = v.relnamespace
 WHERE v.oid <> rel.oid
 ORDER BY 5, 6, 2
"""

_OWN_RULES = f"""
WITH rel AS ({_RELATION})
SELECT r.rulename::text FROM rel JOIN pg_catalog.pg_rewrite AS r ON r.ev_class = rel.oid
 WHERE r.rulename <> '_RETURN' ORDER BY 1
"""

# Functions pg_depend ties to the table or its row type (SQL-standard bodies, signatures using the row type).
_FUNCTIONS = f"""
WITH rel AS ({_RELATION})
SELECT p.oid, p.oid::pg_catalog.regprocedure::text, bool_or(d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass)
  FROM rel
  JOIN pg_catalog.pg_depend AS d ON d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
   AND ((d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = rel.oid)
     OR (d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass AND d.refobjid = rel.reltype))
  JOIN pg_catalog.pg_proc AS p ON p.oid = d.objid
 WHERE p.pronamespace <> pg_catalog.to_regnamespace(%(state_schema)s)
 GROUP BY 1, 2 ORDER BY 2
"""

# PL/pgSQL and other functions that name the table in their source (they record no dependency).
_BY_NAME = """
SELECT p.oid::pg_catalog.regprocedure::text
  FROM pg_catalog.pg_proc AS p JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname <> %(state_schema)s
   AND p.prosqlbody IS NULL AND p.prosrc ~* %(pattern)s
 ORDER BY 1
"""

_POLICIES = f"""
WITH rel AS ({_RELATION})
SELECT DISTINCT pol.polname::text || ' on ' || pol.polrelid::pg_catalog.regclass::text
  FROM rel
  JOIN pg_catalog.pg_depend AS d ON d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass
                               AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = rel.oid
  JOIN pg_catalog.pg_policy AS pol ON pol.oid = d.objid
 WHERE pol.polrelid <> rel.oid
 ORDER BY 1
"""

_PUBLICATIONS = f"""
WITH rel AS ({_RELATION})
SELECT p.pubname::text FROM rel JOIN pg_catalog.pg_publication_rel AS pr ON pr.prrelid = rel.oid
  JOIN pg_catalog.pg_publication AS p ON p.oid = pr.prpubid ORDER BY 1
"""

_FOREIGN_KEYS = f"""
WITH rel AS ({_RELATION})
SELECT k.conname::text, k.conrelid::pg_catalog.regclass::text
  FROM rel JOIN pg_catalog.pg_constraint AS k ON k.confrelid = rel.oid AND k.contype = 'f' AND k.conrelid <> rel.oid
 WHERE k.conrelid NOT IN (SELECT pg_catalog.to_regclass(x) FROM pg_catalog.unnest(%(references)s::text[]) AS x)
 ORDER BY 2, 1
"""

_MATVIEW_EXTRAS = """
SELECT (SELECT coalesce(array_agg(pg_catalog.pg_get_indexdef(i.indexrelid) ORDER BY i.indexrelid), '{}')
          FROM pg_catalog.pg_index AS i WHERE i.indrelid = %(oid)s),
       EXISTS (SELECT FROM pg_catalog.pg_depend AS d JOIN pg_catalog.pg_rewrite AS r ON r.oid = d.objid
                WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.refobjid = %(oid)s
                  AND r.ev_class <> %(oid)s)
"""


@dataclass(frozen=True)
class Dependent:
    """One object that depends on the legacy table: what it is, what contract does with it, and the statements
    that re-create it over the legacy name (run once the name belongs to the compatibility view, or, on the
    rollback, to the table again)."""

    kind: str
    name: str
    handling: Handling
    # What contract does with it, or why it cannot and what to do instead.
    detail: str
    statements: tuple[sql.Composable, ...] = field(default=(), repr=False)

    def line(self) -> str:
        return f"{self.kind} {self.name}: {self.detail}"


def _with_options(options: Sequence[str]) -> sql.Composable:
    pairs = [opt.split("=", 1) for opt in options]
    if not pairs:
        return raw("")
    return sql.SQL(" WITH ({})").format(join([sql.SQL("{} = {}").format(ident(k), literal(v)) for k, v in pairs]))


def _definition(conn: psycopg.Connection[Any], oid: int) -> sql.Composable:
    row = conn.execute("SELECT pg_catalog.pg_get_viewdef(%s::pg_catalog.oid)", [oid]).fetchone()
    assert row is not None
    # The catalog's own deparse of the query, read before the rename: it names the legacy table.
    return raw(str(row[0]).strip().rstrip(";"))


def _view(conn: psycopg.Connection[Any], rel_oid: int, name: sql.Identifier, options: list[str]) -> tuple[Any, ...]:
    return (
        sql.SQL("CREATE OR REPLACE VIEW {}{} AS {}").format(name, _with_options(options), _definition(conn, rel_oid)),
    )


def _matview(
    conn: psycopg.Connection[Any], rel_oid: int, name: sql.Identifier, owner: str, options: list[str]
) -> tuple[tuple[sql.Composable, ...], bool]:
    row = conn.execute(_MATVIEW_EXTRAS, {"oid": rel_oid}).fetchone()
    assert row is not None
    indexes, depended_on = row
    stmts: list[sql.Composable] = [
        sql.SQL("DROP MATERIALIZED VIEW {}").format(name),
        sql.SQL("CREATE MATERIALIZED VIEW {}{} AS {} WITH DATA").format(
            name, _with_options(options), _definition(conn, rel_oid)
        ),
        sql.SQL("ALTER MATERIALIZED VIEW {} OWNER TO {}").format(name, ident(owner)),
        *grants.mirror_statements(grants.table_grants(conn, name), [name]),
        *(raw(str(index)) for index in indexes),
    ]
    return tuple(stmts), bool(depended_on)


def _rule(conn: psycopg.Connection[Any], oid: int) -> tuple[sql.Composable, ...]:
    row = conn.execute("SELECT pg_catalog.pg_get_ruledef(%s::pg_catalog.oid)", [oid]).fetchone()
    assert row is not None
    text = re.sub(r"^CREATE RULE", "CREATE OR REPLACE RULE", str(row[0]).strip().rstrip(";"))
    return (raw(text),)


def _function(conn: psycopg.Connection[Any], oid: int) -> tuple[sql.Composable, ...]:
    row = conn.execute("SELECT pg_catalog.pg_get_functiondef(%s::pg_catalog.oid)", [oid]).fetchone()
    assert row is not None
    return (raw(str(row[0]).strip().rstrip(";")),)


def name_pattern(spec: Spec) -> str:
    """A PostgreSQL regex matching the legacy table's name as a whole word (every non-word character escaped)."""
    return r"\m" + re.sub(r"(\W)", r"\\\1", spec.source.table) + r"\M"


def _from_rewrites(conn: psycopg.Connection[Any], params: dict[str, Any]) -> list[Dependent]:
    """Views, materialized views and rules of other relations whose query uses the table."""
    out: list[Dependent] = []
    for oid, rulename, rel_oid, relkind, schema, relname, owner, options in conn.execute(_REWRITES, params).fetchall():
        name, qualified = ident(schema, relname), f"{schema}.{relname}"
        if rulename == "_RETURN" and relkind == "v":
            detail = "re-created over the compatibility view (CREATE OR REPLACE VIEW: owner, grants and options kept)"
            out.append(Dependent("view", qualified, "re-point", detail, _view(conn, rel_oid, name, options)))
        elif rulename == "_RETURN" and relkind == "m":
            stmts, depended_on = _matview(conn, rel_oid, name, owner, options)
            if depended_on:
                detail = "other views depend on it, so it cannot be dropped and re-created: drop them first, "
                detail += "run contract, then re-create them"
                out.append(Dependent("materialized view", qualified, "refuse", detail))
            else:
                detail = "dropped and re-created WITH DATA over the compatibility view, in the swap (its query "
                detail += "runs while the swap holds its locks), with its options, owner, grants and indexes"
                out.append(Dependent("materialized view", qualified, "re-point", detail, stmts))
        else:
            detail = "re-created as it is (CREATE OR REPLACE RULE): it then acts on the compatibility view"
            out.append(Dependent("rule", f"{rulename} on {qualified}", "re-point", detail, _rule(conn, oid)))
    return out


def _functions(conn: psycopg.Connection[Any], spec: Spec, params: dict[str, Any]) -> list[Dependent]:
    """Functions bound to the table (SQL-standard bodies, its row type) and functions that name it in their source."""
    shown = f"{spec.source.schema_}.{spec.source.table}"
    out: list[Dependent] = []
    for oid, signature, uses_row_type in conn.execute(_FUNCTIONS, params).fetchall():
        if uses_row_type:
            detail = f"it uses {shown}'s row type: drop it (re-create it over the split tables), then run contract"
            out.append(Dependent("function", signature, "refuse", detail))
        else:
            detail = "re-created as it is (CREATE OR REPLACE FUNCTION): its body then reads the compatibility view"
            out.append(Dependent("function", signature, "re-point", detail, _function(conn, oid)))
    by_name = {**params, "pattern": name_pattern(spec)}
    for (signature,) in conn.execute(_BY_NAME, by_name).fetchall():
        detail = f"its source names {spec.source.table}, resolved when it runs: it reaches whatever has that name"
        out.append(Dependent("function", signature, "note", detail))
    return out


def find(conn: psycopg.Connection[Any], spec: Spec, relation: sql.Identifier | None = None) -> list[Dependent]:
    """Every object that depends on `relation` (default: the legacy name), and what contract does with each."""
    table = as_text(relation if relation is not None else names.source(spec))
    shown = f"{spec.source.schema_}.{spec.source.table}"
    params = {"table": table, "state_schema": spec.state_schema}
    out = _from_rewrites(conn, params)
    for (rulename,) in conn.execute(_OWN_RULES, params).fetchall():
        detail = f"it fires on writes to {shown}, which the application no longer makes there: drop it "
        detail += "(re-create what it does as a trigger on the split tables), then run contract again"
        out.append(Dependent("rule", f"{rulename} on {shown}", "refuse", detail))
    out += _functions(conn, spec, params)
    for (policy,) in conn.execute(_POLICIES, params).fetchall():
        detail = "drop it (re-create it over the split tables after contract), then run contract again"
        out.append(Dependent("policy", policy, "refuse", detail))
    for (pub,) in conn.execute(_PUBLICATIONS, params).fetchall():
        detail = f"ALTER PUBLICATION {pub} DROP TABLE {shown} (and add the split tables if its subscribers need them)"
        out.append(Dependent("publication", pub, "refuse", detail))
    references = [f"{r.schema_}.{r.table}" for r in spec.references]
    for conname, referencing in conn.execute(_FOREIGN_KEYS, {**params, "references": references}).fetchall():
        detail = "add its table and column to the spec's [[references]] (contract re-points those at the base table)"
        out.append(Dependent("foreign key", f"{conname} on {referencing}", "refuse", detail))
    return out


def blocking(deps: Sequence[Dependent], compat_view: bool) -> list[Dependent]:
    """The dependents that stop contract: those it cannot move, and, without a compatibility view, every one it
    would re-point (there is nothing with the legacy name to re-point them at)."""
    return [d for d in deps if d.handling == "refuse" or (d.handling == "re-point" and not compat_view)]


def require_movable(deps: Sequence[Dependent], compat_view: bool, command: str = "contract") -> None:
    """Refuse, before any DDL, while an object depends on the legacy table that contract cannot move along."""
    stop = blocking(deps, compat_view)
    if not stop:
        return
    lines = "; ".join(
        d.line() if d.handling == "refuse" else f"{d.kind} {d.name} would keep reading the archive" for d in stop
    )
    hint = "fix each as said"
    if any(d.handling == "re-point" for d in stop):
        hint = "run it with --compat-view (contract then re-points each at the view with the legacy name), or drop "
        hint += "them and re-create them over the split tables after contract"
    raise GuardFailed(f"`{command}` refused: {len(stop)} object(s) depend on the legacy table: {lines}", hint=hint)


def statements(deps: Sequence[Dependent]) -> list[sql.Composable]:
    """The statements that move every re-pointable dependent to whatever now has the legacy name."""
    return [s for d in deps if d.handling == "re-point" for s in d.statements]


def require_droppable(conn: psycopg.Connection[Any], spec: Spec, *, keep_view: bool) -> None:
    """finalize: refuse while something other than migrator's own objects depends on the archive, or (unless it is
    kept) on the compatibility view: dropping either would fail, or with CASCADE take the user's objects along."""
    found = [d for d in find(conn, spec, names.archive(spec)) if d.handling != "note"]
    where = [f"{d.kind} {d.name} (on the archive)" for d in found]
    if not keep_view:
        where += [f"{d.kind} {d.name} (on the compatibility view)" for d in find(conn, spec) if d.handling != "note"]
    if where:
        raise GuardFailed(
            f"`finalize` refused: {len(where)} object(s) depend on what it would drop: {', '.join(where)}",
            hint="re-create them over the split tables (or drop them), or pass --keep-compat-view to keep the view "
            "they read, then run `migrator finalize` again",
        )

"""`migrator infer-spec` (migrator.infer): a spec proposed from the legacy table's catalog and a sample parses,
passes the spec check and `plan`, and carries the catalog's exact types, key, generated columns and foreign keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from migrator import infer
from migrator.db import Database
from migrator.seed import seed
from migrator.spec import spec_from_toml
from tests.test_json_contract import check

pytestmark = pytest.mark.db


def _shop_orders(db: Database) -> None:
    with db.connect(autocommit=True) as c:
        c.execute("CREATE SCHEMA shop")
        c.execute("CREATE TYPE shop.order_kind AS ENUM ('gift', 'plain', 'bulk')")
        c.execute("CREATE DOMAIN shop.positive AS integer CHECK (VALUE > 0)")
        c.execute(
            "CREATE TABLE shop.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
            "kind shop.order_kind NOT NULL, qty shop.positive NOT NULL, unit_price numeric(10,2) NOT NULL, "
            'total numeric GENERATED ALWAYS AS (qty * unit_price) STORED, wrap text, "Ribbon Color" varchar(20), '
            "pallets integer, tags text[], kinds shop.order_kind[], note text)"
        )
        c.execute("CREATE TABLE shop.order_events (id bigserial PRIMARY KEY, order_id bigint REFERENCES shop.orders)")
        c.execute(
            'INSERT INTO shop.orders (kind, qty, unit_price, wrap, "Ribbon Color", pallets, tags, kinds, note) '
            "SELECT k, 1 + g % 5, 2.5, CASE WHEN k = 'gift' THEN 'paper' END, "
            "CASE WHEN k = 'gift' THEN 'red' END, CASE WHEN k = 'bulk' THEN g END, "
            "CASE WHEN g % 10 = 0 THEN ARRAY['a,b', 'c\"d'] END, CASE WHEN g % 10 = 5 THEN ARRAY[k] END, "
            "CASE WHEN g % 2 = 0 THEN 'n' END "
            "FROM generate_series(1, 300) g, "
            "LATERAL (SELECT (ARRAY['gift', 'plain', 'bulk'])[1 + g % 3]::shop.order_kind AS k) x"
        )


def test_infers_an_orders_table_in_its_own_schema(db: Database) -> None:
    """An orders table with an enum discriminator, a domain, an identity key, a generated column, arrays (of an
    enum too), a quoted mixed-case column and a referencing table gets a spec with those exact types, the generated
    expression, one variant per value by NULL pattern, sparse columns in meta, and the reference."""
    _shop_orders(db)
    with db.connect(autocommit=True) as c:
        got = infer.infer_spec(c, "shop.orders", "kind")
    spec = got.spec
    assert got.sampled_rows == 300
    assert spec.source.schema_ == "shop"
    assert spec.source.primary_key_type == "bigint"
    assert spec.base.columns["kind"].type == "shop.order_kind"
    assert spec.base.columns["kind"].required
    assert spec.base.columns["qty"].type == "shop.positive"
    assert spec.base.columns["total"].generated == "((qty)::numeric * unit_price)"
    whens = {v.when: v for v in spec.variants}
    assert set(whens) == {"gift", "bulk"}
    assert set(whens["gift"].columns) == {"wrap", "Ribbon Color"}
    assert whens["gift"].columns["wrap"].required
    assert whens["bulk"].columns["pallets"].type == "integer"
    assert spec.meta is not None
    assert {c: cs.type for c, cs in spec.meta.columns.items()} == {"tags": "text[]", "kinds": "shop.order_kind[]"}
    assert "note" in spec.base.columns
    assert [(r.schema_, r.table, r.column) for r in spec.references] == [("shop", "order_events", "order_id")]
    assert any("'plain' has no column of its own" in n for n in got.notes)
    assert spec_from_toml(got.text) == spec


def test_infer_spec_command_output_passes_plan(db: Database, run_cli: Any, tmp_path: Path) -> None:
    """`migrator infer-spec` for the seed's core_project writes a spec file that `plan` accepts (spec check
    included): the variants are the two project types with their own columns, owner_id keeps its foreign key."""
    with db.connect() as c:
        seed(c, 200, dirty_ratio=0.0, random_seed=3)
    out = tmp_path / "projects.toml"
    r = run_cli(
        "--dsn",
        db.dsn,
        "--json",
        "infer-spec",
        "--table",
        "core_project",
        "--discriminator",
        "project_type",
        "--output",
        str(out),
    )
    assert r.exit_code == 0, r.stderr
    result = check(r, "infer-spec", 0)
    assert result["details"]["spec"] == out.read_text()
    spec = spec_from_toml(out.read_text())
    whens = {v.when: set(v.columns) for v in spec.variants}
    assert whens["school"] >= {"course_name", "course_code", "teacher_name"}
    assert whens["self_study"] >= {"goal_description", "study_frequency"}
    assert [(fk.column, fk.references, fk.on_delete) for fk in spec.base.foreign_keys] == [
        ("owner_id", "auth_user", "cascade")
    ]
    assert {r.table for r in spec.references} == {"core_importantdate", "core_project_attachments"}
    plan = run_cli("--dsn", db.dsn, "--spec", str(out), "plan")
    assert plan.exit_code == 0, plan.stderr
    assert "CREATE TABLE" in plan.stdout


def test_inferred_orders_spec_passes_plan(db: Database, run_cli: Any, tmp_path: Path) -> None:
    """The orders spec printed by `migrator infer-spec` (enum, domain, arrays, generated column) passes `plan`
    against the database; an unknown discriminator is bad input (exit 2, one JSON result with --json)."""
    _shop_orders(db)
    r = run_cli("--dsn", db.dsn, "infer-spec", "--table", "shop.orders", "--discriminator", "kind")
    assert r.exit_code == 0, r.stderr
    path = tmp_path / "orders.toml"
    path.write_text(r.stdout)
    plan = run_cli("--dsn", db.dsn, "--spec", str(path), "plan", "expand")
    assert plan.exit_code == 0, plan.stderr
    assert "GENERATED ALWAYS AS (((qty)::numeric * unit_price)) STORED" in plan.stdout
    bad = check(
        run_cli("--dsn", db.dsn, "--json", "infer-spec", "--table", "shop.orders", "--discriminator", "nope"),
        "infer-spec",
        2,
    )
    assert "no column 'nope'" in bad["error"]["message"]

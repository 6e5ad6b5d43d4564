"""Real table shapes (issue 22, first part): CHECK constraints carried to the split side, an identity key GENERATED
ALWAYS, TRUNCATE of the split base in write_new, and values that cross the syncs whatever the writer's session
settings."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from migrator import guards, operations, spec_check, state
from migrator.db import Database
from migrator.engine.context import Context
from migrator.errors import GuardFailed, SpecError
from migrator.phases import contract, validate
from migrator.phases.backfill import Backfill
from migrator.phases.base import RollbackOptions
from migrator.phases.contract import Contract
from migrator.phases.expand import Expand
from migrator.phases.switch_reads import SwitchReads
from migrator.phases.switch_writes import SwitchWrites
from migrator.phases.validate import Validate
from migrator.seed import seed
from migrator.spec import Spec, spec_from_toml

pytestmark = pytest.mark.db

ORDERS_SPEC = """
name = "orders_split"
[source]
table = "orders"
schema = "shop"
primary_key = "id"
discriminator = "kind"
[base]
table = "order_base"
schema = "shop"
link_column = "order_id"
[base.columns]
kind = { type = "text", required = true }
placed_at = "timestamptz"
[[variants]]
when = "gift"
table = "gift_orders"
[variants.columns]
wrap = { type = "text", required = true }
[[variants]]
when = "plain"
table = "plain_orders"
[variants.columns]
note = "text"
[meta]
table = "order_meta"
[meta.columns]
promised_at = "timestamptz"
weight = "double precision"
"""


def _to_write_new(ctx: Context) -> None:
    for phase in (
        Expand(),
        Backfill(),
        Validate(validate.Options(accept_quarantine=True)),
        SwitchReads(),
        SwitchWrites(),
    ):
        phase.apply(ctx)


@pytest.fixture
def orders(db: Database) -> tuple[Database, Spec]:
    """A legacy `shop.orders` with an identity key GENERATED ALWAYS, a CHECK, and timestamptz/float meta columns."""
    with db.connect(autocommit=True) as c:
        c.execute("CREATE SCHEMA shop")
        c.execute(
            "CREATE TABLE shop.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, kind text NOT NULL, "
            "placed_at timestamptz, wrap text, note text, promised_at timestamptz, weight double precision, "
            "CONSTRAINT orders_wrap_not_blank CHECK (wrap <> ''))"
        )
        c.execute(
            "INSERT INTO shop.orders (kind, placed_at, wrap, promised_at, weight) "
            "SELECT CASE WHEN g % 2 = 0 THEN 'gift' ELSE 'plain' END, now() - g * interval '1 hour', "
            "CASE WHEN g % 2 = 0 THEN 'paper' END, now() + g * interval '1 day', g / 3.0 "
            "FROM generate_series(1, 200) g"
        )
    return db, spec_from_toml(ORDERS_SPEC)


def test_legacy_checks_are_carried_and_validated(orders: tuple[Database, Spec]) -> None:
    """A legacy CHECK on variant columns is created on that split table by expand and validated by the backfill,
    so in write_new the split side itself refuses what legacy refuses."""
    db, spec = orders
    ctx = Context(spec, db)
    _to_write_new(ctx)
    with db.connect(autocommit=True) as c:
        row = c.execute(
            "SELECT convalidated FROM pg_catalog.pg_constraint "
            "WHERE conrelid = 'shop.gift_orders'::regclass AND conname = 'orders_wrap_not_blank'"
        ).fetchone()
        assert row == (True,)
        key = c.execute("SELECT min(order_id) FROM shop.gift_orders").fetchone()
    with psycopg.connect(db.dsn, autocommit=True) as app, pytest.raises(psycopg.errors.CheckViolation) as err:
        app.execute("UPDATE shop.gift_orders SET wrap = '' WHERE order_id = %s", [key[0] if key else None])
    assert err.value.diag.table_name == "gift_orders"


def test_identity_always_key_takes_split_inserts(orders: tuple[Database, Spec]) -> None:
    """With a GENERATED ALWAYS identity key, a row the application inserts into the split tables in write_new
    reaches legacy with the same key (the reverse sync inserts OVERRIDING SYSTEM VALUE)."""
    db, spec = orders
    ctx = Context(spec, db)
    _to_write_new(ctx)
    with psycopg.connect(db.dsn, autocommit=True) as app, app.transaction():
        row = app.execute("INSERT INTO shop.order_base (kind) VALUES ('gift') RETURNING id").fetchone()
        assert row is not None
        app.execute("INSERT INTO shop.gift_orders (order_id, wrap) VALUES (%s, 'ribbon')", [row[0]])
    with db.connect(autocommit=True) as c:
        assert c.execute("SELECT kind, wrap FROM shop.orders WHERE id = %s", [row[0]]).fetchone() == ("gift", "ribbon")
        assert guards.diff(c, spec) == []


def test_truncate_of_the_split_base_reaches_legacy(db: Database, projects_spec: Spec) -> None:
    """In write_new, TRUNCATE of the split base (with its children) empties legacy too, keeping the other tables'
    own ON DELETE rules; legacy and split agree after."""
    with db.connect() as c:
        seed(c, 300, dirty_ratio=0.0, random_seed=8)
    ctx = Context(projects_spec, db)
    _to_write_new(ctx)
    with psycopg.connect(db.dsn, autocommit=True) as app:
        app.execute("TRUNCATE public.projects CASCADE")
    with db.connect(autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM public.core_project").fetchone() == (0,)
        assert c.execute("SELECT count(*) FROM public.core_importantdate").fetchone() == (0,)
        assert guards.diff(c, projects_spec) == []


def test_meta_values_do_not_depend_on_the_writers_session(orders: tuple[Database, Spec]) -> None:
    """Rows written by sessions with another TimeZone, DateStyle and extra_float_digits (and a database whose
    default TimeZone is not UTC) validate clean: the syncs and the tool encode values the same way everywhere."""
    db, spec = orders
    with db.connect(autocommit=True) as c:
        name = c.info.dbname
        c.execute(f"ALTER DATABASE \"{name}\" SET TimeZone = 'Asia/Kolkata'")  # type: ignore[arg-type]
    ctx = Context(spec, db)
    Expand().apply(ctx)
    with psycopg.connect(db.dsn, autocommit=True) as app:
        app.execute("SET TimeZone = 'America/New_York'")
        app.execute("SET DateStyle = 'SQL, DMY'")
        app.execute("SET extra_float_digits = 3")
        app.execute("UPDATE shop.orders SET promised_at = promised_at + interval '1 minute', weight = weight / 7")
        app.execute(
            "INSERT INTO shop.orders (kind, promised_at, weight) VALUES ('plain', '2024-07-01 12:00:00+00', 0.1)"
        )
    Backfill().apply(ctx)
    validation = Validate()
    validation.apply(ctx)
    assert validation.result is not None
    assert validation.result.mismatches == 0


def test_enum_discriminator_in_its_own_schema(db: Database) -> None:
    """A discriminator of a user ENUM type in another schema (spec type `shop.kind`) works in both syncs, the
    backfill and the validation: the application writes either side in write_new and the sides agree."""
    with db.connect(autocommit=True) as c:
        c.execute("CREATE SCHEMA shop")
        c.execute("CREATE TYPE shop.kind AS ENUM ('gift', 'plain')")
        c.execute(
            "CREATE TABLE shop.orders (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, kind shop.kind NOT NULL,"
            " placed_at timestamptz, wrap text, note text, promised_at timestamptz, weight double precision)"
        )
        c.execute(
            "INSERT INTO shop.orders (kind, wrap, note) SELECT CASE WHEN g % 2 = 0 THEN 'gift'::shop.kind "
            "ELSE 'plain'::shop.kind END, 'paper', 'n' FROM generate_series(1, 100) g"
        )
    spec = spec_from_toml(ORDERS_SPEC.replace('kind = { type = "text"', 'kind = { type = "shop.kind"'))
    ctx = Context(spec, db)
    _to_write_new(ctx)
    with psycopg.connect(db.dsn, autocommit=True) as app:
        with app.transaction():
            row = app.execute("INSERT INTO shop.order_base (kind) VALUES ('gift') RETURNING id").fetchone()
            assert row is not None
            app.execute("INSERT INTO shop.gift_orders (order_id, wrap) VALUES (%s, 'bow')", [row[0]])
        app.execute("UPDATE shop.gift_orders SET wrap = 'ribbon' WHERE order_id = %s", [row[0]])
        app.execute("UPDATE shop.orders SET kind = 'gift', wrap = 'box' WHERE id = 3")
    with db.connect(autocommit=True) as c:
        assert guards.diff(c, spec) == []
    validation = Validate()
    validation.apply(ctx)
    assert validation.result is not None
    assert validation.result.mismatches == 0


def test_row_security_is_carried_to_the_split_tables(orders: tuple[Database, Spec]) -> None:
    """A legacy table with row security and a policy hiding rows: from read_new an application role sees on the
    split tables exactly the rows (and child rows) it sees on legacy, never the hidden ones."""
    db, spec = orders
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with db.connect(autocommit=True) as c:
        c.execute("UPDATE shop.orders SET placed_at = NULL WHERE id % 3 = 0")
        c.execute("ALTER TABLE shop.orders ENABLE ROW LEVEL SECURITY")
        c.execute("CREATE POLICY placed_only ON shop.orders FOR SELECT TO PUBLIC USING (placed_at IS NOT NULL)")
        c.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(sql.Identifier(role)))
        c.execute(sql.SQL("GRANT USAGE ON SCHEMA shop TO {}").format(sql.Identifier(role)))
        c.execute(sql.SQL("GRANT SELECT ON shop.orders TO {}").format(sql.Identifier(role)))
    try:
        ctx = Context(spec, db)
        accept = validate.Options(accept_quarantine=True)
        for phase in (Expand(), Backfill(), Validate(accept), SwitchReads()):
            phase.apply(ctx)
        with psycopg.connect(make_conninfo(db.dsn, user=role, password="pw"), autocommit=True) as reader:
            legacy = reader.execute("SELECT count(*), count(*) FILTER (WHERE kind = 'gift') FROM shop.orders")
            base = reader.execute("SELECT count(*) FROM shop.order_base").fetchone()
            gifts = reader.execute("SELECT count(*) FROM shop.gift_orders").fetchone()
            visible, visible_gifts = legacy.fetchone() or (None, None)
        assert visible is not None
        assert visible < 200
        assert base == (visible,)
        assert gifts == (visible_gifts,)
    finally:
        with db.connect(autocommit=True) as c:
            c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_the_applications_own_triggers_keep_legacy_equal_to_split(orders: tuple[Database, Spec]) -> None:
    """The legacy table's own BEFORE triggers (one fills a missing value, one stamps a time on update) fire on the
    reverse sync's writes too; their effect is written back to the split row, so the sides agree after each write."""
    db, spec = orders
    with db.connect(autocommit=True) as c:
        c.execute(
            "CREATE FUNCTION shop.fill_wrap() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.kind = 'gift' AND NEW.wrap IS NULL THEN NEW.wrap := 'standard'; END IF; RETURN NEW; END $$"
        )
        c.execute(
            "CREATE FUNCTION shop.stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "NEW.placed_at := pg_catalog.clock_timestamp(); RETURN NEW; END $$"
        )
        c.execute(
            "CREATE TRIGGER fill_wrap BEFORE INSERT OR UPDATE ON shop.orders "
            "FOR EACH ROW EXECUTE FUNCTION shop.fill_wrap()"
        )
        c.execute("CREATE TRIGGER stamp BEFORE UPDATE ON shop.orders FOR EACH ROW EXECUTE FUNCTION shop.stamp()")
    ctx = Context(spec, db)
    _to_write_new(ctx)
    with psycopg.connect(db.dsn, autocommit=True) as app:
        app.execute("UPDATE shop.order_base SET kind = kind WHERE id <= 20")  # stamped on the legacy side
        with app.transaction():
            row = app.execute("INSERT INTO shop.order_base (kind) VALUES ('gift') RETURNING id").fetchone()
            assert row is not None
            app.execute("INSERT INTO shop.gift_orders (order_id, wrap) VALUES (%s, 'bow')", [row[0]])
            app.execute("UPDATE shop.gift_orders SET wrap = 'ribbon' WHERE order_id = %s", [row[0]])
    with db.connect(autocommit=True) as c:
        assert guards.diff(c, spec) == []
        stamped = c.execute(
            "SELECT count(*) FROM shop.orders o JOIN shop.order_base b USING (id) "
            "WHERE o.id <= 20 AND o.placed_at = b.placed_at AND o.placed_at > now() - interval '1 minute'"
        ).fetchone()
        assert stamped == (20,)


ARRAY_META_SPEC = """
name = "bags_split"
[source]
table = "bags"
schema = "shop"
discriminator = "kind"
[base]
table = "bag_base"
schema = "shop"
link_column = "bag_id"
[base.columns]
kind = { type = "text", required = true }
[[variants]]
when = "gift"
table = "gift_bags"
[variants.columns]
wrap = "text"
[meta]
table = "bag_meta"
[meta.columns]
tags = "text[]"
sizes = "integer[]"
grid = "int[]"
doc = "jsonb"
blob = "bytea"
span = "interval"
price = "numeric(10,2)"
raw = "json"
"""

TRICKY_TAGS = ["wrap", 'ribbon "red"', "a,b", None, "{}", "back\\slash", ""]


@pytest.fixture
def bags(db: Database) -> tuple[Database, Spec]:
    """A legacy `shop.bags` whose meta columns are arrays (text with quotes, commas, NULL elements; a 2-D int
    array), jsonb, bytea, interval and numeric."""
    with db.connect(autocommit=True) as c:
        c.execute("CREATE SCHEMA shop")
        c.execute(
            "CREATE TABLE shop.bags (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, kind text NOT NULL, "
            "wrap text, tags text[], sizes integer[], grid int[], doc jsonb, blob bytea, span interval, "
            "price numeric(10,2), raw json)"
        )
        c.execute(
            "INSERT INTO shop.bags (kind, wrap, tags, sizes, grid, doc, blob, span, price, raw) "
            "SELECT 'gift', 'paper', CASE WHEN g %% 3 > 0 THEN %s::text[] END, ARRAY[g, NULL, -g], "
            "CASE WHEN g %% 2 = 0 THEN ARRAY[[g, 2], [3, NULL]] END, jsonb_build_object('n', g, 'l', ARRAY[1.50]), "
            "'\\x00ff'::bytea || int4send(g), g * interval '1 day 3 hours', g + 0.5, '{\"b\":  [1, 2],  \"a\": null}' "
            "FROM generate_series(1, 60) g",
            [TRICKY_TAGS],
        )
    return db, spec_from_toml(ARRAY_META_SPEC)


def test_array_and_typed_meta_values_round_trip(bags: tuple[Database, Spec]) -> None:
    """Array meta columns (text[] with quotes, commas and NULL elements, int[], a 2-D int[]) and jsonb, json,
    bytea, interval and numeric ones cross legacy -> meta -> legacy equal: the backfill validates clean, and split-side
    meta writes in write_new reach legacy as the same typed values."""
    db, spec = bags
    ctx = Context(spec, db)
    _to_write_new(ctx)
    with psycopg.connect(db.dsn, autocommit=True) as app:
        app.execute("UPDATE shop.bag_meta SET value = %s WHERE bag_id = 1 AND key = 'tags'", [Jsonb(["x", None, 'q"'])])
        app.execute(
            "INSERT INTO shop.bag_meta (bag_id, key, value) VALUES (3, 'tags', %s), (1, 'grid', %s)",
            [Jsonb(["new", "a,b"]), Jsonb([[7, 8], [9, None]])],
        )
        app.execute("UPDATE shop.bag_meta SET value = '\"2 days 01:00:00\"' WHERE bag_id = 4 AND key = 'span'")
        app.execute("DELETE FROM shop.bag_meta WHERE bag_id = 5 AND key = 'sizes'")
        # The same values spelled otherwise than to_jsonb spells them: validation compares them as values.
        app.execute("UPDATE shop.bag_meta SET value = '\"P1DT2H\"' WHERE bag_id = 6 AND key = 'span'")
        app.execute("UPDATE shop.bag_meta SET value = '7.5' WHERE bag_id = 6 AND key = 'price'")
    with db.connect(autocommit=True) as c:
        got = c.execute(
            "SELECT id, tags, grid, sizes, span = interval '2 days 1 hour' FROM shop.bags WHERE id <= 5 ORDER BY id"
        ).fetchall()
        assert got[0][:3] == (1, ["x", None, 'q"'], [[7, 8], [9, None]])
        assert got[1][1] == TRICKY_TAGS
        assert got[2][1] == ["new", "a,b"]
        assert got[3][4] is True
        assert got[4][3] is None
        assert c.execute("SELECT span, price FROM shop.bags WHERE id = 6").fetchone() == (
            timedelta(days=1, hours=2),
            Decimal("7.50"),
        )
        assert guards.diff(c, spec) == []
    validation = Validate()
    validation.apply(ctx)
    assert validation.result is not None
    assert validation.result.mismatches == 0


LINES_SPEC = """
name = "lines_split"
[source]
table = "lines"
schema = "shop"
discriminator = "kind"
[base]
table = "line_base"
schema = "shop"
link_column = "line_id"
[base.columns]
kind = { type = "text", required = true }
qty = "integer"
unit_price = "numeric(10,2)"
total = { type = "numeric", generated = "((qty)::numeric * unit_price)" }
label = { type = "text", generated = "((kind || ':'::text) || COALESCE(wrap, ''::text))" }
[[variants]]
when = "gift"
table = "gift_lines"
[variants.columns]
wrap = "text"
[[variants]]
when = "plain"
table = "plain_lines"
[variants.columns]
note = "text"
"""


@pytest.fixture
def lines(db: Database) -> tuple[Database, Spec]:
    """A legacy `shop.lines` with two generated columns: `total` over base columns (stored on the base table) and
    `label` over a base and a variant column (computed where the split side is read as legacy rows)."""
    with db.connect(autocommit=True) as c:
        c.execute("CREATE SCHEMA shop")
        c.execute(
            "CREATE TABLE shop.lines (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, kind text NOT NULL, "
            "qty integer, unit_price numeric(10,2), wrap text, note text, "
            "total numeric GENERATED ALWAYS AS (qty * unit_price) STORED, "
            "label text GENERATED ALWAYS AS (kind || ':' || coalesce(wrap, '')) STORED)"
        )
        c.execute(
            "INSERT INTO shop.lines (kind, qty, unit_price, wrap, note) "
            "SELECT CASE WHEN g % 2 = 0 THEN 'gift' ELSE 'plain' END, g, g / 4.0, "
            "CASE WHEN g % 2 = 0 THEN 'box' END, 'n' || g FROM generate_series(1, 80) g"
        )
    return db, spec_from_toml(LINES_SPEC)


def test_generated_columns_are_never_written_and_stay_equal(lines: tuple[Database, Spec]) -> None:
    """A generated legacy column over base columns is the same generated column on the base table, one over columns
    of two tables is computed; split-side inserts and updates in write_new succeed (no 428C9), the legacy row
    computes its own values, and the sides agree."""
    db, spec = lines
    ctx = Context(spec, db)
    _to_write_new(ctx)
    with db.connect(autocommit=True) as c:
        kinds = dict(
            c.execute(
                "SELECT attname::text, attgenerated::text FROM pg_catalog.pg_attribute "
                "WHERE attrelid = 'shop.line_base'::regclass AND attname IN ('total', 'label')"
            ).fetchall()
        )
        assert kinds == {"total": "s"}
    with psycopg.connect(db.dsn, autocommit=True) as app:
        with app.transaction():
            row = app.execute(
                "INSERT INTO shop.line_base (kind, qty, unit_price) VALUES ('gift', 3, 2.50) RETURNING id"
            ).fetchone()
            assert row is not None
            app.execute("INSERT INTO shop.gift_lines (line_id, wrap) VALUES (%s, 'bow')", [row[0]])
        app.execute("UPDATE shop.line_base SET qty = qty + 1 WHERE id <= 10")
        app.execute("UPDATE shop.gift_lines SET wrap = 'tube' WHERE line_id = 2")
        app.execute("UPDATE shop.lines SET unit_price = 1 WHERE id = 3")
    with db.connect(autocommit=True) as c:
        assert c.execute("SELECT total, label FROM shop.lines WHERE id = %s", [row[0]]).fetchone() == (
            Decimal("7.50"),
            "gift:bow",
        )
        assert c.execute("SELECT total, label FROM shop.lines WHERE id = 2").fetchone() == (
            Decimal("1.50"),
            "gift:tube",
        )
        assert c.execute("SELECT total FROM shop.line_base WHERE id = 3").fetchone() == (Decimal("4.00"),)
        assert guards.diff(c, spec) == []
    validation = Validate()
    validation.apply(ctx)
    assert validation.result is not None
    assert validation.result.mismatches == 0


def test_generated_columns_through_contract_and_back(lines: tuple[Database, Spec]) -> None:
    """contract --compat-view succeeds (no 0A000) and the view exposes both generated columns with the legacy
    values; the rollback from contracted refills legacy without writing them (no 428C9) and the sides agree."""
    db, spec = lines
    ctx = Context(spec, db)
    _to_write_new(ctx)
    with db.connect(autocommit=True) as c:
        before = c.execute("SELECT id, total, label FROM shop.lines ORDER BY id").fetchall()
    Contract(contract.Options(quiet_period=0, compat_view=True)).apply(ctx)
    with psycopg.connect(db.dsn, autocommit=True) as app:
        assert app.execute("SELECT id, total, label FROM shop.lines ORDER BY id").fetchall() == before
        app.execute("INSERT INTO shop.lines (kind, qty, unit_price, note) VALUES ('plain', 2, 5, 'via view')")
        app.execute("UPDATE shop.line_base SET qty = 7 WHERE id = 5")
        app.execute("UPDATE shop.gift_lines SET wrap = 'crate' WHERE line_id = 6")
        got = app.execute("SELECT total, label FROM shop.lines WHERE note = 'via view'").fetchone()
        assert got == (Decimal("10.00"), "plain:")
    operations.rollback(ctx, None, RollbackOptions(quiet_period=0))
    with db.connect(autocommit=True) as c:
        assert state.read(c, spec).state == "write_new"
        assert c.execute("SELECT total, label FROM shop.lines WHERE id = 5 OR id = 6 ORDER BY id").fetchall() == [
            (Decimal("8.75"), "plain:"),
            (Decimal("9.00"), "gift:crate"),
        ]
        assert guards.diff(c, spec) == []


def test_spec_check_knows_the_generated_columns(lines: tuple[Database, Spec]) -> None:
    """The spec check reads generated columns from the catalog: an expression spelled differently is accepted, one
    that is not the legacy column's, a generated column named without `generated` and one left out are refused,
    each naming the fix with the catalog's expression."""
    db, _ = lines
    respelled = LINES_SPEC.replace('"((qty)::numeric * unit_price)"', '"qty*unit_price"')
    with db.connect(autocommit=True) as c:
        spec_check.check(c, spec_from_toml(respelled))
        wrong = LINES_SPEC.replace('"((qty)::numeric * unit_price)"', '"qty + unit_price"')
        with pytest.raises(SpecError, match=r"base\.columns\.total\.generated: .* is not the legacy expression"):
            spec_check.check(c, spec_from_toml(wrong))
        plain = LINES_SPEC.replace('total = { type = "numeric", generated = "((qty)::numeric * unit_price)" }', "")
        with pytest.raises(SpecError, match=r"'total' is GENERATED ALWAYS .* not in the spec"):
            spec_check.check(c, spec_from_toml(plain))
        unmarked = LINES_SPEC.replace(
            'total = { type = "numeric", generated = "((qty)::numeric * unit_price)" }', 'total = "numeric"'
        )
        with pytest.raises(SpecError, match=r'base\.columns\.total: .* fix: write total = \{ type = "numeric", gen'):
            spec_check.check(c, spec_from_toml(unmarked))


def test_rollback_from_contracted_refuses_rows_legacy_checks_would_refuse(orders: tuple[Database, Spec]) -> None:
    """Split rows written while contracted that a CHECK of the archived legacy table refuses (one over a meta
    column, one across two split tables: neither could be carried) make the rollback refuse before any DDL,
    naming each constraint, the first keys and the count; once they are fixed the rollback goes through."""
    db, spec = orders
    with db.connect(autocommit=True) as c:
        c.execute("ALTER TABLE shop.orders ADD CONSTRAINT weight_not_negative CHECK (weight >= 0)")
        c.execute("ALTER TABLE shop.orders ADD CONSTRAINT gift_has_wrap CHECK (kind <> 'gift' OR wrap IS NOT NULL)")
    ctx = Context(spec, db)
    _to_write_new(ctx)
    Contract(contract.Options(quiet_period=0)).apply(ctx)
    with psycopg.connect(db.dsn, autocommit=True) as app:
        app.execute("UPDATE shop.order_meta SET value = '-1' WHERE key = 'weight' AND order_id IN (4, 5, 6, 7, 8, 9)")
        row = app.execute("INSERT INTO shop.order_base (kind) VALUES ('gift') RETURNING id").fetchone()
        assert row is not None
    with pytest.raises(GuardFailed) as refused:
        operations.rollback(ctx, None, RollbackOptions(quiet_period=0))
    message = refused.value.message
    assert f"gift_has_wrap: id {row[0]} (1 row)" in message
    assert "weight_not_negative: id 4, 5, 6, 7, 8, … (6 rows)" in message
    with db.connect(autocommit=True) as c:
        assert state.read(c, spec).state == "contracted"
        assert c.execute("SELECT to_regclass('shop.orders_archived') IS NOT NULL").fetchone() == (True,)
        c.execute("DELETE FROM shop.order_meta WHERE key = 'weight' AND value = '-1'")
        c.execute("INSERT INTO shop.gift_orders (order_id, wrap) VALUES (%s, 'bag')", [row[0]])
    operations.rollback(ctx, None, RollbackOptions(quiet_period=0))
    with db.connect(autocommit=True) as c:
        assert state.read(c, spec).state == "write_new"
        assert c.execute("SELECT wrap FROM shop.orders WHERE id = %s", [row[0]]).fetchone() == ("bag",)
        assert guards.diff(c, spec) == []


def test_expand_again_keeps_split_tables_with_generated_columns(lines: tuple[Database, Spec]) -> None:
    """After a rollback to legacy that keeps the split tables, a new expand accepts them: the computed generated
    column is not expected on any split table, the stored one is there."""
    db, spec = lines
    ctx = Context(spec, db)
    Expand().apply(ctx)
    operations.rollback(ctx)
    Expand().apply(ctx)
    Backfill().apply(ctx)
    with db.connect(autocommit=True) as c:
        assert state.read(c, spec).state == "backfilled"
        assert guards.diff(c, spec) == []

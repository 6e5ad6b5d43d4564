"""Real table shapes (issue 22, first part): CHECK constraints carried to the split side, an identity key GENERATED
ALWAYS, TRUNCATE of the split base in write_new, and values that cross the syncs whatever the writer's session
settings."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from migrator import guards
from migrator.db import Database
from migrator.engine.context import Context
from migrator.phases import validate
from migrator.phases.backfill import Backfill
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

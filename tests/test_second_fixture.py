"""The second fixture (issue 22): a legacy `shop.orders` as a DBA finds one — its own schema, an enum discriminator,
a generated column, an identity key GENERATED ALWAYS, an array meta column, two triggers of the application, CHECKs,
a row-security policy, a view and a referencing table with ON DELETE CASCADE — through the whole lifecycle to
contracted and back down to legacy one state at a time, under a writer that follows the flags and writes either
side; legacy and split agree in one snapshot after every step, and no writer transaction fails."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from migrator import guards, lifecycle, operations, state
from migrator.db import Database
from migrator.engine.context import Context
from migrator.phases import contract, switch_reads, validate
from migrator.phases.backfill import Backfill
from migrator.phases.base import Phase, RollbackOptions
from migrator.phases.contract import Contract
from migrator.phases.expand import Expand
from migrator.phases.switch_reads import SwitchReads
from migrator.phases.switch_writes import SwitchWrites
from migrator.phases.validate import Validate
from migrator.spec import Spec, spec_from_toml

pytestmark = pytest.mark.db

SPEC = """
name = "shop_orders_split"
[source]
table = "orders"
schema = "shop"
discriminator = "kind"
[base]
table = "order_base"
schema = "shop"
link_column = "order_id"
[base.columns]
kind = { type = "shop.order_kind", required = true }
qty = { type = "integer", required = true }
unit_price = { type = "numeric(10,2)", required = true }
total = { type = "numeric", generated = "((qty)::numeric * unit_price)" }
channel = "text"
updated_at = "timestamp with time zone"
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
tags = "text[]"
[[references]]
table = "order_events"
schema = "shop"
column = "order_id"
"""

SCHEMA = [
    "CREATE SCHEMA shop",
    "CREATE TYPE shop.order_kind AS ENUM ('gift', 'plain')",
    "CREATE TABLE shop.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, kind shop.order_kind NOT NULL, "
    "qty integer NOT NULL CONSTRAINT qty_positive CHECK (qty > 0), unit_price numeric(10,2) NOT NULL, "
    "total numeric GENERATED ALWAYS AS (qty * unit_price) STORED, channel text, updated_at timestamptz, "
    "wrap text CONSTRAINT wrap_not_blank CHECK (wrap <> ''), note text, tags text[])",
    # The application's own triggers: one fills a missing channel, one stamps every update.
    "CREATE FUNCTION shop.fill_channel() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF NEW.channel IS NULL THEN NEW.channel := 'web'; END IF; RETURN NEW; END $$",
    "CREATE FUNCTION shop.stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "NEW.updated_at := pg_catalog.clock_timestamp(); RETURN NEW; END $$",
    "CREATE TRIGGER fill_channel BEFORE INSERT ON shop.orders FOR EACH ROW EXECUTE FUNCTION shop.fill_channel()",
    "CREATE TRIGGER stamp BEFORE UPDATE ON shop.orders FOR EACH ROW EXECUTE FUNCTION shop.stamp()",
    "ALTER TABLE shop.orders ENABLE ROW LEVEL SECURITY",
    "CREATE POLICY hide_internal ON shop.orders FOR SELECT TO PUBLIC USING (channel IS DISTINCT FROM 'internal')",
    "CREATE POLICY owner_writes ON shop.orders FOR ALL TO PUBLIC USING (true) WITH CHECK (true)",
    "CREATE VIEW shop.order_totals AS SELECT id, kind, total FROM shop.orders",
    "CREATE TABLE shop.order_events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "order_id bigint NOT NULL REFERENCES shop.orders (id) ON DELETE CASCADE, what text NOT NULL)",
    "CREATE INDEX ON shop.order_events (order_id)",
    "INSERT INTO shop.orders (kind, qty, unit_price, channel, wrap, note, tags) "
    "SELECT CASE WHEN g % 3 = 0 THEN 'gift' ELSE 'plain' END::shop.order_kind, 1 + g % 7, g / 8.0, "
    "CASE WHEN g % 11 = 0 THEN 'internal' END, CASE WHEN g % 3 = 0 THEN 'paper' END, 'n' || g, "
    "CASE WHEN g % 4 = 0 THEN ARRAY['wrap', 'ribbon \"red\"', 'a,b', NULL] END FROM generate_series(1, 400) g",
    "INSERT INTO shop.order_events (order_id, what) SELECT id, 'placed' FROM shop.orders WHERE id % 5 = 0",
]


@dataclass
class Stats:
    transactions: int = 0
    split_writes: int = 0
    legacy_writes: int = 0
    failures: list[str] = field(default_factory=list)


class FlagWriter:
    """An application instance: reads the flag through `migrator.flag_state` every 0.1 s (so it lags a transition
    a little, as a real one does) and writes the legacy table or the split tables as the flag says, each write
    one transaction: inserts with events and tags, updates, type changes, tag edits, deletes."""

    def __init__(self, dsn: str, spec: Spec, max_id: int) -> None:
        self.dsn, self.spec, self.max_id = dsn, spec, max_id
        self.rng = random.Random(22)
        self.stats = Stats()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FlagWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(30)

    def _run(self) -> None:
        flag = sql.SQL("SELECT {}(%s)").format(sql.Identifier(self.spec.state_schema, "flag_state"))
        current, read_at = lifecycle.START, 0.0
        with psycopg.connect(self.dsn, autocommit=True, application_name="shop-app") as conn:
            while not self.stop_event.is_set():
                if time.monotonic() - read_at > 0.1:
                    try:
                        row = conn.execute(flag, [self.spec.migration_name]).fetchone()
                        current = str(row[0]) if row else lifecycle.START
                    except (psycopg.errors.InvalidSchemaName, psycopg.errors.UndefinedFunction):
                        current = lifecycle.START
                    read_at = time.monotonic()
                split = lifecycle.writes_split(current)
                try:
                    with conn.transaction():
                        (self._split if split else self._legacy)(conn)
                    self.stats.transactions += 1
                    if split:
                        self.stats.split_writes += 1
                    else:
                        self.stats.legacy_writes += 1
                except psycopg.Error as exc:
                    self.stats.failures.append(f"{current}: {str(exc).strip().splitlines()[0]}")
                time.sleep(0.005)

    def _pick(self) -> int:
        return self.rng.randint(1, self.max_id)

    def _legacy(self, c: psycopg.Connection[Any]) -> None:
        r, key = self.rng.random(), self._pick()
        if r < 0.3:
            gift = self.rng.random() < 0.5
            row = c.execute(
                "INSERT INTO shop.orders (kind, qty, unit_price, wrap, note, tags) VALUES (%s, %s, 2.5, %s, 'app', %s) "
                "RETURNING id",
                ["gift" if gift else "plain", self.rng.randint(1, 9), "box" if gift else None, ["x", None, "y,z"]],
            ).fetchone()
            assert row is not None
            self.max_id = max(self.max_id, int(row[0]))
            c.execute("INSERT INTO shop.order_events (order_id, what) VALUES (%s, 'placed')", [row[0]])
        elif r < 0.6:
            c.execute("UPDATE shop.orders SET qty = qty %% 9 + 1, tags = %s WHERE id = %s", [["t", str(key)], key])
        elif r < 0.75:
            c.execute(
                "UPDATE shop.orders SET kind = CASE kind WHEN 'gift' THEN 'plain' ELSE 'gift' END::shop.order_kind, "
                "wrap = coalesce(wrap, 'bag') WHERE id = %s",
                [key],
            )
        elif r < 0.85:
            c.execute("DELETE FROM shop.orders WHERE id = %s", [key])
        else:
            c.execute(
                "INSERT INTO shop.order_events (order_id, what) SELECT id, 'seen' FROM shop.orders WHERE id = %s", [key]
            )

    def _split(self, c: psycopg.Connection[Any]) -> None:
        r, key = self.rng.random(), self._pick()
        if r < 0.3:
            gift = self.rng.random() < 0.5
            row = c.execute(
                "INSERT INTO shop.order_base (kind, qty, unit_price) VALUES (%s, %s, 4) RETURNING id",
                ["gift" if gift else "plain", self.rng.randint(1, 9)],
            ).fetchone()
            assert row is not None
            self.max_id = max(self.max_id, int(row[0]))
            if gift:
                c.execute("INSERT INTO shop.gift_orders (order_id, wrap) VALUES (%s, 'ribbon')", [row[0]])
            else:
                c.execute("INSERT INTO shop.plain_orders (order_id, note) VALUES (%s, 'split')", [row[0]])
            c.execute(
                "INSERT INTO shop.order_meta (order_id, key, value) VALUES (%s, 'tags', %s)",
                [row[0], Jsonb(["s", None, 'q"'])],
            )
            c.execute("INSERT INTO shop.order_events (order_id, what) VALUES (%s, 'placed')", [row[0]])
        elif r < 0.6:
            c.execute("UPDATE shop.order_base SET qty = qty %% 9 + 1 WHERE id = %s", [key])
        elif r < 0.75:
            c.execute(
                "INSERT INTO shop.order_meta AS m (order_id, key, value) SELECT id, 'tags', %s FROM shop.order_base "
                "WHERE id = %s ON CONFLICT (order_id, key) DO UPDATE SET value = EXCLUDED.value",
                [Jsonb(["edited", str(key)]), key],
            )
        elif r < 0.85:
            c.execute("DELETE FROM shop.order_base WHERE id = %s", [key])
        else:
            c.execute(
                "INSERT INTO shop.order_events (order_id, what) SELECT id, 'seen' FROM shop.order_base WHERE id = %s",
                [key],
            )


def _state(db: Database, spec: Spec) -> str:
    with db.connect(autocommit=True) as c:
        return state.read(c, spec).state


def _oracle(db: Database, spec: Spec, where: str) -> None:
    """Where the split side is complete, legacy equals split, read in one statement (one snapshot)."""
    current = _state(db, spec)
    if lifecycle.stage(current).split_complete:
        with db.connect(autocommit=True) as c:
            assert guards.diff(c, spec) == [], f"{where}: legacy and split differ in {current}"


def test_shop_orders_lifecycle_and_every_rollback_under_a_flag_following_writer(db: Database) -> None:
    """shop.orders goes to contracted (compat view) and rolls back from every state down to legacy while a writer
    that follows the flags writes legacy or split: legacy == split after every step, 0 failed transactions."""
    with db.connect(autocommit=True) as c:
        for statement in SCHEMA:
            c.execute(statement)  # type: ignore[arg-type]
    spec = spec_from_toml(SPEC)
    ctx = Context(spec, db)
    phases: list[Phase[Any]] = [
        Expand(),
        Backfill(),
        Validate(validate.Options(accept_quarantine=True)),
        SwitchReads(switch_reads.Options(percent=100)),
        SwitchWrites(),
        Contract(contract.Options(quiet_period=0.5, compat_view=True, wait=10)),
    ]
    rollback = RollbackOptions(quiet_period=0.5, wait=10)
    with FlagWriter(db.dsn, spec, max_id=400) as writer:
        for phase in phases:
            time.sleep(0.3)
            phase.apply(ctx)
            _oracle(db, spec, f"after {phase.name}")
        time.sleep(0.3)
        with psycopg.connect(db.dsn, autocommit=True) as app:
            # The app's view follows the rename to the compatibility view and shows the generated column
            # (one statement: one snapshot while the writer writes).
            row = app.execute(
                "SELECT (SELECT (count(*), sum(total))::text FROM shop.order_totals), "
                "(SELECT (count(*), sum(qty * unit_price))::text FROM shop.order_base)"
            ).fetchone()
        assert row is not None
        assert row[0] == row[1]
        while (current := _state(db, spec)) != lifecycle.START:
            time.sleep(0.3)
            operations.rollback(ctx, None, rollback)
            _oracle(db, spec, f"after the rollback from {current}")
        time.sleep(0.3)
    assert writer.stats.failures == []
    assert writer.stats.split_writes > 10
    assert writer.stats.legacy_writes > 10
    with db.connect(autocommit=True) as c:
        orphans = c.execute(
            "SELECT count(*) FROM shop.order_events e "
            "WHERE NOT EXISTS (SELECT FROM shop.orders o WHERE o.id = e.order_id)"
        ).fetchone()
        assert orphans == (0,)
        assert c.execute(
            "SELECT count(*) FROM shop.orders WHERE total IS DISTINCT FROM qty * unit_price"
        ).fetchone() == (0,)

-- ===== phase: expand (19 steps) =====

-- create state schema migrator_pay (flags, audit log, quarantine)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
CREATE SCHEMA IF NOT EXISTS "migrator_pay";

CREATE TABLE IF NOT EXISTS "migrator_pay".state (
    migration    text PRIMARY KEY,
    state        text NOT NULL DEFAULT 'legacy' CHECK (state IN ('legacy', 'dual_write', 'backfilled', 'validated', 'read_new', 'write_new', 'contracted', 'finalized')),
    read_percent bigint NOT NULL DEFAULT 0 CHECK (read_percent BETWEEN 0 AND 100),
    paused       boolean NOT NULL DEFAULT false,
    spec         jsonb,
    -- contract's quiet-period guard: the legacy-writes counter's value, and since when it has not moved
    legacy_mark    bigint,
    legacy_mark_at timestamptz,
    -- a rollback's quiet-period guard on the split side: the split-writes counter's value, and since when
    split_mark     bigint,
    split_mark_at  timestamptz,
    -- a transition that commits several steps records each here as it commits it (NULL: none in flight)
    progress       jsonb,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    updated_by   text NOT NULL DEFAULT current_user
);

-- Columns added after the first release: a state schema created by an older migrator gains them here.
ALTER TABLE "migrator_pay".state ADD COLUMN IF NOT EXISTS legacy_mark bigint;
ALTER TABLE "migrator_pay".state ADD COLUMN IF NOT EXISTS legacy_mark_at timestamptz;
ALTER TABLE "migrator_pay".state ADD COLUMN IF NOT EXISTS split_mark bigint;
ALTER TABLE "migrator_pay".state ADD COLUMN IF NOT EXISTS split_mark_at timestamptz;
ALTER TABLE "migrator_pay".state ADD COLUMN IF NOT EXISTS progress jsonb;

CREATE TABLE IF NOT EXISTS "migrator_pay".transitions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    migration   text NOT NULL,
    from_state  text NOT NULL,
    to_state    text NOT NULL,
    command     text NOT NULL,
    actor       text NOT NULL,
    db_user     text NOT NULL DEFAULT current_user,
    at          timestamptz NOT NULL DEFAULT now(),
    reason      text,
    duration_ms bigint,
    details     jsonb
);

-- What migrator created (or took over empty) for a migration: the only tables it will ever empty or drop.
CREATE TABLE IF NOT EXISTS "migrator_pay".objects (
    migration  text NOT NULL,
    kind       text NOT NULL,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (migration, kind, name)
);

-- Rows the split schema rejected (DESIGN.md §Races 4): the application's write succeeded, the copy did not.
CREATE TABLE IF NOT EXISTS "migrator_pay".quarantine (
    migration   text NOT NULL,
    key         text NOT NULL,
    sqlstate    text NOT NULL,
    message     text NOT NULL,
    row_data    jsonb,
    source      text NOT NULL DEFAULT 'trigger',
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    accepted_at timestamptz,
    PRIMARY KEY (migration, key)
);

-- For applications in other languages: SELECT migrator.flag_state('core_project_split'). Any role may read the
-- flags (a state name and a percentage are no secret, and an application started before expand must be able to
-- read them later without a grant step): the functions run as their owner, with a pinned search_path, and the
-- schema's USAGE lets callers reach them; the tables themselves grant nothing to anyone.
CREATE OR REPLACE FUNCTION "migrator_pay".flag_state(p_migration text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce((SELECT state FROM "migrator_pay".state WHERE migration = p_migration), 'legacy') $$;

CREATE OR REPLACE FUNCTION "migrator_pay".read_percent(p_migration text) RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce((SELECT read_percent FROM "migrator_pay".state WHERE migration = p_migration), 0)::integer $$;

GRANT USAGE ON SCHEMA "migrator_pay" TO PUBLIC;

-- Backfill work, split into key ranges that workers claim with FOR UPDATE SKIP LOCKED. Each chunk commits
-- its range's cursor with the rows it copied, so a killed backfill resumes exactly where it stopped.
CREATE TABLE IF NOT EXISTS "migrator_pay".backfill_ranges (
    migration   text NOT NULL,
    range_no    bigint NOT NULL,
    lo_key      text,
    hi_key      text,
    cursor_key  text,
    rows_done   bigint NOT NULL DEFAULT 0,
    status      text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done')),
    worker      text,
    worker_pid  bigint,
    heartbeat   timestamptz,
    started_at  timestamptz,
    finished_at timestamptz,
    PRIMARY KEY (migration, range_no)
);

-- What each long job of a migration is doing now (migrator.jobs), for `migrator status` on any machine: written
-- every few seconds while the job runs, deleted when its command ends; a row whose job was killed outright stays,
-- and status shows how long ago it was last heard from.
CREATE TABLE IF NOT EXISTS "migrator_pay".jobs (
    migration   text NOT NULL,
    job         text NOT NULL,
    client      text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    phase       text,
    done        bigint,
    total       bigint,
    rows_per_second double precision,
    pace        text,
    held_by     text,
    PRIMARY KEY (migration, job)
);;
COMMIT;

-- create schema billing_v2
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
CREATE SCHEMA IF NOT EXISTS "billing_v2";
COMMIT;

-- create base table payments
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
CREATE TABLE IF NOT EXISTS "billing_v2"."payments" (
    "payment_uuid" uuid NOT NULL,
    "method" text NOT NULL,
    "amount" numeric(12,2) NOT NULL,
    "currency" varchar(3) NOT NULL,
    "paid_at" timestamptz,
    CONSTRAINT "payments_pkey" PRIMARY KEY ("payment_uuid"),
    CONSTRAINT "payments_method_check" CHECK ("method" IN ('card', 'bank_transfer'))
);
COMMIT;

-- create variant table card_payments (rows where method = 'card')
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
CREATE TABLE IF NOT EXISTS "billing_v2"."card_payments" (
    "payment_uuid" uuid NOT NULL,
    "card_last4" varchar(4) NOT NULL,
    "card_brand" text NOT NULL,
    CONSTRAINT "card_payments_pkey" PRIMARY KEY ("payment_uuid")
);
COMMIT;

-- create variant table bank_transfers (rows where method = 'bank_transfer')
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
CREATE TABLE IF NOT EXISTS "billing_v2"."bank_transfers" (
    "payment_uuid" uuid NOT NULL,
    "iban" text NOT NULL,
    "bic" text,
    CONSTRAINT "bank_transfers_pkey" PRIMARY KEY ("payment_uuid")
);
COMMIT;

-- create meta table payment_attributes
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
CREATE TABLE IF NOT EXISTS "billing_v2"."payment_attributes" (
    "attribute_id" bigint GENERATED BY DEFAULT AS IDENTITY,
    "payment_uuid" uuid NOT NULL,
    "name" text NOT NULL,
    "data" jsonb NOT NULL,
    CONSTRAINT "payment_attributes_pkey" PRIMARY KEY ("attribute_id"),
    CONSTRAINT "payment_attributes_payment_uuid_name_key" UNIQUE ("payment_uuid", "name")
);
COMMIT;

-- add foreign key card_payments_payment_uuid_fkey NOT VALID (no scan, brief lock)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
ALTER TABLE "billing_v2"."card_payments" ADD CONSTRAINT "card_payments_payment_uuid_fkey" FOREIGN KEY ("payment_uuid") REFERENCES "billing_v2"."payments" ("payment_uuid") ON DELETE CASCADE NOT VALID;
COMMIT;

-- validate foreign key card_payments_payment_uuid_fkey
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '0ms';
ALTER TABLE "billing_v2"."card_payments" VALIDATE CONSTRAINT "card_payments_payment_uuid_fkey";
COMMIT;

-- add foreign key bank_transfers_payment_uuid_fkey NOT VALID (no scan, brief lock)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
ALTER TABLE "billing_v2"."bank_transfers" ADD CONSTRAINT "bank_transfers_payment_uuid_fkey" FOREIGN KEY ("payment_uuid") REFERENCES "billing_v2"."payments" ("payment_uuid") ON DELETE CASCADE NOT VALID;
COMMIT;

-- validate foreign key bank_transfers_payment_uuid_fkey
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '0ms';
ALTER TABLE "billing_v2"."bank_transfers" VALIDATE CONSTRAINT "bank_transfers_payment_uuid_fkey";
COMMIT;

-- add foreign key payment_attributes_payment_uuid_fkey NOT VALID (no scan, brief lock)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
ALTER TABLE "billing_v2"."payment_attributes" ADD CONSTRAINT "payment_attributes_payment_uuid_fkey" FOREIGN KEY ("payment_uuid") REFERENCES "billing_v2"."payments" ("payment_uuid") ON DELETE CASCADE NOT VALID;
COMMIT;

-- validate foreign key payment_attributes_payment_uuid_fkey
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '0ms';
ALTER TABLE "billing_v2"."payment_attributes" VALIDATE CONSTRAINT "payment_attributes_payment_uuid_fkey";
COMMIT;

-- record the split tables as created by migrator (the only tables it empties or drops)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
INSERT INTO "migrator_pay"."objects" (migration, kind, name) VALUES ('payments_split', 'table', 'payments'), ('payments_split', 'table', 'card_payments'), ('payments_split', 'table', 'bank_transfers'), ('payments_split', 'table', 'payment_attributes') ON CONFLICT DO NOTHING;
COMMIT;

-- empty split tables left over from an earlier, rolled-back expand (stale)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
TRUNCATE "billing_v2"."payments", "billing_v2"."card_payments", "billing_v2"."bank_transfers", "billing_v2"."payment_attributes";
COMMIT;

-- start a new generation: clear an earlier attempt's backfill ranges and quarantine
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
DELETE FROM "migrator_pay"."quarantine" WHERE migration = 'payments_split';
DELETE FROM "migrator_pay"."backfill_ranges" WHERE migration = 'payments_split';
COMMIT;

-- create row sync function (legacy row -> split rows, quarantine on rejection)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
CREATE OR REPLACE FUNCTION "migrator_pay"."payments_split_sync"(r "billing"."legacy_payments", p_op text, p_source text) RETURNS void LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $migrator$
-- Generated by migrator from the spec: makes the split rows equal the legacy row r. Called by the forward
-- trigger (p_op INSERT/UPDATE) and by the backfill for rows it must re-read under lock (p_op SYNC).
-- A row the split schema rejects goes to quarantine and the caller's statement succeeds.
#variable_conflict use_column
DECLARE
    v_origin text := current_setting('migrator.origin', true);
    v_inserted boolean;
BEGIN
    -- Shared by the sync function and (inline, saving a call per statement) the forward trigger.
    -- While we write the split rows, the reverse triggers (on in write_new) must not copy them back.
    PERFORM pg_catalog.set_config('migrator.origin', 'legacy', true);
    BEGIN
        INSERT INTO "billing_v2"."payments" AS t ("payment_uuid", "method", "amount", "currency", "paid_at") VALUES (r."payment_uuid", r."method", r."amount", r."currency", r."paid_at")
        ON CONFLICT ("payment_uuid") DO UPDATE SET ("method", "amount", "currency", "paid_at") = ROW(EXCLUDED."method", EXCLUDED."amount", EXCLUDED."currency", EXCLUDED."paid_at")
        WHERE (t."method", t."amount", t."currency", t."paid_at") IS DISTINCT FROM (EXCLUDED."method", EXCLUDED."amount", EXCLUDED."currency", EXCLUDED."paid_at")
        RETURNING (xmax = 0) INTO v_inserted;
        IF r."method" = 'card' THEN
            INSERT INTO "billing_v2"."card_payments" AS t ("payment_uuid", "card_last4", "card_brand") VALUES (r."payment_uuid", r."card_last4", coalesce(r."card_brand", 'unknown'::text))
        ON CONFLICT ("payment_uuid") DO UPDATE SET ("card_last4", "card_brand") = ROW(EXCLUDED."card_last4", EXCLUDED."card_brand")
        WHERE (t."card_last4", t."card_brand") IS DISTINCT FROM (EXCLUDED."card_last4", EXCLUDED."card_brand");
        ELSIF p_op <> 'INSERT' THEN
            DELETE FROM "billing_v2"."card_payments" WHERE "payment_uuid" = r."payment_uuid";
        END IF;
        IF r."method" = 'bank_transfer' THEN
            INSERT INTO "billing_v2"."bank_transfers" AS t ("payment_uuid", "iban", "bic") VALUES (r."payment_uuid", r."iban", r."bic")
        ON CONFLICT ("payment_uuid") DO UPDATE SET ("iban", "bic") = ROW(EXCLUDED."iban", EXCLUDED."bic")
        WHERE (t."iban", t."bic") IS DISTINCT FROM (EXCLUDED."iban", EXCLUDED."bic");
        ELSIF p_op <> 'INSERT' THEN
            DELETE FROM "billing_v2"."bank_transfers" WHERE "payment_uuid" = r."payment_uuid";
        END IF;
        IF r."gateway_response" IS NULL THEN
            IF p_op <> 'INSERT' THEN
                DELETE FROM "billing_v2"."payment_attributes" WHERE "payment_uuid" = r."payment_uuid" AND "name" = 'gateway_response';
            END IF;
        ELSE
            INSERT INTO "billing_v2"."payment_attributes" AS t ("payment_uuid", "name", "data") VALUES (r."payment_uuid", 'gateway_response', to_jsonb(r."gateway_response"))
            ON CONFLICT ("payment_uuid", "name") DO UPDATE SET "data" = EXCLUDED."data"
            WHERE t."data" IS DISTINCT FROM EXCLUDED."data";
        END IF;
        IF r."notes" IS NULL THEN
            IF p_op <> 'INSERT' THEN
                DELETE FROM "billing_v2"."payment_attributes" WHERE "payment_uuid" = r."payment_uuid" AND "name" = 'notes';
            END IF;
        ELSE
            INSERT INTO "billing_v2"."payment_attributes" AS t ("payment_uuid", "name", "data") VALUES (r."payment_uuid", 'notes', to_jsonb(r."notes"))
            ON CONFLICT ("payment_uuid", "name") DO UPDATE SET "data" = EXCLUDED."data"
            WHERE t."data" IS DISTINCT FROM EXCLUDED."data";
        END IF;
        IF r."retries" IS NULL THEN
            IF p_op <> 'INSERT' THEN
                DELETE FROM "billing_v2"."payment_attributes" WHERE "payment_uuid" = r."payment_uuid" AND "name" = 'retries';
            END IF;
        ELSE
            INSERT INTO "billing_v2"."payment_attributes" AS t ("payment_uuid", "name", "data") VALUES (r."payment_uuid", 'retries', to_jsonb(r."retries"))
            ON CONFLICT ("payment_uuid", "name") DO UPDATE SET "data" = EXCLUDED."data"
            WHERE t."data" IS DISTINCT FROM EXCLUDED."data";
        END IF;
        -- A quarantined key has no split rows (the handler below removes them), so only a row whose base row
        -- was missing can be in quarantine; a new legacy row (INSERT) never is (its delete resolved it).
        IF v_inserted AND p_op <> 'INSERT' THEN
            UPDATE "migrator_pay"."quarantine" SET resolved_at = now()
             WHERE migration = 'payments_split' AND key = r."payment_uuid"::text AND resolved_at IS NULL;
        END IF;
    EXCEPTION WHEN integrity_constraint_violation OR data_exception THEN
        -- The block's writes are undone; remove split rows left from an earlier version of the row, so the
        -- split side never shows stale data for a quarantined key.
        DELETE FROM "billing_v2"."payments" WHERE "payment_uuid" = r."payment_uuid";
        INSERT INTO "migrator_pay"."quarantine" AS q (migration, key, sqlstate, message, row_data, source)
        VALUES ('payments_split', r."payment_uuid"::text, SQLSTATE, SQLERRM, to_jsonb(r), p_source)
        ON CONFLICT (migration, key) DO UPDATE
           SET sqlstate = EXCLUDED.sqlstate, message = EXCLUDED.message, row_data = EXCLUDED.row_data,
               source = EXCLUDED.source, last_seen = now(), resolved_at = NULL;
    END;
    PERFORM pg_catalog.set_config('migrator.origin', coalesce(v_origin, ''), true);
END
$migrator$;
REVOKE EXECUTE ON FUNCTION "migrator_pay"."payments_split_sync"(r "billing"."legacy_payments", p_op text, p_source text) FROM PUBLIC;
COMMIT;

-- create forward trigger function (legacy -> split; no reverse triggers to tell apart)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
CREATE OR REPLACE FUNCTION "migrator_pay"."payments_split_forward"() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $migrator$
-- Generated by migrator from the spec: keeps the split tables equal to the legacy row, inside the
-- application's own transaction.
#variable_conflict use_column
DECLARE
    v_origin text;
    v_full boolean := true;
    v_inserted boolean;
BEGIN
    -- Loop guard: the reverse trigger sets migrator.origin while it writes the legacy row for a split write.
    IF (coalesce(pg_catalog.current_setting('migrator.origin', true), '') = 'split' AND (pg_catalog.pg_trigger_depth() > 1 OR pg_catalog.pg_has_role(session_user, current_user, 'MEMBER'))) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        NULL;  -- no reverse trigger to tell apart: nothing to mark
        DELETE FROM "billing_v2"."payments" WHERE "payment_uuid" = OLD."payment_uuid";
        UPDATE "migrator_pay"."quarantine" SET resolved_at = now()
         WHERE migration = 'payments_split' AND key = OLD."payment_uuid"::text AND resolved_at IS NULL;
        NULL;  -- no reverse trigger to tell apart: nothing to mark
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD."payment_uuid" IS DISTINCT FROM NEW."payment_uuid" THEN
        NULL;  -- no reverse trigger to tell apart: nothing to mark
        DELETE FROM "billing_v2"."payments" WHERE "payment_uuid" = OLD."payment_uuid";
        UPDATE "migrator_pay"."quarantine" SET resolved_at = now()
         WHERE migration = 'payments_split' AND key = OLD."payment_uuid"::text AND resolved_at IS NULL;
        NULL;  -- no reverse trigger to tell apart: nothing to mark
    ELSIF TG_OP = 'UPDATE' AND OLD."method" IS NOT DISTINCT FROM NEW."method" THEN
        -- Same key, same variant: write only the split rows whose columns changed. Any doubt falls back to the
        -- full sync below: no base row (never copied, a backfill chunk's copy still uncommitted and so invisible
        -- here — the full sync's upsert waits for it — or a quarantined key, whose split rows the quarantine
        -- removed), or a rejection.
        NULL;  -- no reverse trigger to tell apart: nothing to mark
        BEGIN
            IF ROW(OLD."method", OLD."amount", OLD."currency", OLD."paid_at")::record *<> ROW(NEW."method", NEW."amount", NEW."currency", NEW."paid_at")::record THEN
                UPDATE "billing_v2"."payments" SET ("method", "amount", "currency", "paid_at") = ROW(NEW."method", NEW."amount", NEW."currency", NEW."paid_at") WHERE "payment_uuid" = NEW."payment_uuid";
            ELSE
                PERFORM 1 FROM "billing_v2"."payments" WHERE "payment_uuid" = NEW."payment_uuid";
            END IF;
            v_full := NOT FOUND;
            IF NOT v_full THEN
                IF NEW."method" = 'card' AND ROW(OLD."card_last4", coalesce(OLD."card_brand", 'unknown'::text))::record *<> ROW(NEW."card_last4", coalesce(NEW."card_brand", 'unknown'::text))::record THEN
                        INSERT INTO "billing_v2"."card_payments" AS t ("payment_uuid", "card_last4", "card_brand") VALUES (NEW."payment_uuid", NEW."card_last4", coalesce(NEW."card_brand", 'unknown'::text))
        ON CONFLICT ("payment_uuid") DO UPDATE SET ("card_last4", "card_brand") = ROW(EXCLUDED."card_last4", EXCLUDED."card_brand")
        WHERE (t."card_last4", t."card_brand") IS DISTINCT FROM (EXCLUDED."card_last4", EXCLUDED."card_brand");
                    END IF;
                    IF NEW."method" = 'bank_transfer' AND ROW(OLD."iban", OLD."bic")::record *<> ROW(NEW."iban", NEW."bic")::record THEN
                        INSERT INTO "billing_v2"."bank_transfers" AS t ("payment_uuid", "iban", "bic") VALUES (NEW."payment_uuid", NEW."iban", NEW."bic")
        ON CONFLICT ("payment_uuid") DO UPDATE SET ("iban", "bic") = ROW(EXCLUDED."iban", EXCLUDED."bic")
        WHERE (t."iban", t."bic") IS DISTINCT FROM (EXCLUDED."iban", EXCLUDED."bic");
                    END IF;
                    IF ROW(OLD."gateway_response")::record *<> ROW(NEW."gateway_response")::record THEN
                        IF NEW."gateway_response" IS NULL THEN
            IF TG_OP <> 'INSERT' THEN
                DELETE FROM "billing_v2"."payment_attributes" WHERE "payment_uuid" = NEW."payment_uuid" AND "name" = 'gateway_response';
            END IF;
        ELSE
            INSERT INTO "billing_v2"."payment_attributes" AS t ("payment_uuid", "name", "data") VALUES (NEW."payment_uuid", 'gateway_response', to_jsonb(NEW."gateway_response"))
            ON CONFLICT ("payment_uuid", "name") DO UPDATE SET "data" = EXCLUDED."data"
            WHERE t."data" IS DISTINCT FROM EXCLUDED."data";
        END IF;
                    END IF;
                    IF ROW(OLD."notes")::record *<> ROW(NEW."notes")::record THEN
                        IF NEW."notes" IS NULL THEN
            IF TG_OP <> 'INSERT' THEN
                DELETE FROM "billing_v2"."payment_attributes" WHERE "payment_uuid" = NEW."payment_uuid" AND "name" = 'notes';
            END IF;
        ELSE
            INSERT INTO "billing_v2"."payment_attributes" AS t ("payment_uuid", "name", "data") VALUES (NEW."payment_uuid", 'notes', to_jsonb(NEW."notes"))
            ON CONFLICT ("payment_uuid", "name") DO UPDATE SET "data" = EXCLUDED."data"
            WHERE t."data" IS DISTINCT FROM EXCLUDED."data";
        END IF;
                    END IF;
                    IF ROW(OLD."retries")::record *<> ROW(NEW."retries")::record THEN
                        IF NEW."retries" IS NULL THEN
            IF TG_OP <> 'INSERT' THEN
                DELETE FROM "billing_v2"."payment_attributes" WHERE "payment_uuid" = NEW."payment_uuid" AND "name" = 'retries';
            END IF;
        ELSE
            INSERT INTO "billing_v2"."payment_attributes" AS t ("payment_uuid", "name", "data") VALUES (NEW."payment_uuid", 'retries', to_jsonb(NEW."retries"))
            ON CONFLICT ("payment_uuid", "name") DO UPDATE SET "data" = EXCLUDED."data"
            WHERE t."data" IS DISTINCT FROM EXCLUDED."data";
        END IF;
                    END IF;
            END IF;
        EXCEPTION WHEN integrity_constraint_violation OR data_exception THEN
            -- Undone; the full sync writes the row again and quarantines the rejection.
            v_full := true;
        END;
        NULL;  -- no reverse trigger to tell apart: nothing to mark
    END IF;
    IF v_full THEN
        -- Shared by the sync function and (inline, saving a call per statement) the forward trigger.
    -- While we write the split rows, the reverse triggers (on in write_new) must not copy them back.
    NULL;  -- no reverse trigger to tell apart: nothing to mark
    BEGIN
        INSERT INTO "billing_v2"."payments" AS t ("payment_uuid", "method", "amount", "currency", "paid_at") VALUES (NEW."payment_uuid", NEW."method", NEW."amount", NEW."currency", NEW."paid_at")
        ON CONFLICT ("payment_uuid") DO UPDATE SET ("method", "amount", "currency", "paid_at") = ROW(EXCLUDED."method", EXCLUDED."amount", EXCLUDED."currency", EXCLUDED."paid_at")
        WHERE (t."method", t."amount", t."currency", t."paid_at") IS DISTINCT FROM (EXCLUDED."method", EXCLUDED."amount", EXCLUDED."currency", EXCLUDED."paid_at")
        RETURNING (xmax = 0) INTO v_inserted;
        IF NEW."method" = 'card' THEN
            INSERT INTO "billing_v2"."card_payments" AS t ("payment_uuid", "card_last4", "card_brand") VALUES (NEW."payment_uuid", NEW."card_last4", coalesce(NEW."card_brand", 'unknown'::text))
        ON CONFLICT ("payment_uuid") DO UPDATE SET ("card_last4", "card_brand") = ROW(EXCLUDED."card_last4", EXCLUDED."card_brand")
        WHERE (t."card_last4", t."card_brand") IS DISTINCT FROM (EXCLUDED."card_last4", EXCLUDED."card_brand");
        ELSIF TG_OP <> 'INSERT' THEN
            DELETE FROM "billing_v2"."card_payments" WHERE "payment_uuid" = NEW."payment_uuid";
        END IF;
        IF NEW."method" = 'bank_transfer' THEN
            INSERT INTO "billing_v2"."bank_transfers" AS t ("payment_uuid", "iban", "bic") VALUES (NEW."payment_uuid", NEW."iban", NEW."bic")
        ON CONFLICT ("payment_uuid") DO UPDATE SET ("iban", "bic") = ROW(EXCLUDED."iban", EXCLUDED."bic")
        WHERE (t."iban", t."bic") IS DISTINCT FROM (EXCLUDED."iban", EXCLUDED."bic");
        ELSIF TG_OP <> 'INSERT' THEN
            DELETE FROM "billing_v2"."bank_transfers" WHERE "payment_uuid" = NEW."payment_uuid";
        END IF;
        IF NEW."gateway_response" IS NULL THEN
            IF TG_OP <> 'INSERT' THEN
                DELETE FROM "billing_v2"."payment_attributes" WHERE "payment_uuid" = NEW."payment_uuid" AND "name" = 'gateway_response';
            END IF;
        ELSE
            INSERT INTO "billing_v2"."payment_attributes" AS t ("payment_uuid", "name", "data") VALUES (NEW."payment_uuid", 'gateway_response', to_jsonb(NEW."gateway_response"))
            ON CONFLICT ("payment_uuid", "name") DO UPDATE SET "data" = EXCLUDED."data"
            WHERE t."data" IS DISTINCT FROM EXCLUDED."data";
        END IF;
        IF NEW."notes" IS NULL THEN
            IF TG_OP <> 'INSERT' THEN
                DELETE FROM "billing_v2"."payment_attributes" WHERE "payment_uuid" = NEW."payment_uuid" AND "name" = 'notes';
            END IF;
        ELSE
            INSERT INTO "billing_v2"."payment_attributes" AS t ("payment_uuid", "name", "data") VALUES (NEW."payment_uuid", 'notes', to_jsonb(NEW."notes"))
            ON CONFLICT ("payment_uuid", "name") DO UPDATE SET "data" = EXCLUDED."data"
            WHERE t."data" IS DISTINCT FROM EXCLUDED."data";
        END IF;
        IF NEW."retries" IS NULL THEN
            IF TG_OP <> 'INSERT' THEN
                DELETE FROM "billing_v2"."payment_attributes" WHERE "payment_uuid" = NEW."payment_uuid" AND "name" = 'retries';
            END IF;
        ELSE
            INSERT INTO "billing_v2"."payment_attributes" AS t ("payment_uuid", "name", "data") VALUES (NEW."payment_uuid", 'retries', to_jsonb(NEW."retries"))
            ON CONFLICT ("payment_uuid", "name") DO UPDATE SET "data" = EXCLUDED."data"
            WHERE t."data" IS DISTINCT FROM EXCLUDED."data";
        END IF;
        -- A quarantined key has no split rows (the handler below removes them), so only a row whose base row
        -- was missing can be in quarantine; a new legacy row (INSERT) never is (its delete resolved it).
        IF v_inserted AND TG_OP <> 'INSERT' THEN
            UPDATE "migrator_pay"."quarantine" SET resolved_at = now()
             WHERE migration = 'payments_split' AND key = NEW."payment_uuid"::text AND resolved_at IS NULL;
        END IF;
    EXCEPTION WHEN integrity_constraint_violation OR data_exception THEN
        -- The block's writes are undone; remove split rows left from an earlier version of the row, so the
        -- split side never shows stale data for a quarantined key.
        DELETE FROM "billing_v2"."payments" WHERE "payment_uuid" = NEW."payment_uuid";
        INSERT INTO "migrator_pay"."quarantine" AS q (migration, key, sqlstate, message, row_data, source)
        VALUES ('payments_split', NEW."payment_uuid"::text, SQLSTATE, SQLERRM, to_jsonb(NEW), 'trigger')
        ON CONFLICT (migration, key) DO UPDATE
           SET sqlstate = EXCLUDED.sqlstate, message = EXCLUDED.message, row_data = EXCLUDED.row_data,
               source = EXCLUDED.source, last_seen = now(), resolved_at = NULL;
    END;
    NULL;  -- no reverse trigger to tell apart: nothing to mark
    END IF;
    RETURN NULL;
END
$migrator$;
REVOKE EXECUTE ON FUNCTION "migrator_pay"."payments_split_forward"() FROM PUBLIC;
COMMIT;

-- create forward truncate function
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
CREATE OR REPLACE FUNCTION "migrator_pay"."payments_split_forward_truncate"() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $migrator$
BEGIN
    IF (coalesce(pg_catalog.current_setting('migrator.origin', true), '') = 'split' AND (pg_catalog.pg_trigger_depth() > 1 OR pg_catalog.pg_has_role(session_user, current_user, 'MEMBER'))) THEN
        RETURN NULL;
    END IF;
    -- In write_new the split base's reverse truncate trigger must not echo this back.
    PERFORM pg_catalog.set_config('migrator.origin', 'legacy', true);
    TRUNCATE "billing_v2"."payments", "billing_v2"."card_payments", "billing_v2"."bank_transfers", "billing_v2"."payment_attributes";
    PERFORM pg_catalog.set_config('migrator.origin', '', true);
    UPDATE "migrator_pay"."quarantine" SET resolved_at = now() WHERE migration = 'payments_split' AND resolved_at IS NULL;
    RETURN NULL;
END
$migrator$;
REVOKE EXECUTE ON FUNCTION "migrator_pay"."payments_split_forward_truncate"() FROM PUBLIC;
COMMIT;

-- attach forward triggers to legacy_payments
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
CREATE OR REPLACE TRIGGER "migrator_payments_split_forward" AFTER INSERT OR UPDATE OR DELETE ON "billing"."legacy_payments" FOR EACH ROW EXECUTE FUNCTION "migrator_pay"."payments_split_forward"();
CREATE OR REPLACE TRIGGER "migrator_payments_split_forward_truncate" AFTER TRUNCATE ON "billing"."legacy_payments" FOR EACH STATEMENT EXECUTE FUNCTION "migrator_pay"."payments_split_forward_truncate"();
COMMIT;

-- ===== phase: expand (21 steps) =====

-- create state schema migrator (flags, audit log, quarantine)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
CREATE SCHEMA IF NOT EXISTS "migrator";

CREATE TABLE IF NOT EXISTS "migrator".state (
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
ALTER TABLE "migrator".state ADD COLUMN IF NOT EXISTS legacy_mark bigint;
ALTER TABLE "migrator".state ADD COLUMN IF NOT EXISTS legacy_mark_at timestamptz;
ALTER TABLE "migrator".state ADD COLUMN IF NOT EXISTS split_mark bigint;
ALTER TABLE "migrator".state ADD COLUMN IF NOT EXISTS split_mark_at timestamptz;
ALTER TABLE "migrator".state ADD COLUMN IF NOT EXISTS progress jsonb;

CREATE TABLE IF NOT EXISTS "migrator".transitions (
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
CREATE TABLE IF NOT EXISTS "migrator".objects (
    migration  text NOT NULL,
    kind       text NOT NULL,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (migration, kind, name)
);

-- Rows the split schema rejected (DESIGN.md §Races 4): the application's write succeeded, the copy did not.
CREATE TABLE IF NOT EXISTS "migrator".quarantine (
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
CREATE OR REPLACE FUNCTION "migrator".flag_state(p_migration text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce((SELECT state FROM "migrator".state WHERE migration = p_migration), 'legacy') $$;

CREATE OR REPLACE FUNCTION "migrator".read_percent(p_migration text) RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce((SELECT read_percent FROM "migrator".state WHERE migration = p_migration), 0)::integer $$;

GRANT USAGE ON SCHEMA "migrator" TO PUBLIC;

-- Backfill work, split into key ranges that workers claim with FOR UPDATE SKIP LOCKED. Each chunk commits
-- its range's cursor with the rows it copied, so a killed backfill resumes exactly where it stopped.
CREATE TABLE IF NOT EXISTS "migrator".backfill_ranges (
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
CREATE TABLE IF NOT EXISTS "migrator".jobs (
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

-- create base table projects
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
CREATE TABLE IF NOT EXISTS "public"."projects" (
    "id" bigint NOT NULL DEFAULT nextval('"public"."core_project_id_seq"'::regclass),
    "name" varchar(255) NOT NULL,
    "project_type" varchar(20) NOT NULL,
    "owner_id" bigint NOT NULL,
    "start_date" date,
    "end_date" date,
    "is_draft" boolean NOT NULL,
    "created_at" timestamptz NOT NULL,
    "updated_at" timestamptz NOT NULL,
    CONSTRAINT "projects_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "projects_project_type_check" CHECK ("project_type" IN ('school', 'self_study'))
);
COMMIT;

-- create variant table school_projects (rows where project_type = 'school')
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
CREATE TABLE IF NOT EXISTS "public"."school_projects" (
    "project_id" bigint NOT NULL,
    "course_name" varchar(255) NOT NULL,
    "course_code" varchar(50) NOT NULL,
    "teacher_name" varchar(255) NOT NULL,
    CONSTRAINT "school_projects_pkey" PRIMARY KEY ("project_id")
);
COMMIT;

-- create variant table self_study_projects (rows where project_type = 'self_study')
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
CREATE TABLE IF NOT EXISTS "public"."self_study_projects" (
    "project_id" bigint NOT NULL,
    "goal_description" text NOT NULL,
    "study_frequency" varchar(50) NOT NULL,
    CONSTRAINT "self_study_projects_pkey" PRIMARY KEY ("project_id")
);
COMMIT;

-- create meta table project_meta
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
CREATE TABLE IF NOT EXISTS "public"."project_meta" (
    "id" bigint GENERATED BY DEFAULT AS IDENTITY,
    "project_id" bigint NOT NULL,
    "key" text NOT NULL,
    "value" jsonb NOT NULL,
    CONSTRAINT "project_meta_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "project_meta_project_id_key_key" UNIQUE ("project_id", "key")
);
COMMIT;

-- add foreign key school_projects_project_id_fkey NOT VALID (no scan, brief lock)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
ALTER TABLE "public"."school_projects" ADD CONSTRAINT "school_projects_project_id_fkey" FOREIGN KEY ("project_id") REFERENCES "public"."projects" ("id") ON DELETE CASCADE NOT VALID;
COMMIT;

-- validate foreign key school_projects_project_id_fkey
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '0ms';
ALTER TABLE "public"."school_projects" VALIDATE CONSTRAINT "school_projects_project_id_fkey";
COMMIT;

-- add foreign key self_study_projects_project_id_fkey NOT VALID (no scan, brief lock)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
ALTER TABLE "public"."self_study_projects" ADD CONSTRAINT "self_study_projects_project_id_fkey" FOREIGN KEY ("project_id") REFERENCES "public"."projects" ("id") ON DELETE CASCADE NOT VALID;
COMMIT;

-- validate foreign key self_study_projects_project_id_fkey
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '0ms';
ALTER TABLE "public"."self_study_projects" VALIDATE CONSTRAINT "self_study_projects_project_id_fkey";
COMMIT;

-- add foreign key project_meta_project_id_fkey NOT VALID (no scan, brief lock)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
ALTER TABLE "public"."project_meta" ADD CONSTRAINT "project_meta_project_id_fkey" FOREIGN KEY ("project_id") REFERENCES "public"."projects" ("id") ON DELETE CASCADE NOT VALID;
COMMIT;

-- validate foreign key project_meta_project_id_fkey
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '0ms';
ALTER TABLE "public"."project_meta" VALIDATE CONSTRAINT "project_meta_project_id_fkey";
COMMIT;

-- add foreign key projects_owner_id_fkey NOT VALID (no scan, brief lock)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
ALTER TABLE "public"."projects" ADD CONSTRAINT "projects_owner_id_fkey" FOREIGN KEY ("owner_id") REFERENCES "public"."auth_user" ("id") ON DELETE CASCADE NOT VALID;
COMMIT;

-- validate foreign key projects_owner_id_fkey
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '0ms';
ALTER TABLE "public"."projects" VALIDATE CONSTRAINT "projects_owner_id_fkey";
COMMIT;

-- build index projects_owner_id_idx CONCURRENTLY
SET lock_timeout = '500ms';
SET statement_timeout = '0ms';
CREATE INDEX CONCURRENTLY IF NOT EXISTS "projects_owner_id_idx" ON "public"."projects" USING btree ("owner_id");
RESET lock_timeout;
RESET statement_timeout;

-- record the split tables as created by migrator (the only tables it empties or drops)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
INSERT INTO "migrator"."objects" (migration, kind, name) VALUES ('core_project_split', 'table', 'projects'), ('core_project_split', 'table', 'school_projects'), ('core_project_split', 'table', 'self_study_projects'), ('core_project_split', 'table', 'project_meta') ON CONFLICT DO NOTHING;
COMMIT;

-- empty split tables left over from an earlier, rolled-back expand (stale)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
TRUNCATE "public"."projects", "public"."school_projects", "public"."self_study_projects", "public"."project_meta";
COMMIT;

-- start a new generation: clear an earlier attempt's backfill ranges and quarantine
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
DELETE FROM "migrator"."quarantine" WHERE migration = 'core_project_split';
DELETE FROM "migrator"."backfill_ranges" WHERE migration = 'core_project_split';
COMMIT;

-- create row sync function (legacy row -> split rows, quarantine on rejection)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
CREATE OR REPLACE FUNCTION "migrator"."core_project_split_sync"(r "public"."core_project", p_op text, p_source text) RETURNS void LANGUAGE plpgsql
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
        INSERT INTO "public"."projects" AS t ("id", "name", "project_type", "owner_id", "start_date", "end_date", "is_draft", "created_at", "updated_at") VALUES (r."id", r."name", r."project_type", r."owner_id", r."start_date", r."end_date", r."is_draft", r."created_at", r."updated_at")
        ON CONFLICT ("id") DO UPDATE SET ("name", "project_type", "owner_id", "start_date", "end_date", "is_draft", "created_at", "updated_at") = ROW(EXCLUDED."name", EXCLUDED."project_type", EXCLUDED."owner_id", EXCLUDED."start_date", EXCLUDED."end_date", EXCLUDED."is_draft", EXCLUDED."created_at", EXCLUDED."updated_at")
        WHERE (t."name", t."project_type", t."owner_id", t."start_date", t."end_date", t."is_draft", t."created_at", t."updated_at") IS DISTINCT FROM (EXCLUDED."name", EXCLUDED."project_type", EXCLUDED."owner_id", EXCLUDED."start_date", EXCLUDED."end_date", EXCLUDED."is_draft", EXCLUDED."created_at", EXCLUDED."updated_at")
        RETURNING (xmax = 0) INTO v_inserted;
        IF r."project_type" = 'school' THEN
            INSERT INTO "public"."school_projects" AS t ("project_id", "course_name", "course_code", "teacher_name") VALUES (r."id", r."course_name", r."course_code", r."teacher_name")
        ON CONFLICT ("project_id") DO UPDATE SET ("course_name", "course_code", "teacher_name") = ROW(EXCLUDED."course_name", EXCLUDED."course_code", EXCLUDED."teacher_name")
        WHERE (t."course_name", t."course_code", t."teacher_name") IS DISTINCT FROM (EXCLUDED."course_name", EXCLUDED."course_code", EXCLUDED."teacher_name");
        ELSIF p_op <> 'INSERT' THEN
            DELETE FROM "public"."school_projects" WHERE "project_id" = r."id";
        END IF;
        IF r."project_type" = 'self_study' THEN
            INSERT INTO "public"."self_study_projects" AS t ("project_id", "goal_description", "study_frequency") VALUES (r."id", r."goal_description", r."study_frequency")
        ON CONFLICT ("project_id") DO UPDATE SET ("goal_description", "study_frequency") = ROW(EXCLUDED."goal_description", EXCLUDED."study_frequency")
        WHERE (t."goal_description", t."study_frequency") IS DISTINCT FROM (EXCLUDED."goal_description", EXCLUDED."study_frequency");
        ELSIF p_op <> 'INSERT' THEN
            DELETE FROM "public"."self_study_projects" WHERE "project_id" = r."id";
        END IF;
        IF r."syllabus" IS NULL THEN
            IF p_op <> 'INSERT' THEN
                DELETE FROM "public"."project_meta" WHERE "project_id" = r."id" AND "key" = 'syllabus';
            END IF;
        ELSE
            INSERT INTO "public"."project_meta" AS t ("project_id", "key", "value") VALUES (r."id", 'syllabus', to_jsonb(r."syllabus"))
            ON CONFLICT ("project_id", "key") DO UPDATE SET "value" = EXCLUDED."value"
            WHERE t."value" IS DISTINCT FROM EXCLUDED."value";
        END IF;
        -- A quarantined key has no split rows (the handler below removes them), so only a row whose base row
        -- was missing can be in quarantine; a new legacy row (INSERT) never is (its delete resolved it).
        IF v_inserted AND p_op <> 'INSERT' THEN
            UPDATE "migrator"."quarantine" SET resolved_at = now()
             WHERE migration = 'core_project_split' AND key = r."id"::text AND resolved_at IS NULL;
        END IF;
    EXCEPTION WHEN integrity_constraint_violation OR data_exception THEN
        -- The block's writes are undone; remove split rows left from an earlier version of the row, so the
        -- split side never shows stale data for a quarantined key.
        DELETE FROM "public"."projects" WHERE "id" = r."id";
        INSERT INTO "migrator"."quarantine" AS q (migration, key, sqlstate, message, row_data, source)
        VALUES ('core_project_split', r."id"::text, SQLSTATE, SQLERRM, to_jsonb(r), p_source)
        ON CONFLICT (migration, key) DO UPDATE
           SET sqlstate = EXCLUDED.sqlstate, message = EXCLUDED.message, row_data = EXCLUDED.row_data,
               source = EXCLUDED.source, last_seen = now(), resolved_at = NULL;
    END;
    PERFORM pg_catalog.set_config('migrator.origin', coalesce(v_origin, ''), true);
END
$migrator$;
REVOKE EXECUTE ON FUNCTION "migrator"."core_project_split_sync"(r "public"."core_project", p_op text, p_source text) FROM PUBLIC;
COMMIT;

-- create forward trigger function (legacy -> split; no reverse triggers to tell apart)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
CREATE OR REPLACE FUNCTION "migrator"."core_project_split_forward"() RETURNS trigger LANGUAGE plpgsql
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
        DELETE FROM "public"."projects" WHERE "id" = OLD."id";
        UPDATE "migrator"."quarantine" SET resolved_at = now()
         WHERE migration = 'core_project_split' AND key = OLD."id"::text AND resolved_at IS NULL;
        NULL;  -- no reverse trigger to tell apart: nothing to mark
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD."id" IS DISTINCT FROM NEW."id" THEN
        NULL;  -- no reverse trigger to tell apart: nothing to mark
        DELETE FROM "public"."projects" WHERE "id" = OLD."id";
        UPDATE "migrator"."quarantine" SET resolved_at = now()
         WHERE migration = 'core_project_split' AND key = OLD."id"::text AND resolved_at IS NULL;
        NULL;  -- no reverse trigger to tell apart: nothing to mark
    ELSIF TG_OP = 'UPDATE' AND OLD."project_type" IS NOT DISTINCT FROM NEW."project_type" THEN
        -- Same key, same variant: write only the split rows whose columns changed. Any doubt falls back to the
        -- full sync below: no base row (never copied, a backfill chunk's copy still uncommitted and so invisible
        -- here — the full sync's upsert waits for it — or a quarantined key, whose split rows the quarantine
        -- removed), or a rejection.
        NULL;  -- no reverse trigger to tell apart: nothing to mark
        BEGIN
            IF ROW(OLD."name", OLD."project_type", OLD."owner_id", OLD."start_date", OLD."end_date", OLD."is_draft", OLD."created_at", OLD."updated_at")::record *<> ROW(NEW."name", NEW."project_type", NEW."owner_id", NEW."start_date", NEW."end_date", NEW."is_draft", NEW."created_at", NEW."updated_at")::record THEN
                UPDATE "public"."projects" SET ("name", "project_type", "owner_id", "start_date", "end_date", "is_draft", "created_at", "updated_at") = ROW(NEW."name", NEW."project_type", NEW."owner_id", NEW."start_date", NEW."end_date", NEW."is_draft", NEW."created_at", NEW."updated_at") WHERE "id" = NEW."id";
            ELSE
                PERFORM 1 FROM "public"."projects" WHERE "id" = NEW."id";
            END IF;
            v_full := NOT FOUND;
            IF NOT v_full THEN
                IF NEW."project_type" = 'school' AND ROW(OLD."course_name", OLD."course_code", OLD."teacher_name")::record *<> ROW(NEW."course_name", NEW."course_code", NEW."teacher_name")::record THEN
                        INSERT INTO "public"."school_projects" AS t ("project_id", "course_name", "course_code", "teacher_name") VALUES (NEW."id", NEW."course_name", NEW."course_code", NEW."teacher_name")
        ON CONFLICT ("project_id") DO UPDATE SET ("course_name", "course_code", "teacher_name") = ROW(EXCLUDED."course_name", EXCLUDED."course_code", EXCLUDED."teacher_name")
        WHERE (t."course_name", t."course_code", t."teacher_name") IS DISTINCT FROM (EXCLUDED."course_name", EXCLUDED."course_code", EXCLUDED."teacher_name");
                    END IF;
                    IF NEW."project_type" = 'self_study' AND ROW(OLD."goal_description", OLD."study_frequency")::record *<> ROW(NEW."goal_description", NEW."study_frequency")::record THEN
                        INSERT INTO "public"."self_study_projects" AS t ("project_id", "goal_description", "study_frequency") VALUES (NEW."id", NEW."goal_description", NEW."study_frequency")
        ON CONFLICT ("project_id") DO UPDATE SET ("goal_description", "study_frequency") = ROW(EXCLUDED."goal_description", EXCLUDED."study_frequency")
        WHERE (t."goal_description", t."study_frequency") IS DISTINCT FROM (EXCLUDED."goal_description", EXCLUDED."study_frequency");
                    END IF;
                    IF ROW(OLD."syllabus")::record *<> ROW(NEW."syllabus")::record THEN
                        IF NEW."syllabus" IS NULL THEN
            IF TG_OP <> 'INSERT' THEN
                DELETE FROM "public"."project_meta" WHERE "project_id" = NEW."id" AND "key" = 'syllabus';
            END IF;
        ELSE
            INSERT INTO "public"."project_meta" AS t ("project_id", "key", "value") VALUES (NEW."id", 'syllabus', to_jsonb(NEW."syllabus"))
            ON CONFLICT ("project_id", "key") DO UPDATE SET "value" = EXCLUDED."value"
            WHERE t."value" IS DISTINCT FROM EXCLUDED."value";
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
        INSERT INTO "public"."projects" AS t ("id", "name", "project_type", "owner_id", "start_date", "end_date", "is_draft", "created_at", "updated_at") VALUES (NEW."id", NEW."name", NEW."project_type", NEW."owner_id", NEW."start_date", NEW."end_date", NEW."is_draft", NEW."created_at", NEW."updated_at")
        ON CONFLICT ("id") DO UPDATE SET ("name", "project_type", "owner_id", "start_date", "end_date", "is_draft", "created_at", "updated_at") = ROW(EXCLUDED."name", EXCLUDED."project_type", EXCLUDED."owner_id", EXCLUDED."start_date", EXCLUDED."end_date", EXCLUDED."is_draft", EXCLUDED."created_at", EXCLUDED."updated_at")
        WHERE (t."name", t."project_type", t."owner_id", t."start_date", t."end_date", t."is_draft", t."created_at", t."updated_at") IS DISTINCT FROM (EXCLUDED."name", EXCLUDED."project_type", EXCLUDED."owner_id", EXCLUDED."start_date", EXCLUDED."end_date", EXCLUDED."is_draft", EXCLUDED."created_at", EXCLUDED."updated_at")
        RETURNING (xmax = 0) INTO v_inserted;
        IF NEW."project_type" = 'school' THEN
            INSERT INTO "public"."school_projects" AS t ("project_id", "course_name", "course_code", "teacher_name") VALUES (NEW."id", NEW."course_name", NEW."course_code", NEW."teacher_name")
        ON CONFLICT ("project_id") DO UPDATE SET ("course_name", "course_code", "teacher_name") = ROW(EXCLUDED."course_name", EXCLUDED."course_code", EXCLUDED."teacher_name")
        WHERE (t."course_name", t."course_code", t."teacher_name") IS DISTINCT FROM (EXCLUDED."course_name", EXCLUDED."course_code", EXCLUDED."teacher_name");
        ELSIF TG_OP <> 'INSERT' THEN
            DELETE FROM "public"."school_projects" WHERE "project_id" = NEW."id";
        END IF;
        IF NEW."project_type" = 'self_study' THEN
            INSERT INTO "public"."self_study_projects" AS t ("project_id", "goal_description", "study_frequency") VALUES (NEW."id", NEW."goal_description", NEW."study_frequency")
        ON CONFLICT ("project_id") DO UPDATE SET ("goal_description", "study_frequency") = ROW(EXCLUDED."goal_description", EXCLUDED."study_frequency")
        WHERE (t."goal_description", t."study_frequency") IS DISTINCT FROM (EXCLUDED."goal_description", EXCLUDED."study_frequency");
        ELSIF TG_OP <> 'INSERT' THEN
            DELETE FROM "public"."self_study_projects" WHERE "project_id" = NEW."id";
        END IF;
        IF NEW."syllabus" IS NULL THEN
            IF TG_OP <> 'INSERT' THEN
                DELETE FROM "public"."project_meta" WHERE "project_id" = NEW."id" AND "key" = 'syllabus';
            END IF;
        ELSE
            INSERT INTO "public"."project_meta" AS t ("project_id", "key", "value") VALUES (NEW."id", 'syllabus', to_jsonb(NEW."syllabus"))
            ON CONFLICT ("project_id", "key") DO UPDATE SET "value" = EXCLUDED."value"
            WHERE t."value" IS DISTINCT FROM EXCLUDED."value";
        END IF;
        -- A quarantined key has no split rows (the handler below removes them), so only a row whose base row
        -- was missing can be in quarantine; a new legacy row (INSERT) never is (its delete resolved it).
        IF v_inserted AND TG_OP <> 'INSERT' THEN
            UPDATE "migrator"."quarantine" SET resolved_at = now()
             WHERE migration = 'core_project_split' AND key = NEW."id"::text AND resolved_at IS NULL;
        END IF;
    EXCEPTION WHEN integrity_constraint_violation OR data_exception THEN
        -- The block's writes are undone; remove split rows left from an earlier version of the row, so the
        -- split side never shows stale data for a quarantined key.
        DELETE FROM "public"."projects" WHERE "id" = NEW."id";
        INSERT INTO "migrator"."quarantine" AS q (migration, key, sqlstate, message, row_data, source)
        VALUES ('core_project_split', NEW."id"::text, SQLSTATE, SQLERRM, to_jsonb(NEW), 'trigger')
        ON CONFLICT (migration, key) DO UPDATE
           SET sqlstate = EXCLUDED.sqlstate, message = EXCLUDED.message, row_data = EXCLUDED.row_data,
               source = EXCLUDED.source, last_seen = now(), resolved_at = NULL;
    END;
    NULL;  -- no reverse trigger to tell apart: nothing to mark
    END IF;
    RETURN NULL;
END
$migrator$;
REVOKE EXECUTE ON FUNCTION "migrator"."core_project_split_forward"() FROM PUBLIC;
COMMIT;

-- create forward truncate function
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
CREATE OR REPLACE FUNCTION "migrator"."core_project_split_forward_truncate"() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $migrator$
BEGIN
    IF (coalesce(pg_catalog.current_setting('migrator.origin', true), '') = 'split' AND (pg_catalog.pg_trigger_depth() > 1 OR pg_catalog.pg_has_role(session_user, current_user, 'MEMBER'))) THEN
        RETURN NULL;
    END IF;
    -- In write_new the split base's reverse truncate trigger must not echo this back.
    PERFORM pg_catalog.set_config('migrator.origin', 'legacy', true);
    TRUNCATE "public"."projects", "public"."school_projects", "public"."self_study_projects", "public"."project_meta";
    PERFORM pg_catalog.set_config('migrator.origin', '', true);
    UPDATE "migrator"."quarantine" SET resolved_at = now() WHERE migration = 'core_project_split' AND resolved_at IS NULL;
    RETURN NULL;
END
$migrator$;
REVOKE EXECUTE ON FUNCTION "migrator"."core_project_split_forward_truncate"() FROM PUBLIC;
COMMIT;

-- attach forward triggers to core_project
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
CREATE OR REPLACE TRIGGER "migrator_core_project_split_forward" AFTER INSERT OR UPDATE OR DELETE ON "public"."core_project" FOR EACH ROW EXECUTE FUNCTION "migrator"."core_project_split_forward"();
CREATE OR REPLACE TRIGGER "migrator_core_project_split_forward_truncate" AFTER TRUNCATE ON "public"."core_project" FOR EACH STATEMENT EXECUTE FUNCTION "migrator"."core_project_split_forward_truncate"();
COMMIT;

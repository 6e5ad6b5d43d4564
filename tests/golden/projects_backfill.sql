-- ===== phase: backfill (10 steps) =====

-- plan key ranges (once): upper bound, row count, boundaries for parallel workers
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '0ms';
SELECT (SELECT l."id" FROM "public"."core_project" AS l ORDER BY l."id" DESC LIMIT 1)::text,
       (SELECT (percentile_disc($1::float8[]) WITHIN GROUP (ORDER BY l."id"))::text[] FROM "public"."core_project" AS l);
COMMIT;

-- copy one chunk (repeated; keyset on the primary key; FOR KEY SHARE; only rows not copied yet; foreign keys checked set-based, their triggers off where the role may set session_replication_role)
BEGIN;
SET LOCAL lock_timeout = '50ms';
SET LOCAL statement_timeout = '60000ms';
WITH src AS MATERIALIZED (
    SELECT l."id", l."name", l."project_type", l."owner_id", l."start_date", l."end_date", l."is_draft", l."created_at", l."updated_at", l."course_name", l."course_code", l."teacher_name", l."goal_description", l."study_frequency", l."syllabus", (l."project_type" IS NULL OR l."project_type" NOT IN ('school', 'self_study') OR l."name" IS NULL OR l."owner_id" IS NULL OR l."is_draft" IS NULL OR l."created_at" IS NULL OR l."updated_at" IS NULL OR (l."project_type" = 'school' AND l."course_name" IS NULL) OR (l."project_type" = 'school' AND l."course_code" IS NULL) OR (l."project_type" = 'school' AND l."teacher_name" IS NULL) OR (l."project_type" = 'self_study' AND l."goal_description" IS NULL) OR (l."project_type" = 'self_study' AND l."study_frequency" IS NULL)) AS invalid
      FROM "public"."core_project" AS l
     WHERE l."id" > $1::bigint AND l."id" <= $2::bigint
     ORDER BY l."id"
     LIMIT $3
       FOR KEY SHARE
),
"fk0" AS (
    SELECT r."id" AS k FROM "public"."auth_user" AS r
     WHERE r."id" IN (SELECT s."owner_id" FROM src AS s WHERE NOT s.invalid)
       FOR KEY SHARE OF r
), base_ins AS (
    INSERT INTO "public"."projects" ("id", "name", "project_type", "owner_id", "start_date", "end_date", "is_draft", "created_at", "updated_at")
    SELECT s."id", s."name", s."project_type", s."owner_id", s."start_date", s."end_date", s."is_draft", s."created_at", s."updated_at" FROM src AS s WHERE NOT s.invalid AND (s."owner_id" IS NULL OR s."owner_id" IN (SELECT k FROM "fk0"))
       AND NOT EXISTS (SELECT FROM "public"."projects" AS b WHERE b."id" = s."id" OFFSET 0)
    RETURNING "id"
),
"v0" AS (
    INSERT INTO "public"."school_projects" ("project_id", "course_name", "course_code", "teacher_name")
    SELECT s."id", s."course_name", s."course_code", s."teacher_name" FROM src AS s JOIN base_ins AS b ON b."id" = s."id"
     WHERE s."project_type" = 'school'
     ORDER BY s."id"
),
"v1" AS (
    INSERT INTO "public"."self_study_projects" ("project_id", "goal_description", "study_frequency")
    SELECT s."id", s."goal_description", s."study_frequency" FROM src AS s JOIN base_ins AS b ON b."id" = s."id"
     WHERE s."project_type" = 'self_study'
     ORDER BY s."id"
),
meta_ins AS (
    INSERT INTO "public"."project_meta" ("project_id", "key", "value")
    SELECT s."id", kv.k, kv.v FROM src AS s JOIN base_ins AS b ON b."id" = s."id"
         CROSS JOIN LATERAL (VALUES ('syllabus', to_jsonb(s."syllabus"))) AS kv (k, v)
     WHERE kv.v IS NOT NULL
     ORDER BY s."id", kv.k
)
SELECT count(*), (SELECT s2."id" FROM src AS s2 ORDER BY s2."id" DESC LIMIT 1)::text, (SELECT count(*) FROM base_ins),
       coalesce(array_agg(s."id"::text) FILTER (WHERE s.invalid OR NOT (s."owner_id" IS NULL OR s."owner_id" IN (SELECT k FROM "fk0"))), '{}')
  FROM src AS s;
COMMIT;

-- a chunk that met a row a trigger wrote meanwhile (unique violation): redone, and the next 10 chunks run, with ON CONFLICT DO NOTHING
BEGIN;
SET LOCAL lock_timeout = '50ms';
SET LOCAL statement_timeout = '60000ms';
WITH src AS MATERIALIZED (
    SELECT l."id", l."name", l."project_type", l."owner_id", l."start_date", l."end_date", l."is_draft", l."created_at", l."updated_at", l."course_name", l."course_code", l."teacher_name", l."goal_description", l."study_frequency", l."syllabus", (l."project_type" IS NULL OR l."project_type" NOT IN ('school', 'self_study') OR l."name" IS NULL OR l."owner_id" IS NULL OR l."is_draft" IS NULL OR l."created_at" IS NULL OR l."updated_at" IS NULL OR (l."project_type" = 'school' AND l."course_name" IS NULL) OR (l."project_type" = 'school' AND l."course_code" IS NULL) OR (l."project_type" = 'school' AND l."teacher_name" IS NULL) OR (l."project_type" = 'self_study' AND l."goal_description" IS NULL) OR (l."project_type" = 'self_study' AND l."study_frequency" IS NULL)) AS invalid
      FROM "public"."core_project" AS l
     WHERE l."id" > $1::bigint AND l."id" <= $2::bigint
     ORDER BY l."id"
     LIMIT $3
       FOR KEY SHARE
),
"fk0" AS (
    SELECT r."id" AS k FROM "public"."auth_user" AS r
     WHERE r."id" IN (SELECT s."owner_id" FROM src AS s WHERE NOT s.invalid)
       FOR KEY SHARE OF r
), base_ins AS (
    INSERT INTO "public"."projects" ("id", "name", "project_type", "owner_id", "start_date", "end_date", "is_draft", "created_at", "updated_at")
    SELECT s."id", s."name", s."project_type", s."owner_id", s."start_date", s."end_date", s."is_draft", s."created_at", s."updated_at" FROM src AS s WHERE NOT s.invalid AND (s."owner_id" IS NULL OR s."owner_id" IN (SELECT k FROM "fk0"))
    ON CONFLICT DO NOTHING
    RETURNING "id"
),
"v0" AS (
    INSERT INTO "public"."school_projects" ("project_id", "course_name", "course_code", "teacher_name")
    SELECT s."id", s."course_name", s."course_code", s."teacher_name" FROM src AS s JOIN base_ins AS b ON b."id" = s."id"
     WHERE s."project_type" = 'school'
     ORDER BY s."id"
    ON CONFLICT DO NOTHING
),
"v1" AS (
    INSERT INTO "public"."self_study_projects" ("project_id", "goal_description", "study_frequency")
    SELECT s."id", s."goal_description", s."study_frequency" FROM src AS s JOIN base_ins AS b ON b."id" = s."id"
     WHERE s."project_type" = 'self_study'
     ORDER BY s."id"
    ON CONFLICT DO NOTHING
),
meta_ins AS (
    INSERT INTO "public"."project_meta" ("project_id", "key", "value")
    SELECT s."id", kv.k, kv.v FROM src AS s JOIN base_ins AS b ON b."id" = s."id"
         CROSS JOIN LATERAL (VALUES ('syllabus', to_jsonb(s."syllabus"))) AS kv (k, v)
     WHERE kv.v IS NOT NULL
     ORDER BY s."id", kv.k
    ON CONFLICT DO NOTHING
)
SELECT count(*), (SELECT s2."id" FROM src AS s2 ORDER BY s2."id" DESC LIMIT 1)::text, (SELECT count(*) FROM base_ins),
       coalesce(array_agg(s."id"::text) FILTER (WHERE s.invalid OR NOT (s."owner_id" IS NULL OR s."owner_id" IN (SELECT k FROM "fk0"))), '{}')
  FROM src AS s;
COMMIT;

-- rows the split schema rejects: lock them and sync through the trigger's function (quarantine)
BEGIN;
SET LOCAL lock_timeout = '50ms';
SET LOCAL statement_timeout = '60000ms';
SELECT count("migrator"."core_project_split_sync"(l, 'SYNC', 'backfill')) FROM "public"."core_project" AS l WHERE l."id" = ANY ($1::bigint[]);
COMMIT;

-- checkpoint the range's cursor in the chunk's transaction (resume point after kill -9)
BEGIN;
SET LOCAL lock_timeout = '50ms';
SET LOCAL statement_timeout = '60000ms';
UPDATE "migrator"."backfill_ranges"
   SET cursor_key = coalesce($1, cursor_key), rows_done = rows_done + $2, heartbeat = now(),
       status = CASE WHEN $3 THEN 'done' ELSE status END,
       finished_at = CASE WHEN $3 THEN now() END
 WHERE migration = $4 AND range_no = $5 AND worker = $6
RETURNING (SELECT paused FROM "migrator"."state" WHERE migration = $4);
COMMIT;

-- refresh the planner's statistics of the split tables at 1,000 rows copied and at each 4-fold growth: the application's cached plans of the trigger's statements are made again
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
ANALYZE "public"."projects", "public"."school_projects", "public"."self_study_projects", "public"."project_meta";
COMMIT;

-- build index projects_project_type_idx CONCURRENTLY
SET lock_timeout = '500ms';
SET statement_timeout = '0ms';
CREATE INDEX CONCURRENTLY IF NOT EXISTS "projects_project_type_idx" ON "public"."projects" USING btree ("project_type");
RESET lock_timeout;
RESET statement_timeout;

-- build index projects_created_at_idx CONCURRENTLY
SET lock_timeout = '500ms';
SET statement_timeout = '0ms';
CREATE INDEX CONCURRENTLY IF NOT EXISTS "projects_created_at_idx" ON "public"."projects" USING btree ("created_at") WHERE "is_draft" = true;
RESET lock_timeout;
RESET statement_timeout;

-- build index project_meta_value_idx CONCURRENTLY
SET lock_timeout = '500ms';
SET statement_timeout = '0ms';
CREATE INDEX CONCURRENTLY IF NOT EXISTS "project_meta_value_idx" ON "public"."project_meta" USING gin ("value");
RESET lock_timeout;
RESET statement_timeout;

-- refresh the planner's statistics of the full split tables
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '0ms';
ANALYZE "public"."projects", "public"."school_projects", "public"."self_study_projects", "public"."project_meta";
COMMIT;

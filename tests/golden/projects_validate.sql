-- ===== phase: validate (15 steps) =====

-- find the next chunk boundary (repeated: an index walk of chunk_rows keys)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- The first key of the next chunk: an index-only walk of chunk_rows keys, a short statement of its own.
SELECT l."id"::text
  FROM "public"."core_project" AS l
 WHERE l."id" >= $1::bigint
 ORDER BY l."id"
OFFSET $2
 LIMIT 1;
COMMIT;

-- open quarantine keys per chunk (read once)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- Open quarantine keys grouped by the chunk they fall in (width_bucket over the chunks' first keys), read once:
-- a chunk then leaves them out with a hashed = ANY instead of probing the quarantine table row by row.
SELECT width_bucket(q.key::bigint, $1::text[]::bigint[]) AS chunk, array_agg(q.key) AS keys
  FROM "migrator"."quarantine" AS q
 WHERE q.migration = $2 AND q.resolved_at IS NULL
 GROUP BY 1;
COMMIT;

-- hash one chunk, legacy and split side in one statement (REPEATABLE READ, READ ONLY; repeated)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '600000ms';
-- One key range, both sides in one statement and so in one snapshot: the forward triggers change legacy and split
-- rows in the same transaction, so whatever committed state this sees is in step on both sides.
-- A row is cut into parts, one per split row it implies (base, its variant's child, each non-NULL meta value);
-- each part's hash_record_extended is summed. Equal sums mean equal multisets of split rows, except with
-- probability ~2^-64; sum, not XOR, so a part present twice does not cancel out.
SELECT l.rows, l.parts, l.hash, s.parts, s.hash
  FROM (SELECT count(*) AS rows, count(*) + count(CASE "l"."project_type" WHEN 'school' THEN hash_record_extended(ROW(1, "l"."id", CASE WHEN "l"."project_type" = 'school' THEN "l"."course_name" END, CASE WHEN "l"."project_type" = 'school' THEN "l"."course_code" END, CASE WHEN "l"."project_type" = 'school' THEN "l"."teacher_name" END), 0) WHEN 'self_study' THEN hash_record_extended(ROW(2, "l"."id", CASE WHEN "l"."project_type" = 'self_study' THEN "l"."goal_description" END, CASE WHEN "l"."project_type" = 'self_study' THEN "l"."study_frequency" END), 0) END) + count(CASE WHEN "l"."syllabus" IS NOT NULL THEN hash_record_extended(ROW( -1, "l"."id", 'syllabus'::text, hash_record_extended(ROW(CAST("l"."syllabus" AS jsonb)), 0)), 0) END) + count(CASE WHEN (l."project_type" IS NULL OR l."project_type" NOT IN ('school', 'self_study') OR l."name" IS NULL OR l."owner_id" IS NULL OR l."is_draft" IS NULL OR l."created_at" IS NULL OR l."updated_at" IS NULL OR (l."project_type" = 'school' AND l."course_name" IS NULL) OR (l."project_type" = 'school' AND l."course_code" IS NULL) OR (l."project_type" = 'school' AND l."teacher_name" IS NULL) OR (l."project_type" = 'self_study' AND l."goal_description" IS NULL) OR (l."project_type" = 'self_study' AND l."study_frequency" IS NULL)) THEN hash_record_extended(ROW( -2, "l"."id"), 0) END) AS parts, coalesce(sum(hash_record_extended(ROW(0, "l"."id", "l"."name", "l"."project_type", "l"."owner_id", "l"."start_date", "l"."end_date", "l"."is_draft", "l"."created_at", "l"."updated_at"), 0)), 0)
                     + coalesce(sum(CASE "l"."project_type" WHEN 'school' THEN hash_record_extended(ROW(1, "l"."id", CASE WHEN "l"."project_type" = 'school' THEN "l"."course_name" END, CASE WHEN "l"."project_type" = 'school' THEN "l"."course_code" END, CASE WHEN "l"."project_type" = 'school' THEN "l"."teacher_name" END), 0) WHEN 'self_study' THEN hash_record_extended(ROW(2, "l"."id", CASE WHEN "l"."project_type" = 'self_study' THEN "l"."goal_description" END, CASE WHEN "l"."project_type" = 'self_study' THEN "l"."study_frequency" END), 0) END), 0)
                     + coalesce(sum(CASE WHEN "l"."syllabus" IS NOT NULL THEN hash_record_extended(ROW( -1, "l"."id", 'syllabus'::text, hash_record_extended(ROW(CAST("l"."syllabus" AS jsonb)), 0)), 0) END), 0)
                     + coalesce(sum(CASE WHEN (l."project_type" IS NULL OR l."project_type" NOT IN ('school', 'self_study') OR l."name" IS NULL OR l."owner_id" IS NULL OR l."is_draft" IS NULL OR l."created_at" IS NULL OR l."updated_at" IS NULL OR (l."project_type" = 'school' AND l."course_name" IS NULL) OR (l."project_type" = 'school' AND l."course_code" IS NULL) OR (l."project_type" = 'school' AND l."teacher_name" IS NULL) OR (l."project_type" = 'self_study' AND l."goal_description" IS NULL) OR (l."project_type" = 'self_study' AND l."study_frequency" IS NULL)) THEN hash_record_extended(ROW( -2, "l"."id"), 0) END), 0) AS hash
          FROM "public"."core_project" AS l
         WHERE "l"."id" >= $1::bigint AND "l"."id" < $2::bigint AND ("l"."id" = ANY ($3::text[]::bigint[])) IS NOT TRUE) AS l,
       (SELECT count(*) AS parts, coalesce(sum(p.h), 0) AS hash
          FROM (SELECT hash_record_extended(ROW(0, "c"."id", "c"."name", "c"."project_type", "c"."owner_id", "c"."start_date", "c"."end_date", "c"."is_draft", "c"."created_at", "c"."updated_at"), 0) FROM "public"."projects" AS c WHERE "c"."id" >= $1::bigint AND "c"."id" < $2::bigint
                UNION ALL
                SELECT hash_record_extended(ROW(1, "c"."project_id", "c"."course_name", "c"."course_code", "c"."teacher_name"), 0) FROM "public"."school_projects" AS c WHERE "c"."project_id" >= $1::bigint AND "c"."project_id" < $2::bigint
                UNION ALL
                SELECT hash_record_extended(ROW(2, "c"."project_id", "c"."goal_description", "c"."study_frequency"), 0) FROM "public"."self_study_projects" AS c WHERE "c"."project_id" >= $1::bigint AND "c"."project_id" < $2::bigint
                UNION ALL
                SELECT hash_record_extended(ROW( -1, "c"."project_id", "c"."key", CASE "c"."key" WHEN 'syllabus' THEN hash_record_extended(ROW("c"."value"), 0) ELSE hash_record_extended(ROW("c"."value"), 0) END), 0) FROM "public"."project_meta" AS c WHERE "c"."project_id" >= $1::bigint AND "c"."project_id" < $2::bigint) AS p (h)) AS s;
COMMIT;

-- where a chunk's hashes differ: its rows that differ, column by column
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- The rows of one key range (or key list) on which the two legacy-shaped SELECTs of views.py disagree, read in
-- one statement, with a flag and both values (as text) per column. Open quarantine keys are left out: the
-- quarantine summary reports them.
WITH l AS (
    SELECT * FROM (SELECT "l"."id" AS "id",
       "l"."name" AS "name",
       "l"."project_type" AS "project_type",
       "l"."owner_id" AS "owner_id",
       "l"."start_date" AS "start_date",
       "l"."end_date" AS "end_date",
       "l"."is_draft" AS "is_draft",
       "l"."created_at" AS "created_at",
       "l"."updated_at" AS "updated_at",
       CASE WHEN "l"."project_type" = 'school' THEN "l"."course_name" END AS "course_name",
       CASE WHEN "l"."project_type" = 'school' THEN "l"."course_code" END AS "course_code",
       CASE WHEN "l"."project_type" = 'school' THEN "l"."teacher_name" END AS "teacher_name",
       CASE WHEN "l"."project_type" = 'self_study' THEN "l"."goal_description" END AS "goal_description",
       CASE WHEN "l"."project_type" = 'self_study' THEN "l"."study_frequency" END AS "study_frequency",
       to_jsonb("l"."syllabus") AS "syllabus"
  FROM "public"."core_project" AS l) AS x WHERE "x"."id" >= $1::bigint AND "x"."id" < $2::bigint
), s AS (
    SELECT * FROM (SELECT "b"."id" AS "id",
       "b"."name" AS "name",
       "b"."project_type" AS "project_type",
       "b"."owner_id" AS "owner_id",
       "b"."start_date" AS "start_date",
       "b"."end_date" AS "end_date",
       "b"."is_draft" AS "is_draft",
       "b"."created_at" AS "created_at",
       "b"."updated_at" AS "updated_at",
       "v0"."course_name" AS "course_name",
       "v0"."course_code" AS "course_code",
       "v0"."teacher_name" AS "teacher_name",
       "v1"."goal_description" AS "goal_description",
       "v1"."study_frequency" AS "study_frequency",
       "m0"."value" AS "syllabus"
  FROM "public"."projects" AS b
  LEFT JOIN "public"."school_projects" AS "v0" ON "v0"."project_id" = b."id"
  LEFT JOIN "public"."self_study_projects" AS "v1" ON "v1"."project_id" = b."id"
  LEFT JOIN "public"."project_meta" AS "m0" ON "m0"."project_id" = b."id" AND "m0"."key" = 'syllabus') AS y WHERE "y"."id" >= $1::bigint AND "y"."id" < $2::bigint
)
SELECT coalesce(l."id", s."id")::text AS key,
       l."id" IS NOT NULL AS in_legacy,
       s."id" IS NOT NULL AS in_split,
       ARRAY[("l"."id" IS DISTINCT FROM "s"."id"), ("l"."name" IS DISTINCT FROM "s"."name"), ("l"."project_type" IS DISTINCT FROM "s"."project_type"), ("l"."owner_id" IS DISTINCT FROM "s"."owner_id"), ("l"."start_date" IS DISTINCT FROM "s"."start_date"), ("l"."end_date" IS DISTINCT FROM "s"."end_date"), ("l"."is_draft" IS DISTINCT FROM "s"."is_draft"), ("l"."created_at" IS DISTINCT FROM "s"."created_at"), ("l"."updated_at" IS DISTINCT FROM "s"."updated_at"), ("l"."course_name" IS DISTINCT FROM "s"."course_name"), ("l"."course_code" IS DISTINCT FROM "s"."course_code"), ("l"."teacher_name" IS DISTINCT FROM "s"."teacher_name"), ("l"."goal_description" IS DISTINCT FROM "s"."goal_description"), ("l"."study_frequency" IS DISTINCT FROM "s"."study_frequency"), ("l"."syllabus" IS DISTINCT FROM "s"."syllabus")] AS differs,
       ARRAY[("l"."id")::text, ("l"."name")::text, ("l"."project_type")::text, ("l"."owner_id")::text, ("l"."start_date")::text, ("l"."end_date")::text, ("l"."is_draft")::text, ("l"."created_at")::text, ("l"."updated_at")::text, ("l"."course_name")::text, ("l"."course_code")::text, ("l"."teacher_name")::text, ("l"."goal_description")::text, ("l"."study_frequency")::text, ("l"."syllabus")::text]::text[] AS legacy_values,
       ARRAY[("s"."id")::text, ("s"."name")::text, ("s"."project_type")::text, ("s"."owner_id")::text, ("s"."start_date")::text, ("s"."end_date")::text, ("s"."is_draft")::text, ("s"."created_at")::text, ("s"."updated_at")::text, ("s"."course_name")::text, ("s"."course_code")::text, ("s"."teacher_name")::text, ("s"."goal_description")::text, ("s"."study_frequency")::text, ("s"."syllabus")::text]::text[] AS split_values
  FROM l
  FULL JOIN s ON s."id" = l."id"
 WHERE (l."id" IS NULL OR s."id" IS NULL OR ("l"."id" IS DISTINCT FROM "s"."id") OR ("l"."name" IS DISTINCT FROM "s"."name") OR ("l"."project_type" IS DISTINCT FROM "s"."project_type") OR ("l"."owner_id" IS DISTINCT FROM "s"."owner_id") OR ("l"."start_date" IS DISTINCT FROM "s"."start_date") OR ("l"."end_date" IS DISTINCT FROM "s"."end_date") OR ("l"."is_draft" IS DISTINCT FROM "s"."is_draft") OR ("l"."created_at" IS DISTINCT FROM "s"."created_at") OR ("l"."updated_at" IS DISTINCT FROM "s"."updated_at") OR ("l"."course_name" IS DISTINCT FROM "s"."course_name") OR ("l"."course_code" IS DISTINCT FROM "s"."course_code") OR ("l"."teacher_name" IS DISTINCT FROM "s"."teacher_name") OR ("l"."goal_description" IS DISTINCT FROM "s"."goal_description") OR ("l"."study_frequency" IS DISTINCT FROM "s"."study_frequency") OR ("l"."syllabus" IS DISTINCT FROM "s"."syllabus"))
   AND NOT EXISTS (SELECT 1 FROM "migrator"."quarantine" AS q
                    WHERE q.migration = $3 AND q.resolved_at IS NULL
                      AND q.key = coalesce(l."id", s."id")::text)
 ORDER BY coalesce(l."id", s."id");
COMMIT;

-- check legacy_missing (where a chunk's hashes differ): every legacy row has a base row or is in quarantine
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- Legacy rows with no base row that are not in quarantine either: a write the sync lost, or rows the backfill
-- never reached.
SELECT l."id"::text AS key, 'legacy_missing' AS check,
       'no row in ' || 'projects' || ' and not quarantined' AS detail
  FROM "public"."core_project" AS l
 WHERE "l"."id" >= $1::bigint AND "l"."id" < $2::bigint
   AND NOT EXISTS (SELECT 1 FROM "public"."projects" AS b WHERE b."id" = l."id" AND "b"."id" >= $1::bigint AND "b"."id" < $2::bigint)
   AND NOT EXISTS (SELECT 1 FROM "migrator"."quarantine" AS q
                    WHERE q.migration = $3 AND q.key = l."id"::text AND q.resolved_at IS NULL);
COMMIT;

-- check split_extra (where a chunk's hashes differ): no base row without a legacy row
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- Base rows whose legacy row is gone: a delete the sync missed. After switch-reads the application would show it.
SELECT b."id"::text AS key, 'split_extra' AS check,
       'projects' || ' has a row that ' || 'core_project' || ' does not' AS detail
  FROM "public"."projects" AS b
 WHERE "b"."id" >= $1::bigint AND "b"."id" < $2::bigint
   AND NOT EXISTS (SELECT 1 FROM "public"."core_project" AS l WHERE l."id" = b."id" AND "l"."id" >= $1::bigint AND "l"."id" < $2::bigint);
COMMIT;

-- check required_fields (where a chunk's hashes differ): required columns of the base and variant tables hold a value
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- One branch per split table with required columns. The split tables declare them NOT NULL, but a constraint
-- can be missing (a table created by hand, a constraint dropped to load data): the rows are what counts.
SELECT c."id"::text AS key, 'required_fields' AS check,
       'projects' || ': ' || concat_ws(', ', CASE WHEN "c"."name" IS NULL THEN 'name' END, CASE WHEN "c"."project_type" IS NULL THEN 'project_type' END, CASE WHEN "c"."owner_id" IS NULL THEN 'owner_id' END, CASE WHEN "c"."is_draft" IS NULL THEN 'is_draft' END, CASE WHEN "c"."created_at" IS NULL THEN 'created_at' END, CASE WHEN "c"."updated_at" IS NULL THEN 'updated_at' END) || ' is NULL' AS detail
  FROM "public"."projects" AS c
 WHERE "c"."id" >= $1::bigint AND "c"."id" < $2::bigint AND ("c"."name" IS NULL OR "c"."project_type" IS NULL OR "c"."owner_id" IS NULL OR "c"."is_draft" IS NULL OR "c"."created_at" IS NULL OR "c"."updated_at" IS NULL)
UNION ALL
-- One branch per split table with required columns. The split tables declare them NOT NULL, but a constraint
-- can be missing (a table created by hand, a constraint dropped to load data): the rows are what counts.
SELECT c."project_id"::text AS key, 'required_fields' AS check,
       'school_projects' || ': ' || concat_ws(', ', CASE WHEN "c"."course_name" IS NULL THEN 'course_name' END, CASE WHEN "c"."course_code" IS NULL THEN 'course_code' END, CASE WHEN "c"."teacher_name" IS NULL THEN 'teacher_name' END) || ' is NULL' AS detail
  FROM "public"."school_projects" AS c
 WHERE "c"."project_id" >= $1::bigint AND "c"."project_id" < $2::bigint AND ("c"."course_name" IS NULL OR "c"."course_code" IS NULL OR "c"."teacher_name" IS NULL)
UNION ALL
-- One branch per split table with required columns. The split tables declare them NOT NULL, but a constraint
-- can be missing (a table created by hand, a constraint dropped to load data): the rows are what counts.
SELECT c."project_id"::text AS key, 'required_fields' AS check,
       'self_study_projects' || ': ' || concat_ws(', ', CASE WHEN "c"."goal_description" IS NULL THEN 'goal_description' END, CASE WHEN "c"."study_frequency" IS NULL THEN 'study_frequency' END) || ' is NULL' AS detail
  FROM "public"."self_study_projects" AS c
 WHERE "c"."project_id" >= $1::bigint AND "c"."project_id" < $2::bigint AND ("c"."goal_description" IS NULL OR "c"."study_frequency" IS NULL);
COMMIT;

-- check variant_child (where a chunk's hashes differ): every base row has its child row in the table of its variant
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- One branch per variant: a base row of this variant needs its child row, or reads after switch-reads would
-- lose the variant's columns.
SELECT b."id"::text AS key, 'variant_child' AS check,
       'project_type' || ' is ' || quote_literal('school') || ' but ' || 'school_projects' || ' has no row for it' AS detail
  FROM "public"."projects" AS b
 WHERE "b"."id" >= $1::bigint AND "b"."id" < $2::bigint
   AND b."project_type" = 'school'
   AND NOT EXISTS (SELECT 1 FROM "public"."school_projects" AS c WHERE c."project_id" = b."id" AND "c"."project_id" >= $1::bigint AND "c"."project_id" < $2::bigint)
UNION ALL
-- One branch per variant: a base row of this variant needs its child row, or reads after switch-reads would
-- lose the variant's columns.
SELECT b."id"::text AS key, 'variant_child' AS check,
       'project_type' || ' is ' || quote_literal('self_study') || ' but ' || 'self_study_projects' || ' has no row for it' AS detail
  FROM "public"."projects" AS b
 WHERE "b"."id" >= $1::bigint AND "b"."id" < $2::bigint
   AND b."project_type" = 'self_study'
   AND NOT EXISTS (SELECT 1 FROM "public"."self_study_projects" AS c WHERE c."project_id" = b."id" AND "c"."project_id" >= $1::bigint AND "c"."project_id" < $2::bigint);
COMMIT;

-- check wrong_variant (where a chunk's hashes differ): no child row in the table of another variant
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- One branch per variant: a child row in a variant table its base row does not belong to (a type change whose
-- old child survived). split_as_legacy would show columns the legacy row does not have.
SELECT c."project_id"::text AS key, 'wrong_variant' AS check,
       'school_projects' || ' has a row for it but ' || 'project_type' || ' is '
       || coalesce(quote_literal(b."project_type"), 'NULL') AS detail
  FROM "public"."school_projects" AS c
  JOIN "public"."projects" AS b ON b."id" = c."project_id" AND "b"."id" >= $1::bigint AND "b"."id" < $2::bigint
 WHERE "c"."project_id" >= $1::bigint AND "c"."project_id" < $2::bigint
   AND b."project_type" IS DISTINCT FROM 'school'
UNION ALL
-- One branch per variant: a child row in a variant table its base row does not belong to (a type change whose
-- old child survived). split_as_legacy would show columns the legacy row does not have.
SELECT c."project_id"::text AS key, 'wrong_variant' AS check,
       'self_study_projects' || ' has a row for it but ' || 'project_type' || ' is '
       || coalesce(quote_literal(b."project_type"), 'NULL') AS detail
  FROM "public"."self_study_projects" AS c
  JOIN "public"."projects" AS b ON b."id" = c."project_id" AND "b"."id" >= $1::bigint AND "b"."id" < $2::bigint
 WHERE "c"."project_id" >= $1::bigint AND "c"."project_id" < $2::bigint
   AND b."project_type" IS DISTINCT FROM 'self_study';
COMMIT;

-- check orphans (where a chunk's hashes differ): no variant or meta row without a base row
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- One branch per variant and meta table: rows whose base row is gone. The foreign keys expand validates forbid
-- them, so finding one means a constraint was dropped or disabled (session_replication_role = replica).
SELECT c."project_id"::text AS key, 'orphans' AS check,
       'school_projects' || ' has a row for it but ' || 'projects' || ' has none' AS detail
  FROM "public"."school_projects" AS c
 WHERE "c"."project_id" >= $1::bigint AND "c"."project_id" < $2::bigint
   AND NOT EXISTS (SELECT 1 FROM "public"."projects" AS b WHERE b."id" = c."project_id" AND "b"."id" >= $1::bigint AND "b"."id" < $2::bigint)
UNION ALL
-- One branch per variant and meta table: rows whose base row is gone. The foreign keys expand validates forbid
-- them, so finding one means a constraint was dropped or disabled (session_replication_role = replica).
SELECT c."project_id"::text AS key, 'orphans' AS check,
       'self_study_projects' || ' has a row for it but ' || 'projects' || ' has none' AS detail
  FROM "public"."self_study_projects" AS c
 WHERE "c"."project_id" >= $1::bigint AND "c"."project_id" < $2::bigint
   AND NOT EXISTS (SELECT 1 FROM "public"."projects" AS b WHERE b."id" = c."project_id" AND "b"."id" >= $1::bigint AND "b"."id" < $2::bigint)
UNION ALL
-- One branch per variant and meta table: rows whose base row is gone. The foreign keys expand validates forbid
-- them, so finding one means a constraint was dropped or disabled (session_replication_role = replica).
SELECT c."project_id"::text AS key, 'orphans' AS check,
       'project_meta' || ' has a row for it but ' || 'projects' || ' has none' AS detail
  FROM "public"."project_meta" AS c
 WHERE "c"."project_id" >= $1::bigint AND "c"."project_id" < $2::bigint
   AND NOT EXISTS (SELECT 1 FROM "public"."projects" AS b WHERE b."id" = c."project_id" AND "b"."id" >= $1::bigint AND "b"."id" < $2::bigint);
COMMIT;

-- check meta_values (where a chunk's hashes differ): each meta row holds the legacy value, and exists exactly when it is not NULL
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- One branch per meta column: the meta row must hold the legacy value (compared as a value of the column's type,
-- not as JSON text), and exist exactly when the legacy value is not NULL. Keys without a base row are
-- legacy_missing's to report.
SELECT l."id"::text AS key, 'meta_values' AS check,
       CASE WHEN m."value" IS NULL
            THEN 'syllabus' || ' is set in legacy but ' || 'project_meta' || ' has no ' || quote_literal('syllabus')
                 || ' row'
            WHEN l."syllabus" IS NULL
            THEN 'project_meta' || ' has a ' || quote_literal('syllabus') || ' row but legacy ' || 'syllabus'
                 || ' is NULL'
            ELSE 'project_meta' || '[' || quote_literal('syllabus') || '] = ' || left(m."value"::text, 100)
                 || ', legacy ' || 'syllabus' || ' = ' || left(to_jsonb(l."syllabus")::text, 100)
       END AS detail
  FROM "public"."core_project" AS l
  JOIN "public"."projects" AS b ON b."id" = l."id" AND "b"."id" >= $1::bigint AND "b"."id" < $2::bigint
  LEFT JOIN "public"."project_meta" AS m ON m."project_id" = l."id" AND m."key" = 'syllabus' AND "m"."project_id" >= $1::bigint AND "m"."project_id" < $2::bigint
 WHERE "l"."id" >= $1::bigint AND "l"."id" < $2::bigint
   AND (m."value" IS NULL OR l."syllabus" IS NULL OR "m"."value" IS DISTINCT FROM CAST("l"."syllabus" AS jsonb))
   AND (m."value" IS NOT NULL OR l."syllabus" IS NOT NULL);
COMMIT;

-- check meta_keys (where a chunk's hashes differ): no meta row under a key the spec does not list
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- Meta rows under a key the spec does not list: nothing syncs them, and the compat view would not show them.
SELECT m."project_id"::text AS key, 'meta_keys' AS check,
       'project_meta' || ' has key ' || quote_literal(m."key") || ', which the spec does not list' AS detail
  FROM "public"."project_meta" AS m
 WHERE "m"."project_id" >= $1::bigint AND "m"."project_id" < $2::bigint
   AND m."key" NOT IN ('syllabus');
COMMIT;

-- check quarantine_clean (where a chunk's hashes differ): a quarantined key has no split rows
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- A quarantined key must have no split rows: the trigger removes them when it quarantines, so the split side
-- never shows a stale version of a row the split schema rejects.
SELECT b."id"::text AS key, 'quarantine_clean' AS check,
       'quarantined (' || q.sqlstate || ') but ' || 'projects' || ' still has its row' AS detail
  FROM "public"."projects" AS b
  JOIN "migrator"."quarantine" AS q ON q.migration = $1 AND q.key = b."id"::text AND q.resolved_at IS NULL
 WHERE "b"."id" >= $2::bigint AND "b"."id" < $3::bigint;
COMMIT;

-- check references (every chunk): every referencing row points at a base row or a quarantined key (contract re-points these FKs)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- One branch per [[references]] table. contract re-points their foreign keys at the base table, and that FK
-- cannot be validated while a referencing row points at a key the base table lacks. Keys in quarantine are
-- left out here (the quarantine summary counts the rows pointing at them: they block contract too).
SELECT r."project_id"::text AS key, 'references' AS check,
       count(*) || ' row(s) of ' || 'core_importantdate.project_id' || ' point at it but ' || 'projects' || ' has no such row'
       || CASE WHEN EXISTS (SELECT 1 FROM "public"."core_project" AS l WHERE l."id" = r."project_id") THEN ''
               ELSE ' (nor ' || 'core_project' || ': a dangling reference)' END AS detail
  FROM "public"."core_importantdate" AS r
 WHERE "r"."project_id" >= $1::bigint AND "r"."project_id" < $2::bigint
   AND r."project_id" IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM "public"."projects" AS b WHERE b."id" = r."project_id" AND "b"."id" >= $1::bigint AND "b"."id" < $2::bigint)
   AND NOT EXISTS (SELECT 1 FROM "migrator"."quarantine" AS q WHERE q.migration = $3 AND q.key = "r"."project_id"::text AND q.resolved_at IS NULL)
 GROUP BY r."project_id"
UNION ALL
-- One branch per [[references]] table. contract re-points their foreign keys at the base table, and that FK
-- cannot be validated while a referencing row points at a key the base table lacks. Keys in quarantine are
-- left out here (the quarantine summary counts the rows pointing at them: they block contract too).
SELECT r."project_id"::text AS key, 'references' AS check,
       count(*) || ' row(s) of ' || 'core_project_attachments.project_id' || ' point at it but ' || 'projects' || ' has no such row'
       || CASE WHEN EXISTS (SELECT 1 FROM "public"."core_project" AS l WHERE l."id" = r."project_id") THEN ''
               ELSE ' (nor ' || 'core_project' || ': a dangling reference)' END AS detail
  FROM "public"."core_project_attachments" AS r
 WHERE "r"."project_id" >= $1::bigint AND "r"."project_id" < $2::bigint
   AND r."project_id" IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM "public"."projects" AS b WHERE b."id" = r."project_id" AND "b"."id" >= $1::bigint AND "b"."id" < $2::bigint)
   AND NOT EXISTS (SELECT 1 FROM "migrator"."quarantine" AS q WHERE q.migration = $3 AND q.key = "r"."project_id"::text AND q.resolved_at IS NULL)
 GROUP BY r."project_id";
COMMIT;

-- quarantine summary
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
SELECT q.key, q.sqlstate, q.message, q.source, q.accepted_at IS NOT NULL AS accepted
  FROM "migrator"."quarantine" AS q
 WHERE q.migration = $1 AND q.resolved_at IS NULL
 ORDER BY q.first_seen, q.key;
COMMIT;

-- ===== phase: backfill (9 steps) =====

-- plan key ranges (once): upper bound, row count, boundaries for parallel workers
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '0ms';
SELECT (SELECT l."payment_uuid" FROM "billing"."legacy_payments" AS l ORDER BY l."payment_uuid" DESC LIMIT 1)::text,
       (SELECT (percentile_disc($1::float8[]) WITHIN GROUP (ORDER BY l."payment_uuid"))::text[] FROM "billing"."legacy_payments" AS l);
COMMIT;

-- copy one chunk (repeated; keyset on the primary key; FOR KEY SHARE; only rows not copied yet; foreign keys checked set-based, their triggers off where the role may set session_replication_role)
BEGIN;
SET LOCAL lock_timeout = '50ms';
SET LOCAL statement_timeout = '60000ms';
WITH src AS MATERIALIZED (
    SELECT l."payment_uuid", l."method", l."amount", l."currency", l."paid_at", l."card_last4", l."card_brand", l."iban", l."bic", l."gateway_response", l."notes", l."retries", (l."method" IS NULL OR l."method" NOT IN ('card', 'bank_transfer') OR l."amount" IS NULL OR l."currency" IS NULL OR (l."method" = 'card' AND l."card_last4" IS NULL) OR (l."method" = 'bank_transfer' AND l."iban" IS NULL)) AS invalid
      FROM "billing"."legacy_payments" AS l
     WHERE l."payment_uuid" > $1::uuid AND l."payment_uuid" <= $2::uuid
     ORDER BY l."payment_uuid"
     LIMIT $3
       FOR KEY SHARE
), base_ins AS (
    INSERT INTO "billing_v2"."payments" ("payment_uuid", "method", "amount", "currency", "paid_at")
    SELECT s."payment_uuid", s."method", s."amount", s."currency", s."paid_at" FROM src AS s WHERE NOT s.invalid AND TRUE
       AND NOT EXISTS (SELECT FROM "billing_v2"."payments" AS b WHERE b."payment_uuid" = s."payment_uuid" OFFSET 0)
    RETURNING "payment_uuid"
),
"v0" AS (
    INSERT INTO "billing_v2"."card_payments" ("payment_uuid", "card_last4", "card_brand")
    SELECT s."payment_uuid", s."card_last4", coalesce(s."card_brand", 'unknown'::text) FROM src AS s JOIN base_ins AS b ON b."payment_uuid" = s."payment_uuid"
     WHERE s."method" = 'card'
     ORDER BY s."payment_uuid"
),
"v1" AS (
    INSERT INTO "billing_v2"."bank_transfers" ("payment_uuid", "iban", "bic")
    SELECT s."payment_uuid", s."iban", s."bic" FROM src AS s JOIN base_ins AS b ON b."payment_uuid" = s."payment_uuid"
     WHERE s."method" = 'bank_transfer'
     ORDER BY s."payment_uuid"
),
meta_ins AS (
    INSERT INTO "billing_v2"."payment_attributes" ("payment_uuid", "name", "data")
    SELECT s."payment_uuid", kv.k, kv.v FROM src AS s JOIN base_ins AS b ON b."payment_uuid" = s."payment_uuid"
         CROSS JOIN LATERAL (VALUES ('gateway_response', to_jsonb(s."gateway_response")), ('notes', to_jsonb(s."notes")), ('retries', to_jsonb(s."retries"))) AS kv (k, v)
     WHERE kv.v IS NOT NULL
     ORDER BY s."payment_uuid", kv.k
)
SELECT count(*), (SELECT s2."payment_uuid" FROM src AS s2 ORDER BY s2."payment_uuid" DESC LIMIT 1)::text, (SELECT count(*) FROM base_ins),
       coalesce(array_agg(s."payment_uuid"::text) FILTER (WHERE s.invalid OR NOT TRUE), '{}')
  FROM src AS s;
COMMIT;

-- a chunk that met a row a trigger wrote meanwhile (unique violation): redone, and the next 10 chunks run, with ON CONFLICT DO NOTHING
BEGIN;
SET LOCAL lock_timeout = '50ms';
SET LOCAL statement_timeout = '60000ms';
WITH src AS MATERIALIZED (
    SELECT l."payment_uuid", l."method", l."amount", l."currency", l."paid_at", l."card_last4", l."card_brand", l."iban", l."bic", l."gateway_response", l."notes", l."retries", (l."method" IS NULL OR l."method" NOT IN ('card', 'bank_transfer') OR l."amount" IS NULL OR l."currency" IS NULL OR (l."method" = 'card' AND l."card_last4" IS NULL) OR (l."method" = 'bank_transfer' AND l."iban" IS NULL)) AS invalid
      FROM "billing"."legacy_payments" AS l
     WHERE l."payment_uuid" > $1::uuid AND l."payment_uuid" <= $2::uuid
     ORDER BY l."payment_uuid"
     LIMIT $3
       FOR KEY SHARE
), base_ins AS (
    INSERT INTO "billing_v2"."payments" ("payment_uuid", "method", "amount", "currency", "paid_at")
    SELECT s."payment_uuid", s."method", s."amount", s."currency", s."paid_at" FROM src AS s WHERE NOT s.invalid AND TRUE
    ON CONFLICT DO NOTHING
    RETURNING "payment_uuid"
),
"v0" AS (
    INSERT INTO "billing_v2"."card_payments" ("payment_uuid", "card_last4", "card_brand")
    SELECT s."payment_uuid", s."card_last4", coalesce(s."card_brand", 'unknown'::text) FROM src AS s JOIN base_ins AS b ON b."payment_uuid" = s."payment_uuid"
     WHERE s."method" = 'card'
     ORDER BY s."payment_uuid"
    ON CONFLICT DO NOTHING
),
"v1" AS (
    INSERT INTO "billing_v2"."bank_transfers" ("payment_uuid", "iban", "bic")
    SELECT s."payment_uuid", s."iban", s."bic" FROM src AS s JOIN base_ins AS b ON b."payment_uuid" = s."payment_uuid"
     WHERE s."method" = 'bank_transfer'
     ORDER BY s."payment_uuid"
    ON CONFLICT DO NOTHING
),
meta_ins AS (
    INSERT INTO "billing_v2"."payment_attributes" ("payment_uuid", "name", "data")
    SELECT s."payment_uuid", kv.k, kv.v FROM src AS s JOIN base_ins AS b ON b."payment_uuid" = s."payment_uuid"
         CROSS JOIN LATERAL (VALUES ('gateway_response', to_jsonb(s."gateway_response")), ('notes', to_jsonb(s."notes")), ('retries', to_jsonb(s."retries"))) AS kv (k, v)
     WHERE kv.v IS NOT NULL
     ORDER BY s."payment_uuid", kv.k
    ON CONFLICT DO NOTHING
)
SELECT count(*), (SELECT s2."payment_uuid" FROM src AS s2 ORDER BY s2."payment_uuid" DESC LIMIT 1)::text, (SELECT count(*) FROM base_ins),
       coalesce(array_agg(s."payment_uuid"::text) FILTER (WHERE s.invalid OR NOT TRUE), '{}')
  FROM src AS s;
COMMIT;

-- rows the split schema rejects: lock them and sync through the trigger's function (quarantine)
BEGIN;
SET LOCAL lock_timeout = '50ms';
SET LOCAL statement_timeout = '60000ms';
SELECT count("migrator_pay"."payments_split_sync"(l, 'SYNC', 'backfill')) FROM "billing"."legacy_payments" AS l WHERE l."payment_uuid" = ANY ($1::uuid[]);
COMMIT;

-- checkpoint the range's cursor in the chunk's transaction (resume point after kill -9)
BEGIN;
SET LOCAL lock_timeout = '50ms';
SET LOCAL statement_timeout = '60000ms';
UPDATE "migrator_pay"."backfill_ranges"
   SET cursor_key = coalesce($1, cursor_key), rows_done = rows_done + $2, heartbeat = now(),
       status = CASE WHEN $3 THEN 'done' ELSE status END,
       finished_at = CASE WHEN $3 THEN now() END
 WHERE migration = $4 AND range_no = $5 AND worker = $6
RETURNING (SELECT paused FROM "migrator_pay"."state" WHERE migration = $4);
COMMIT;

-- refresh the planner's statistics of the split tables at 1,000 rows copied and at each 4-fold growth: the application's cached plans of the trigger's statements are made again
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
ANALYZE "billing_v2"."payments", "billing_v2"."card_payments", "billing_v2"."bank_transfers", "billing_v2"."payment_attributes";
COMMIT;

-- build index payments_paid_at_idx CONCURRENTLY
SET lock_timeout = '500ms';
SET statement_timeout = '0ms';
CREATE INDEX CONCURRENTLY IF NOT EXISTS "payments_paid_at_idx" ON "billing_v2"."payments" USING brin ("paid_at");
RESET lock_timeout;
RESET statement_timeout;

-- build index payment_attributes_data_idx CONCURRENTLY
SET lock_timeout = '500ms';
SET statement_timeout = '0ms';
CREATE INDEX CONCURRENTLY IF NOT EXISTS "payment_attributes_data_idx" ON "billing_v2"."payment_attributes" USING gin ("data");
RESET lock_timeout;
RESET statement_timeout;

-- refresh the planner's statistics of the full split tables
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '0ms';
ANALYZE "billing_v2"."payments", "billing_v2"."card_payments", "billing_v2"."bank_transfers", "billing_v2"."payment_attributes";
COMMIT;

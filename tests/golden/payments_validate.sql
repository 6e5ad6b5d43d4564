-- ===== phase: validate (14 steps) =====

-- find the next chunk boundary (repeated: an index walk of chunk_rows keys)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- The first key of the next chunk: an index-only walk of chunk_rows keys, a short statement of its own.
SELECT l."payment_uuid"::text
  FROM "billing"."legacy_payments" AS l
 WHERE l."payment_uuid" >= $1::uuid
 ORDER BY l."payment_uuid"
OFFSET $2
 LIMIT 1;
COMMIT;

-- open quarantine keys per chunk (read once)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- Open quarantine keys grouped by the chunk they fall in (width_bucket over the chunks' first keys), read once:
-- a chunk then leaves them out with a hashed = ANY instead of probing the quarantine table row by row.
SELECT width_bucket(q.key::uuid, $1::text[]::uuid[]) AS chunk, array_agg(q.key) AS keys
  FROM "migrator_pay"."quarantine" AS q
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
  FROM (SELECT count(*) AS rows, count(*) + count(CASE "l"."method" WHEN 'card' THEN hash_record_extended(ROW(1, "l"."payment_uuid", CASE WHEN "l"."method" = 'card' THEN "l"."card_last4" END, CASE WHEN "l"."method" = 'card' THEN coalesce("l"."card_brand", 'unknown'::text) END), 0) WHEN 'bank_transfer' THEN hash_record_extended(ROW(2, "l"."payment_uuid", CASE WHEN "l"."method" = 'bank_transfer' THEN "l"."iban" END, CASE WHEN "l"."method" = 'bank_transfer' THEN "l"."bic" END), 0) END) + count(CASE WHEN "l"."gateway_response" IS NOT NULL THEN hash_record_extended(ROW( -1, "l"."payment_uuid", 'gateway_response'::text, hash_record_extended(ROW(CAST("l"."gateway_response" AS jsonb)), 0)), 0) END) + count(CASE WHEN "l"."notes" IS NOT NULL THEN hash_record_extended(ROW( -1, "l"."payment_uuid", 'notes'::text, hash_record_extended(ROW(CAST("l"."notes" AS text)), 0)), 0) END) + count(CASE WHEN "l"."retries" IS NOT NULL THEN hash_record_extended(ROW( -1, "l"."payment_uuid", 'retries'::text, hash_record_extended(ROW(CAST("l"."retries" AS bigint)), 0)), 0) END) + count(CASE WHEN (l."method" IS NULL OR l."method" NOT IN ('card', 'bank_transfer') OR l."amount" IS NULL OR l."currency" IS NULL OR (l."method" = 'card' AND l."card_last4" IS NULL) OR (l."method" = 'bank_transfer' AND l."iban" IS NULL)) THEN hash_record_extended(ROW( -2, "l"."payment_uuid"), 0) END) AS parts, coalesce(sum(hash_record_extended(ROW(0, "l"."payment_uuid", "l"."method", "l"."amount", "l"."currency", "l"."paid_at"), 0)), 0)
                     + coalesce(sum(CASE "l"."method" WHEN 'card' THEN hash_record_extended(ROW(1, "l"."payment_uuid", CASE WHEN "l"."method" = 'card' THEN "l"."card_last4" END, CASE WHEN "l"."method" = 'card' THEN coalesce("l"."card_brand", 'unknown'::text) END), 0) WHEN 'bank_transfer' THEN hash_record_extended(ROW(2, "l"."payment_uuid", CASE WHEN "l"."method" = 'bank_transfer' THEN "l"."iban" END, CASE WHEN "l"."method" = 'bank_transfer' THEN "l"."bic" END), 0) END), 0)
                     + coalesce(sum(CASE WHEN "l"."gateway_response" IS NOT NULL THEN hash_record_extended(ROW( -1, "l"."payment_uuid", 'gateway_response'::text, hash_record_extended(ROW(CAST("l"."gateway_response" AS jsonb)), 0)), 0) END), 0)
                     + coalesce(sum(CASE WHEN "l"."notes" IS NOT NULL THEN hash_record_extended(ROW( -1, "l"."payment_uuid", 'notes'::text, hash_record_extended(ROW(CAST("l"."notes" AS text)), 0)), 0) END), 0)
                     + coalesce(sum(CASE WHEN "l"."retries" IS NOT NULL THEN hash_record_extended(ROW( -1, "l"."payment_uuid", 'retries'::text, hash_record_extended(ROW(CAST("l"."retries" AS bigint)), 0)), 0) END), 0)
                     + coalesce(sum(CASE WHEN (l."method" IS NULL OR l."method" NOT IN ('card', 'bank_transfer') OR l."amount" IS NULL OR l."currency" IS NULL OR (l."method" = 'card' AND l."card_last4" IS NULL) OR (l."method" = 'bank_transfer' AND l."iban" IS NULL)) THEN hash_record_extended(ROW( -2, "l"."payment_uuid"), 0) END), 0) AS hash
          FROM "billing"."legacy_payments" AS l
         WHERE "l"."payment_uuid" >= $1::uuid AND "l"."payment_uuid" < $2::uuid AND ("l"."payment_uuid" = ANY ($3::text[]::uuid[])) IS NOT TRUE) AS l,
       (SELECT count(*) AS parts, coalesce(sum(p.h), 0) AS hash
          FROM (SELECT hash_record_extended(ROW(0, "c"."payment_uuid", "c"."method", "c"."amount", "c"."currency", "c"."paid_at"), 0) FROM "billing_v2"."payments" AS c WHERE "c"."payment_uuid" >= $1::uuid AND "c"."payment_uuid" < $2::uuid
                UNION ALL
                SELECT hash_record_extended(ROW(1, "c"."payment_uuid", "c"."card_last4", "c"."card_brand"), 0) FROM "billing_v2"."card_payments" AS c WHERE "c"."payment_uuid" >= $1::uuid AND "c"."payment_uuid" < $2::uuid
                UNION ALL
                SELECT hash_record_extended(ROW(2, "c"."payment_uuid", "c"."iban", "c"."bic"), 0) FROM "billing_v2"."bank_transfers" AS c WHERE "c"."payment_uuid" >= $1::uuid AND "c"."payment_uuid" < $2::uuid
                UNION ALL
                SELECT hash_record_extended(ROW( -1, "c"."payment_uuid", "c"."name", CASE "c"."name" WHEN 'gateway_response' THEN hash_record_extended(ROW("c"."data"), 0) WHEN 'notes' THEN hash_record_extended(ROW(("c"."data" #>> '{}')::text), 0) WHEN 'retries' THEN hash_record_extended(ROW(("c"."data" #>> '{}')::bigint), 0) ELSE hash_record_extended(ROW("c"."data"), 0) END), 0) FROM "billing_v2"."payment_attributes" AS c WHERE "c"."payment_uuid" >= $1::uuid AND "c"."payment_uuid" < $2::uuid) AS p (h)) AS s;
COMMIT;

-- where a chunk's hashes differ: its rows that differ, column by column
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- The rows of one key range (or key list) on which the two legacy-shaped SELECTs of views.py disagree, read in
-- one statement, with a flag and both values (as text) per column. Open quarantine keys are left out: the
-- quarantine summary reports them.
WITH l AS (
    SELECT * FROM (SELECT "l"."payment_uuid" AS "payment_uuid",
       "l"."method" AS "method",
       "l"."amount" AS "amount",
       "l"."currency" AS "currency",
       "l"."paid_at" AS "paid_at",
       CASE WHEN "l"."method" = 'card' THEN "l"."card_last4" END AS "card_last4",
       CASE WHEN "l"."method" = 'card' THEN coalesce("l"."card_brand", 'unknown'::text) END AS "card_brand",
       CASE WHEN "l"."method" = 'bank_transfer' THEN "l"."iban" END AS "iban",
       CASE WHEN "l"."method" = 'bank_transfer' THEN "l"."bic" END AS "bic",
       to_jsonb("l"."gateway_response") AS "gateway_response",
       (to_jsonb("l"."notes") #>> '{}')::text AS "notes",
       (to_jsonb("l"."retries") #>> '{}')::bigint AS "retries"
  FROM "billing"."legacy_payments" AS l) AS x WHERE "x"."payment_uuid" >= $1::uuid AND "x"."payment_uuid" < $2::uuid
), s AS (
    SELECT * FROM (SELECT "b"."payment_uuid" AS "payment_uuid",
       "b"."method" AS "method",
       "b"."amount" AS "amount",
       "b"."currency" AS "currency",
       "b"."paid_at" AS "paid_at",
       "v0"."card_last4" AS "card_last4",
       "v0"."card_brand" AS "card_brand",
       "v1"."iban" AS "iban",
       "v1"."bic" AS "bic",
       "m0"."data" AS "gateway_response",
       ("m1"."data" #>> '{}')::text AS "notes",
       ("m2"."data" #>> '{}')::bigint AS "retries"
  FROM "billing_v2"."payments" AS b
  LEFT JOIN "billing_v2"."card_payments" AS "v0" ON "v0"."payment_uuid" = b."payment_uuid"
  LEFT JOIN "billing_v2"."bank_transfers" AS "v1" ON "v1"."payment_uuid" = b."payment_uuid"
  LEFT JOIN "billing_v2"."payment_attributes" AS "m0" ON "m0"."payment_uuid" = b."payment_uuid" AND "m0"."name" = 'gateway_response'
  LEFT JOIN "billing_v2"."payment_attributes" AS "m1" ON "m1"."payment_uuid" = b."payment_uuid" AND "m1"."name" = 'notes'
  LEFT JOIN "billing_v2"."payment_attributes" AS "m2" ON "m2"."payment_uuid" = b."payment_uuid" AND "m2"."name" = 'retries') AS y WHERE "y"."payment_uuid" >= $1::uuid AND "y"."payment_uuid" < $2::uuid
)
SELECT coalesce(l."payment_uuid", s."payment_uuid")::text AS key,
       l."payment_uuid" IS NOT NULL AS in_legacy,
       s."payment_uuid" IS NOT NULL AS in_split,
       ARRAY[("l"."payment_uuid" IS DISTINCT FROM "s"."payment_uuid"), ("l"."method" IS DISTINCT FROM "s"."method"), ("l"."amount" IS DISTINCT FROM "s"."amount"), ("l"."currency" IS DISTINCT FROM "s"."currency"), ("l"."paid_at" IS DISTINCT FROM "s"."paid_at"), ("l"."card_last4" IS DISTINCT FROM "s"."card_last4"), ("l"."card_brand" IS DISTINCT FROM "s"."card_brand"), ("l"."iban" IS DISTINCT FROM "s"."iban"), ("l"."bic" IS DISTINCT FROM "s"."bic"), ("l"."gateway_response" IS DISTINCT FROM "s"."gateway_response"), ("l"."notes" IS DISTINCT FROM "s"."notes"), ("l"."retries" IS DISTINCT FROM "s"."retries")] AS differs,
       ARRAY[("l"."payment_uuid")::text, ("l"."method")::text, ("l"."amount")::text, ("l"."currency")::text, ("l"."paid_at")::text, ("l"."card_last4")::text, ("l"."card_brand")::text, ("l"."iban")::text, ("l"."bic")::text, ("l"."gateway_response")::text, ("l"."notes")::text, ("l"."retries")::text]::text[] AS legacy_values,
       ARRAY[("s"."payment_uuid")::text, ("s"."method")::text, ("s"."amount")::text, ("s"."currency")::text, ("s"."paid_at")::text, ("s"."card_last4")::text, ("s"."card_brand")::text, ("s"."iban")::text, ("s"."bic")::text, ("s"."gateway_response")::text, ("s"."notes")::text, ("s"."retries")::text]::text[] AS split_values
  FROM l
  FULL JOIN s ON s."payment_uuid" = l."payment_uuid"
 WHERE (l."payment_uuid" IS NULL OR s."payment_uuid" IS NULL OR ("l"."payment_uuid" IS DISTINCT FROM "s"."payment_uuid") OR ("l"."method" IS DISTINCT FROM "s"."method") OR ("l"."amount" IS DISTINCT FROM "s"."amount") OR ("l"."currency" IS DISTINCT FROM "s"."currency") OR ("l"."paid_at" IS DISTINCT FROM "s"."paid_at") OR ("l"."card_last4" IS DISTINCT FROM "s"."card_last4") OR ("l"."card_brand" IS DISTINCT FROM "s"."card_brand") OR ("l"."iban" IS DISTINCT FROM "s"."iban") OR ("l"."bic" IS DISTINCT FROM "s"."bic") OR ("l"."gateway_response" IS DISTINCT FROM "s"."gateway_response") OR ("l"."notes" IS DISTINCT FROM "s"."notes") OR ("l"."retries" IS DISTINCT FROM "s"."retries"))
   AND NOT EXISTS (SELECT 1 FROM "migrator_pay"."quarantine" AS q
                    WHERE q.migration = $3 AND q.resolved_at IS NULL
                      AND q.key = coalesce(l."payment_uuid", s."payment_uuid")::text)
 ORDER BY coalesce(l."payment_uuid", s."payment_uuid");
COMMIT;

-- check legacy_missing (where a chunk's hashes differ): every legacy row has a base row or is in quarantine
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- Legacy rows with no base row that are not in quarantine either: a write the sync lost, or rows the backfill
-- never reached.
SELECT l."payment_uuid"::text AS key, 'legacy_missing' AS check,
       'no row in ' || 'billing_v2.payments' || ' and not quarantined' AS detail
  FROM "billing"."legacy_payments" AS l
 WHERE "l"."payment_uuid" >= $1::uuid AND "l"."payment_uuid" < $2::uuid
   AND NOT EXISTS (SELECT 1 FROM "billing_v2"."payments" AS b WHERE b."payment_uuid" = l."payment_uuid" AND "b"."payment_uuid" >= $1::uuid AND "b"."payment_uuid" < $2::uuid)
   AND NOT EXISTS (SELECT 1 FROM "migrator_pay"."quarantine" AS q
                    WHERE q.migration = $3 AND q.key = l."payment_uuid"::text AND q.resolved_at IS NULL);
COMMIT;

-- check split_extra (where a chunk's hashes differ): no base row without a legacy row
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- Base rows whose legacy row is gone: a delete the sync missed. After switch-reads the application would show it.
SELECT b."payment_uuid"::text AS key, 'split_extra' AS check,
       'billing_v2.payments' || ' has a row that ' || 'billing.legacy_payments' || ' does not' AS detail
  FROM "billing_v2"."payments" AS b
 WHERE "b"."payment_uuid" >= $1::uuid AND "b"."payment_uuid" < $2::uuid
   AND NOT EXISTS (SELECT 1 FROM "billing"."legacy_payments" AS l WHERE l."payment_uuid" = b."payment_uuid" AND "l"."payment_uuid" >= $1::uuid AND "l"."payment_uuid" < $2::uuid);
COMMIT;

-- check required_fields (where a chunk's hashes differ): required columns of the base and variant tables hold a value
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- One branch per split table with required columns. The split tables declare them NOT NULL, but a constraint
-- can be missing (a table created by hand, a constraint dropped to load data): the rows are what counts.
SELECT c."payment_uuid"::text AS key, 'required_fields' AS check,
       'billing_v2.payments' || ': ' || concat_ws(', ', CASE WHEN "c"."method" IS NULL THEN 'method' END, CASE WHEN "c"."amount" IS NULL THEN 'amount' END, CASE WHEN "c"."currency" IS NULL THEN 'currency' END) || ' is NULL' AS detail
  FROM "billing_v2"."payments" AS c
 WHERE "c"."payment_uuid" >= $1::uuid AND "c"."payment_uuid" < $2::uuid AND ("c"."method" IS NULL OR "c"."amount" IS NULL OR "c"."currency" IS NULL)
UNION ALL
-- One branch per split table with required columns. The split tables declare them NOT NULL, but a constraint
-- can be missing (a table created by hand, a constraint dropped to load data): the rows are what counts.
SELECT c."payment_uuid"::text AS key, 'required_fields' AS check,
       'billing_v2.card_payments' || ': ' || concat_ws(', ', CASE WHEN "c"."card_last4" IS NULL THEN 'card_last4' END, CASE WHEN "c"."card_brand" IS NULL THEN 'card_brand' END) || ' is NULL' AS detail
  FROM "billing_v2"."card_payments" AS c
 WHERE "c"."payment_uuid" >= $1::uuid AND "c"."payment_uuid" < $2::uuid AND ("c"."card_last4" IS NULL OR "c"."card_brand" IS NULL)
UNION ALL
-- One branch per split table with required columns. The split tables declare them NOT NULL, but a constraint
-- can be missing (a table created by hand, a constraint dropped to load data): the rows are what counts.
SELECT c."payment_uuid"::text AS key, 'required_fields' AS check,
       'billing_v2.bank_transfers' || ': ' || concat_ws(', ', CASE WHEN "c"."iban" IS NULL THEN 'iban' END) || ' is NULL' AS detail
  FROM "billing_v2"."bank_transfers" AS c
 WHERE "c"."payment_uuid" >= $1::uuid AND "c"."payment_uuid" < $2::uuid AND ("c"."iban" IS NULL);
COMMIT;

-- check variant_child (where a chunk's hashes differ): every base row has its child row in the table of its variant
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- One branch per variant: a base row of this variant needs its child row, or reads after switch-reads would
-- lose the variant's columns.
SELECT b."payment_uuid"::text AS key, 'variant_child' AS check,
       'method' || ' is ' || quote_literal('card') || ' but ' || 'billing_v2.card_payments' || ' has no row for it' AS detail
  FROM "billing_v2"."payments" AS b
 WHERE "b"."payment_uuid" >= $1::uuid AND "b"."payment_uuid" < $2::uuid
   AND b."method" = 'card'
   AND NOT EXISTS (SELECT 1 FROM "billing_v2"."card_payments" AS c WHERE c."payment_uuid" = b."payment_uuid" AND "c"."payment_uuid" >= $1::uuid AND "c"."payment_uuid" < $2::uuid)
UNION ALL
-- One branch per variant: a base row of this variant needs its child row, or reads after switch-reads would
-- lose the variant's columns.
SELECT b."payment_uuid"::text AS key, 'variant_child' AS check,
       'method' || ' is ' || quote_literal('bank_transfer') || ' but ' || 'billing_v2.bank_transfers' || ' has no row for it' AS detail
  FROM "billing_v2"."payments" AS b
 WHERE "b"."payment_uuid" >= $1::uuid AND "b"."payment_uuid" < $2::uuid
   AND b."method" = 'bank_transfer'
   AND NOT EXISTS (SELECT 1 FROM "billing_v2"."bank_transfers" AS c WHERE c."payment_uuid" = b."payment_uuid" AND "c"."payment_uuid" >= $1::uuid AND "c"."payment_uuid" < $2::uuid);
COMMIT;

-- check wrong_variant (where a chunk's hashes differ): no child row in the table of another variant
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- One branch per variant: a child row in a variant table its base row does not belong to (a type change whose
-- old child survived). split_as_legacy would show columns the legacy row does not have.
SELECT c."payment_uuid"::text AS key, 'wrong_variant' AS check,
       'billing_v2.card_payments' || ' has a row for it but ' || 'method' || ' is '
       || coalesce(quote_literal(b."method"), 'NULL') AS detail
  FROM "billing_v2"."card_payments" AS c
  JOIN "billing_v2"."payments" AS b ON b."payment_uuid" = c."payment_uuid" AND "b"."payment_uuid" >= $1::uuid AND "b"."payment_uuid" < $2::uuid
 WHERE "c"."payment_uuid" >= $1::uuid AND "c"."payment_uuid" < $2::uuid
   AND b."method" IS DISTINCT FROM 'card'
UNION ALL
-- One branch per variant: a child row in a variant table its base row does not belong to (a type change whose
-- old child survived). split_as_legacy would show columns the legacy row does not have.
SELECT c."payment_uuid"::text AS key, 'wrong_variant' AS check,
       'billing_v2.bank_transfers' || ' has a row for it but ' || 'method' || ' is '
       || coalesce(quote_literal(b."method"), 'NULL') AS detail
  FROM "billing_v2"."bank_transfers" AS c
  JOIN "billing_v2"."payments" AS b ON b."payment_uuid" = c."payment_uuid" AND "b"."payment_uuid" >= $1::uuid AND "b"."payment_uuid" < $2::uuid
 WHERE "c"."payment_uuid" >= $1::uuid AND "c"."payment_uuid" < $2::uuid
   AND b."method" IS DISTINCT FROM 'bank_transfer';
COMMIT;

-- check orphans (where a chunk's hashes differ): no variant or meta row without a base row
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- One branch per variant and meta table: rows whose base row is gone. The foreign keys expand validates forbid
-- them, so finding one means a constraint was dropped or disabled (session_replication_role = replica).
SELECT c."payment_uuid"::text AS key, 'orphans' AS check,
       'billing_v2.card_payments' || ' has a row for it but ' || 'billing_v2.payments' || ' has none' AS detail
  FROM "billing_v2"."card_payments" AS c
 WHERE "c"."payment_uuid" >= $1::uuid AND "c"."payment_uuid" < $2::uuid
   AND NOT EXISTS (SELECT 1 FROM "billing_v2"."payments" AS b WHERE b."payment_uuid" = c."payment_uuid" AND "b"."payment_uuid" >= $1::uuid AND "b"."payment_uuid" < $2::uuid)
UNION ALL
-- One branch per variant and meta table: rows whose base row is gone. The foreign keys expand validates forbid
-- them, so finding one means a constraint was dropped or disabled (session_replication_role = replica).
SELECT c."payment_uuid"::text AS key, 'orphans' AS check,
       'billing_v2.bank_transfers' || ' has a row for it but ' || 'billing_v2.payments' || ' has none' AS detail
  FROM "billing_v2"."bank_transfers" AS c
 WHERE "c"."payment_uuid" >= $1::uuid AND "c"."payment_uuid" < $2::uuid
   AND NOT EXISTS (SELECT 1 FROM "billing_v2"."payments" AS b WHERE b."payment_uuid" = c."payment_uuid" AND "b"."payment_uuid" >= $1::uuid AND "b"."payment_uuid" < $2::uuid)
UNION ALL
-- One branch per variant and meta table: rows whose base row is gone. The foreign keys expand validates forbid
-- them, so finding one means a constraint was dropped or disabled (session_replication_role = replica).
SELECT c."payment_uuid"::text AS key, 'orphans' AS check,
       'billing_v2.payment_attributes' || ' has a row for it but ' || 'billing_v2.payments' || ' has none' AS detail
  FROM "billing_v2"."payment_attributes" AS c
 WHERE "c"."payment_uuid" >= $1::uuid AND "c"."payment_uuid" < $2::uuid
   AND NOT EXISTS (SELECT 1 FROM "billing_v2"."payments" AS b WHERE b."payment_uuid" = c."payment_uuid" AND "b"."payment_uuid" >= $1::uuid AND "b"."payment_uuid" < $2::uuid);
COMMIT;

-- check meta_values (where a chunk's hashes differ): each meta row holds the legacy value, and exists exactly when it is not NULL
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- One branch per meta column: the meta row must hold the legacy value (compared as a value of the column's type,
-- not as JSON text), and exist exactly when the legacy value is not NULL. Keys without a base row are
-- legacy_missing's to report.
SELECT l."payment_uuid"::text AS key, 'meta_values' AS check,
       CASE WHEN m."data" IS NULL
            THEN 'gateway_response' || ' is set in legacy but ' || 'billing_v2.payment_attributes' || ' has no ' || quote_literal('gateway_response')
                 || ' row'
            WHEN l."gateway_response" IS NULL
            THEN 'billing_v2.payment_attributes' || ' has a ' || quote_literal('gateway_response') || ' row but legacy ' || 'gateway_response'
                 || ' is NULL'
            ELSE 'billing_v2.payment_attributes' || '[' || quote_literal('gateway_response') || '] = ' || left(m."data"::text, 100)
                 || ', legacy ' || 'gateway_response' || ' = ' || left(to_jsonb(l."gateway_response")::text, 100)
       END AS detail
  FROM "billing"."legacy_payments" AS l
  JOIN "billing_v2"."payments" AS b ON b."payment_uuid" = l."payment_uuid" AND "b"."payment_uuid" >= $1::uuid AND "b"."payment_uuid" < $2::uuid
  LEFT JOIN "billing_v2"."payment_attributes" AS m ON m."payment_uuid" = l."payment_uuid" AND m."name" = 'gateway_response' AND "m"."payment_uuid" >= $1::uuid AND "m"."payment_uuid" < $2::uuid
 WHERE "l"."payment_uuid" >= $1::uuid AND "l"."payment_uuid" < $2::uuid
   AND (m."data" IS NULL OR l."gateway_response" IS NULL OR "m"."data" IS DISTINCT FROM CAST("l"."gateway_response" AS jsonb))
   AND (m."data" IS NOT NULL OR l."gateway_response" IS NOT NULL)
UNION ALL
-- One branch per meta column: the meta row must hold the legacy value (compared as a value of the column's type,
-- not as JSON text), and exist exactly when the legacy value is not NULL. Keys without a base row are
-- legacy_missing's to report.
SELECT l."payment_uuid"::text AS key, 'meta_values' AS check,
       CASE WHEN m."data" IS NULL
            THEN 'notes' || ' is set in legacy but ' || 'billing_v2.payment_attributes' || ' has no ' || quote_literal('notes')
                 || ' row'
            WHEN l."notes" IS NULL
            THEN 'billing_v2.payment_attributes' || ' has a ' || quote_literal('notes') || ' row but legacy ' || 'notes'
                 || ' is NULL'
            ELSE 'billing_v2.payment_attributes' || '[' || quote_literal('notes') || '] = ' || left(m."data"::text, 100)
                 || ', legacy ' || 'notes' || ' = ' || left(to_jsonb(l."notes")::text, 100)
       END AS detail
  FROM "billing"."legacy_payments" AS l
  JOIN "billing_v2"."payments" AS b ON b."payment_uuid" = l."payment_uuid" AND "b"."payment_uuid" >= $1::uuid AND "b"."payment_uuid" < $2::uuid
  LEFT JOIN "billing_v2"."payment_attributes" AS m ON m."payment_uuid" = l."payment_uuid" AND m."name" = 'notes' AND "m"."payment_uuid" >= $1::uuid AND "m"."payment_uuid" < $2::uuid
 WHERE "l"."payment_uuid" >= $1::uuid AND "l"."payment_uuid" < $2::uuid
   AND (m."data" IS NULL OR l."notes" IS NULL OR ("m"."data" #>> '{}')::text IS DISTINCT FROM CAST("l"."notes" AS text))
   AND (m."data" IS NOT NULL OR l."notes" IS NOT NULL)
UNION ALL
-- One branch per meta column: the meta row must hold the legacy value (compared as a value of the column's type,
-- not as JSON text), and exist exactly when the legacy value is not NULL. Keys without a base row are
-- legacy_missing's to report.
SELECT l."payment_uuid"::text AS key, 'meta_values' AS check,
       CASE WHEN m."data" IS NULL
            THEN 'retries' || ' is set in legacy but ' || 'billing_v2.payment_attributes' || ' has no ' || quote_literal('retries')
                 || ' row'
            WHEN l."retries" IS NULL
            THEN 'billing_v2.payment_attributes' || ' has a ' || quote_literal('retries') || ' row but legacy ' || 'retries'
                 || ' is NULL'
            ELSE 'billing_v2.payment_attributes' || '[' || quote_literal('retries') || '] = ' || left(m."data"::text, 100)
                 || ', legacy ' || 'retries' || ' = ' || left(to_jsonb(l."retries")::text, 100)
       END AS detail
  FROM "billing"."legacy_payments" AS l
  JOIN "billing_v2"."payments" AS b ON b."payment_uuid" = l."payment_uuid" AND "b"."payment_uuid" >= $1::uuid AND "b"."payment_uuid" < $2::uuid
  LEFT JOIN "billing_v2"."payment_attributes" AS m ON m."payment_uuid" = l."payment_uuid" AND m."name" = 'retries' AND "m"."payment_uuid" >= $1::uuid AND "m"."payment_uuid" < $2::uuid
 WHERE "l"."payment_uuid" >= $1::uuid AND "l"."payment_uuid" < $2::uuid
   AND (m."data" IS NULL OR l."retries" IS NULL OR ("m"."data" #>> '{}')::bigint IS DISTINCT FROM CAST("l"."retries" AS bigint))
   AND (m."data" IS NOT NULL OR l."retries" IS NOT NULL);
COMMIT;

-- check meta_keys (where a chunk's hashes differ): no meta row under a key the spec does not list
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- Meta rows under a key the spec does not list: nothing syncs them, and the compat view would not show them.
SELECT m."payment_uuid"::text AS key, 'meta_keys' AS check,
       'billing_v2.payment_attributes' || ' has key ' || quote_literal(m."name") || ', which the spec does not list' AS detail
  FROM "billing_v2"."payment_attributes" AS m
 WHERE "m"."payment_uuid" >= $1::uuid AND "m"."payment_uuid" < $2::uuid
   AND m."name" NOT IN ('gateway_response', 'notes', 'retries');
COMMIT;

-- check quarantine_clean (where a chunk's hashes differ): a quarantined key has no split rows
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- A quarantined key must have no split rows: the trigger removes them when it quarantines, so the split side
-- never shows a stale version of a row the split schema rejects.
SELECT b."payment_uuid"::text AS key, 'quarantine_clean' AS check,
       'quarantined (' || q.sqlstate || ') but ' || 'billing_v2.payments' || ' still has its row' AS detail
  FROM "billing_v2"."payments" AS b
  JOIN "migrator_pay"."quarantine" AS q ON q.migration = $1 AND q.key = b."payment_uuid"::text AND q.resolved_at IS NULL
 WHERE "b"."payment_uuid" >= $2::uuid AND "b"."payment_uuid" < $3::uuid;
COMMIT;

-- quarantine summary
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
SELECT q.key, q.sqlstate, q.message, q.source, q.accepted_at IS NOT NULL AS accepted
  FROM "migrator_pay"."quarantine" AS q
 WHERE q.migration = $1 AND q.resolved_at IS NULL
 ORDER BY q.first_seen, q.key;
COMMIT;

-- ===== phase: contract (1 steps) =====

-- in one transaction: stop both syncs, archive legacy_payments as legacy_payments_archived
BEGIN;
SET LOCAL lock_timeout = '100ms';
SET LOCAL statement_timeout = '60000ms';
DROP TRIGGER IF EXISTS "migrator_payments_split_forward" ON "billing"."legacy_payments";
DROP TRIGGER IF EXISTS "migrator_payments_split_forward_truncate" ON "billing"."legacy_payments";
DROP TRIGGER IF EXISTS "migrator_payments_split_reverse_base" ON "billing_v2"."payments";
DROP TRIGGER IF EXISTS "migrator_payments_split_reverse_v0" ON "billing_v2"."card_payments";
DROP TRIGGER IF EXISTS "migrator_payments_split_reverse_v1" ON "billing_v2"."bank_transfers";
DROP TRIGGER IF EXISTS "migrator_payments_split_reverse_meta" ON "billing_v2"."payment_attributes";
DROP TRIGGER IF EXISTS "migrator_payments_split_reverse_truncate" ON "billing_v2"."payments";
DROP TRIGGER IF EXISTS "migrator_payments_split_legacy_writes" ON "billing"."legacy_payments";
DROP TRIGGER IF EXISTS "migrator_payments_split_split_writes" ON "billing_v2"."payments";
DROP TRIGGER IF EXISTS "migrator_payments_split_split_writes" ON "billing_v2"."card_payments";
DROP TRIGGER IF EXISTS "migrator_payments_split_split_writes" ON "billing_v2"."bank_transfers";
DROP TRIGGER IF EXISTS "migrator_payments_split_split_writes" ON "billing_v2"."payment_attributes";
-- squawk-ignore renaming-table
ALTER TABLE "billing"."legacy_payments" RENAME TO "legacy_payments_archived";
-- at apply: REVOKE <each role's write privileges> ON "billing"."legacy_payments_archived" FROM <that role>;
COMMIT;

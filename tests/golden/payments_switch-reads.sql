-- ===== phase: switch-reads (2 steps) =====

-- grant each role its privileges on legacy_payments on the split tables too (read from the catalog when it runs)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- at apply: GRANT <each role's privileges on the legacy table> ON "billing_v2"."payments", "billing_v2"."card_payments", "billing_v2"."bank_transfers", "billing_v2"."payment_attributes" TO <that role>;
COMMIT;

-- set the read flag (applications listening on migrator_flags pick it up at once)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
UPDATE "migrator_pay"."state" SET read_percent = 100, updated_at = now() WHERE migration = 'payments_split';
COMMIT;

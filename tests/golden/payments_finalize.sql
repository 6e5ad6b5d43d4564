-- ===== phase: finalize (3 steps) =====

-- drop the compatibility view legacy_payments and its trigger function
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- squawk-ignore ban-drop-view
DROP VIEW IF EXISTS "billing"."legacy_payments";
-- squawk-ignore ban-drop-function
DROP FUNCTION IF EXISTS "migrator_pay"."payments_split_compat_view";
COMMIT;

-- drop the sync functions and write counters only the legacy table needed
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- squawk-ignore ban-drop-function
DROP FUNCTION IF EXISTS "migrator_pay"."payments_split_sync", "migrator_pay"."payments_split_forward", "migrator_pay"."payments_split_forward_truncate", "migrator_pay"."payments_split_reverse_base", "migrator_pay"."payments_split_reverse_v0", "migrator_pay"."payments_split_reverse_v1", "migrator_pay"."payments_split_reverse_meta", "migrator_pay"."payments_split_reverse_truncate", "migrator_pay"."payments_split_split_writes", "migrator_pay"."payments_split_legacy_writes";
-- squawk-ignore ban-drop-sequence
DROP SEQUENCE IF EXISTS "migrator_pay"."payments_split_split_writes", "migrator_pay"."payments_split_legacy_writes";
COMMIT;

-- in one transaction: give payments.payment_uuid its own key sequence (an identity key: a new one, above every key drawn), drop the archive billing.legacy_payments_archived
BEGIN;
SET LOCAL lock_timeout = '100ms';
SET LOCAL statement_timeout = '60000ms';
-- squawk-ignore ban-drop-table
DROP TABLE IF EXISTS "billing"."legacy_payments_archived";
COMMIT;

-- ===== phase: finalize (3 steps) =====

-- drop the compatibility view core_project and its trigger function
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- squawk-ignore ban-drop-view
DROP VIEW IF EXISTS "public"."core_project";
-- squawk-ignore ban-drop-function
DROP FUNCTION IF EXISTS "migrator"."core_project_split_compat_view";
COMMIT;

-- drop the sync functions and write counters only the legacy table needed
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- squawk-ignore ban-drop-function
DROP FUNCTION IF EXISTS "migrator"."core_project_split_sync", "migrator"."core_project_split_forward", "migrator"."core_project_split_forward_truncate", "migrator"."core_project_split_reverse_base", "migrator"."core_project_split_reverse_v0", "migrator"."core_project_split_reverse_v1", "migrator"."core_project_split_reverse_meta", "migrator"."core_project_split_reverse_truncate", "migrator"."core_project_split_split_writes", "migrator"."core_project_split_legacy_writes";
-- squawk-ignore ban-drop-sequence
DROP SEQUENCE IF EXISTS "migrator"."core_project_split_split_writes", "migrator"."core_project_split_legacy_writes";
COMMIT;

-- in one transaction: give projects.id its own key sequence (an identity key: a new one, above every key drawn), drop the archive public.core_project_archived
BEGIN;
SET LOCAL lock_timeout = '100ms';
SET LOCAL statement_timeout = '60000ms';
ALTER SEQUENCE "public"."core_project_id_seq" OWNED BY "public"."projects"."id";
-- squawk-ignore ban-drop-table
DROP TABLE IF EXISTS "public"."core_project_archived";
COMMIT;

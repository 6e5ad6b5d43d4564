-- ===== phase: contract (7 steps) =====

-- re-point public.core_importantdate.project_id: add core_importantdate_project_id_split_fkey NOT VALID
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
ALTER TABLE "public"."core_importantdate" ADD CONSTRAINT "core_importantdate_project_id_split_fkey" FOREIGN KEY ("project_id") REFERENCES "public"."projects" ("id") ON DELETE NO ACTION NOT VALID;
COMMIT;

-- validate core_importantdate_project_id_split_fkey
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '0ms';
ALTER TABLE "public"."core_importantdate" VALIDATE CONSTRAINT "core_importantdate_project_id_split_fkey";
COMMIT;

-- drop the old foreign key core_importantdate_project_id_fkey
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- squawk-ignore ban-drop-constraint
ALTER TABLE "public"."core_importantdate" DROP CONSTRAINT IF EXISTS "core_importantdate_project_id_fkey";
COMMIT;

-- re-point public.core_project_attachments.project_id: add core_project_attachments_project_id_split_fkey NOT VALID
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
ALTER TABLE "public"."core_project_attachments" ADD CONSTRAINT "core_project_attachments_project_id_split_fkey" FOREIGN KEY ("project_id") REFERENCES "public"."projects" ("id") ON DELETE NO ACTION NOT VALID;
COMMIT;

-- validate core_project_attachments_project_id_split_fkey
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '0ms';
ALTER TABLE "public"."core_project_attachments" VALIDATE CONSTRAINT "core_project_attachments_project_id_split_fkey";
COMMIT;

-- drop the old foreign key core_project_attachments_project_id_fkey
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- squawk-ignore ban-drop-constraint
ALTER TABLE "public"."core_project_attachments" DROP CONSTRAINT IF EXISTS "core_project_attachments_project_id_fkey";
COMMIT;

-- in one transaction: stop both syncs, archive core_project as core_project_archived
BEGIN;
SET LOCAL lock_timeout = '100ms';
SET LOCAL statement_timeout = '60000ms';
DROP TRIGGER IF EXISTS "migrator_core_project_split_forward" ON "public"."core_project";
DROP TRIGGER IF EXISTS "migrator_core_project_split_forward_truncate" ON "public"."core_project";
DROP TRIGGER IF EXISTS "migrator_core_project_split_reverse_base" ON "public"."projects";
DROP TRIGGER IF EXISTS "migrator_core_project_split_reverse_v0" ON "public"."school_projects";
DROP TRIGGER IF EXISTS "migrator_core_project_split_reverse_v1" ON "public"."self_study_projects";
DROP TRIGGER IF EXISTS "migrator_core_project_split_reverse_meta" ON "public"."project_meta";
DROP TRIGGER IF EXISTS "migrator_core_project_split_reverse_truncate" ON "public"."projects";
DROP TRIGGER IF EXISTS "migrator_core_project_split_legacy_writes" ON "public"."core_project";
DROP TRIGGER IF EXISTS "migrator_core_project_split_split_writes" ON "public"."projects";
DROP TRIGGER IF EXISTS "migrator_core_project_split_split_writes" ON "public"."school_projects";
DROP TRIGGER IF EXISTS "migrator_core_project_split_split_writes" ON "public"."self_study_projects";
DROP TRIGGER IF EXISTS "migrator_core_project_split_split_writes" ON "public"."project_meta";
-- squawk-ignore renaming-table
ALTER TABLE "public"."core_project" RENAME TO "core_project_archived";
-- at apply: REVOKE <each role's write privileges> ON "public"."core_project_archived" FROM <that role>;
COMMIT;

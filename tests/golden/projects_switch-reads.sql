-- ===== phase: switch-reads (2 steps) =====

-- grant each role its privileges on core_project on the split tables too (read from the catalog when it runs)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
-- at apply: GRANT <each role's privileges on the legacy table> ON "public"."projects", "public"."school_projects", "public"."self_study_projects", "public"."project_meta" TO <that role>;
-- at apply: GRANT USAGE ON SEQUENCE "public"."core_project_id_seq" TO <each role that may INSERT>;
COMMIT;

-- set the read flag (applications listening on migrator_flags pick it up at once)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
UPDATE "migrator"."state" SET read_percent = 100, updated_at = now() WHERE migration = 'core_project_split';
COMMIT;

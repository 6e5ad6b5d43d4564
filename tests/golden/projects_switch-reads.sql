-- ===== phase: switch-reads (1 steps) =====

-- set the read flag (applications listening on migrator_flags pick it up at once)
BEGIN;
SET LOCAL lock_timeout = '500ms';
SET LOCAL statement_timeout = '60000ms';
UPDATE "migrator"."state" SET read_percent = 100, updated_at = now() WHERE migration = 'core_project_split';
COMMIT;

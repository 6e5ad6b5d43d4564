-- doctor: the user triggers on a table (constraint triggers of foreign keys are internal and left out).
SELECT t.tgname::text AS name,
       t.tgenabled::text AS enabled,
       p.oid::regprocedure::text AS function,
       pg_get_triggerdef(t.oid) AS definition
  FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
 WHERE t.tgrelid = to_regclass(%(table)s) AND NOT t.tgisinternal
 ORDER BY 1
